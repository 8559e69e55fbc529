"""`vmae evaluate DATA --model M`: accuracy on a labelled set, with the paper's multi-view protocol."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .options import (
    BatchSizeOpt,
    ClipsOpt,
    CropsOpt,
    DeviceOpt,
    DtypeOpt,
    JsonFlag,
    QuietOpt,
    RevisionOpt,
    SamplingOpt,
    StrideOpt,
    ThreadsOpt,
    WorkersOpt,
)  # fmt: skip

MATRIX_MAX = 20  # labels up to which the terminal shows the whole confusion matrix


def evaluate(
    data: Annotated[
        str,
        typer.Argument(
            help="Class folders (DATA/<label>/*.mp4), or a list file: CSV/TSV with a `path,label` header, or "
            "`path label_index` lines.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Classifier folder, weight file, or Hub id.", show_default=False),
    ],
    revision: RevisionOpt = None,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Label map for integer labels: one name per line (default: the model's own label order).",
            show_default=False,
        ),
    ] = None,
    clips: ClipsOpt = None,
    crops: CropsOpt = None,
    stride: StrideOpt = None,
    sampling: SamplingOpt = None,
    json_: JsonFlag = False,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    workers: WorkersOpt = 0,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
) -> int:
    """Top-1 / top-5 accuracy, per-class accuracy and a confusion matrix of a classifier on labelled videos.

    Views follow the model (as `vmae classify`); --clips 5 --crops 3 averages the paper's 15 test views.
    Unreadable videos are listed on stderr and left out of the numbers (exit code 1).
    """
    from ..inference.evaluate import evaluate_set
    from ..inference.tasks import RunOptions, load_model
    from ..jsonfile import dumps
    from ..video.labelled import load_labelled
    from .batch import exit_code, report_failure
    from .ui import progress

    opts = RunOptions(batch_size, device, dtype, workers, threads, None, stride, sampling, clips, crops)
    net, engine = load_model(model, revision, "classify", opts)
    labelled = load_labelled(data, net.config.id2label, label_map=labels)
    with progress(len(labelled), quiet, "evaluate") as advance:
        acc = evaluate_set(engine, labelled, advance)
    for path, message in acc.failed:
        report_failure(path, message)
    if json_:
        sys.stdout.write(dumps(acc.to_dict()) + "\n")
    else:
        _print(acc)
    return exit_code(len(acc.failed))


def _print(acc) -> None:
    from rich.table import Table

    from .ui import stdout_console

    console = stdout_console()
    console.print(
        f"top-1 {acc.top1:.4f}   top-5 {acc.top5:.4f}   ({acc.count} videos, {acc.views} views each)"
    )
    present = [c for c in acc.per_class() if c["count"]]
    table = Table(title="per class", title_justify="left")
    for col, justify in (("label", "left"), ("videos", "right"), ("accuracy", "right")):
        table.add_column(col, justify=justify)
    for c in present:
        table.add_row(c["label"], str(c["count"]), f"{c['accuracy']:.3f}")
    console.print(table)
    if len(acc.id2label) > MATRIX_MAX:
        console.print(f"({len(acc.id2label)} labels: the confusion matrix is in --json)")
        return
    names = [acc.id2label[i] for i in range(len(acc.id2label))]
    matrix = Table(title="confusion matrix (rows: true label, columns: predicted)", title_justify="left")
    matrix.add_column("")
    for name in names:
        matrix.add_column(name, justify="right")
    for i, name in enumerate(names):
        row = acc.confusion[i]
        matrix.add_row(name, *[f"[bold]{v}[/bold]" if i == j and v else str(v) for j, v in enumerate(row)])
    console.print(matrix)
