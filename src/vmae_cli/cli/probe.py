"""`vmae probe DATA --model M`: kNN and linear probes of an encoder's frozen features on labelled videos."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    BatchSizeOpt,
    ClipsOpt,
    CropsOpt,
    DeviceOpt,
    DtypeOpt,
    JsonFlag,
    LabelMapOpt,
    QuietOpt,
    RevisionOpt,
    StrideOpt,
    ThreadsOpt,
    ValSetOpt,
    WorkersOpt,
)  # fmt: skip


def probe(
    data: Annotated[
        str,
        typer.Argument(
            help="Labelled videos as `vmae finetune` reads them: DATA/train/<label>/ and DATA/val/<label>/, "
            "class folders, or a list file (CSV/TSV `path,label`, or `path label_index` with --labels).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Encoder to probe: a pre-training run's model/, a classifier, or a Hub id.",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    val: ValSetOpt = None,
    labels: LabelMapOpt = None,
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="A `vmae embed` output (.npy/.npz/.safetensors/.jsonl): read the vectors from it when it "
            "exists (no model runs), else write this probe's vectors to it.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,  # fmt: skip
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for the kNN probe.")] = 20,
    pool: Annotated[
        str,
        typer.Option("--pool", help="auto (as `vmae embed`), mean or token0.", show_default=True),
    ] = "auto",  # fmt: skip
    revision: RevisionOpt = None,
    clips: ClipsOpt = None,
    crops: CropsOpt = None,
    stride: StrideOpt = None,
    json_: JsonFlag = False,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    workers: WorkersOpt = 0,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
) -> int:
    """How well an encoder's frozen features separate your labels: a k-nearest-neighbour and a linear
    (ridge) probe, top-1/top-5 and per class. One embedding pass; no training of the encoder.

    Compare pre-training checkpoints with it before paying for a fine-tune. Without a validation set
    both probes are scored leave-one-out on DATA. With --features the vectors are kept (or reused) as
    `vmae embed` writes them.
    """
    import numpy as np

    from ..errors import UsageError
    from ..inference.probe import embed_paths, read_features, run_probes
    from ..video.labelled import finetune_splits
    from .batch import exit_code, report_failure
    from .ui import progress

    if pool not in ("auto", "mean", "token0"):
        raise typer.BadParameter(f"--pool must be auto, mean or token0, got {pool!r}")
    train, held_out = finetune_splits(data, val, labels)
    sets = [train] + ([held_out] if held_out is not None else [])
    paths = list(dict.fromkeys(p for s in sets for p in s.paths))
    failed: list[tuple[str, str]] = []
    from_file = features is not None and features.exists()
    if from_file:
        vectors = read_features(features)
        source = str(features)
    else:
        if model is None:
            raise UsageError("give --model (the encoder to probe), or --features with a `vmae embed` output")
        from ..inference.tasks import RunOptions, embedding_width, load_model
        from ..inference.writers import EmbeddingWriter

        opts = RunOptions(batch_size, device, dtype, workers, threads, None, stride, None, clips, crops)
        net, engine = load_model(model, revision, pool, opts)
        writer = None
        if features is not None:
            settings = dict(model=model, revision=revision, pool=pool, dtype=dtype, frames=None, stride=stride,
                            sampling=None, clips=clips, crops=crops)  # fmt: skip
            writer = EmbeddingWriter(features, features.suffix.lstrip(".").lower(), settings=settings)
        with progress(len(paths), quiet, "embed") as advance:
            vectors, failed = embed_paths(engine, paths, writer, advance)
        if writer is not None:
            writer.close(paths, embedding_width(net.config, pool))  # (0, width) when every input failed
        source = model

    def arrays(labelled):
        keep = [(os.path.realpath(p), y) for p, y in zip(labelled.paths, labelled.labels, strict=True)
                if os.path.realpath(p) in vectors]  # fmt: skip
        missing = len(labelled.paths) - len(keep)
        if missing and from_file:
            raise UsageError(f"{features}: holds no vector for {missing} of the videos; embed them again "
                             "(delete the file) or give the features of this data set")  # fmt: skip
        x = np.stack([vectors[p] for p, _ in keep]) if keep else np.zeros((0, 1), np.float32)
        return x, np.array([y for _, y in keep], dtype=np.int64)

    for path, message in failed:
        report_failure(path, message)
    train_x, train_y = arrays(train)
    val_x, val_y = arrays(held_out) if held_out is not None else (None, None)
    if val_x is not None and not len(val_x):
        raise UsageError(f"{val or data}: no validation video could be embedded")
    results = run_probes(train_x, train_y, val_x, val_y, train.id2label, k)
    summary = {
        "features": source,
        "dim": int(train_x.shape[1]),
        "train": len(train_x),
        "val": None if val_x is None else len(val_x),
        "protocol": "leave-one-out on the training set" if val_x is None else "train -> val",
        **{r.name: r.to_dict() for r in results},
        "failed": [{"path": p, "message": m} for p, m in failed],
    }
    if json_:
        sys.stdout.write(json.dumps(summary, allow_nan=False) + "\n")
    else:
        _print(summary, results)
    return exit_code(len(failed))


def _print(summary: dict, results) -> None:
    from rich.table import Table

    from .ui import stdout_console

    console = stdout_console()
    console.print(f"{summary['dim']}-d features of {summary['features']}: {summary['train']} training videos, "
                  + (f"{summary['val']} validation videos" if summary["val"] is not None
                     else "scored leave-one-out (no validation set)"))  # fmt: skip
    table = Table(title="probes", title_justify="left")
    for col in ("probe", "top-1", "top-5", "setting"):
        table.add_column(col, justify="left" if col in ("probe", "setting") else "right")
    for r in results:
        setting = ", ".join(f"{k} {v}" for k, v in r.params.items())
        table.add_row(r.name, f"{r.accuracy.top1:.4f}", f"{r.accuracy.top5:.4f}", setting)
    console.print(table)
    per_class = Table(title="per class (top-1)", title_justify="left")
    per_class.add_column("label")
    per_class.add_column("videos", justify="right")
    for r in results:
        per_class.add_column(r.name, justify="right")
    rows = [r.accuracy.per_class() for r in results]
    for i, c in enumerate(rows[0]):
        if c["count"]:
            per_class.add_row(c["label"], str(c["count"]), *[f"{row[i]['accuracy']:.3f}" for row in rows])
    console.print(per_class)
