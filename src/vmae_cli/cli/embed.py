"""`vmae embed PATHS... --out feats.npy`: one vector per video (or every token), streamed to disk."""

from __future__ import annotations

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
    ForceOpt,
    FramesOpt,
    InputsArg,
    ModelOpt,
    QuietOpt,
    ResumeOpt,
    RevisionOpt,
    SamplingOpt,
    ShardOpt,
    StrideOpt,
    ThreadsOpt,
    WorkersOpt,
)  # fmt: skip

FORMATS = ("npy", "npz", "safetensors", "jsonl")


def embed(
    inputs: InputsArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output file: feats.npy (+ feats.paths.txt), .npz, .safetensors, .jsonl.",
            dir_okay=False,
            show_default=False,
        ),
    ],  # fmt: skip
    model: ModelOpt = "MCG-NJU/videomae-base-finetuned-kinetics",
    revision: RevisionOpt = None,
    pool: Annotated[
        str,
        typer.Option(
            "--pool",
            help="auto (what a mean-pooling classifier's head sees; else the token mean), "
            "mean, token0, or none (every token).",
        ),
    ] = "auto",  # fmt: skip
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="npy, npz, safetensors or jsonl (default: from --out's suffix).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    shard: ShardOpt = None,
    frames: FramesOpt = None,
    stride: StrideOpt = None,
    sampling: SamplingOpt = None,
    clips: ClipsOpt = None,
    crops: CropsOpt = None,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    workers: WorkersOpt = 0,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
) -> int:
    """Turn videos into vectors: row i of feats.npy belongs to line i of feats.paths.txt.

    Failed inputs are listed in feats.errors.jsonl and on stderr, never silently dropped. Views
    (--clips x --crops) are averaged into one vector per video. The default model is the Kinetics-400
    classifier MCG-NJU/videomae-base-finetuned-kinetics (its pooled features).
    """
    from ..inference.batch import embed_batch
    from ..inference.options import RunOptions
    from .batch import show_run

    fmt = format_ or out.suffix.lstrip(".")
    if fmt not in FORMATS:
        if format_ is not None:
            raise typer.BadParameter(
                f"must be one of {', '.join(FORMATS)}, got {fmt!r}", param_hint="--format"
            )
        raise typer.BadParameter(
            f"{out}: unknown suffix {out.suffix or '(none)'!r}; name it .npy, .npz, .safetensors or .jsonl, "
            "or choose the format with --format",
            param_hint="--out",
        )
    known = out.suffix.lstrip(".")
    if known in FORMATS and known != fmt:
        raise typer.BadParameter(f"--format {fmt} does not fit {out} (a .{known} file); make them agree",
                                 param_hint="--out")  # fmt: skip
    if pool not in ("auto", "mean", "token0", "none"):
        raise typer.BadParameter(f"--pool must be auto, mean, token0 or none, got {pool!r}")
    opts = RunOptions(batch_size, device, dtype, workers, threads, frames, stride, sampling, clips, crops)
    run = embed_batch(inputs, out, model, revision=revision, options=opts, pool=pool, fmt=fmt, resume=resume,
                      force=force, shard=shard)  # fmt: skip
    code = show_run(run, inputs, "embed", quiet)
    if run.written is not None:
        rows, failed = run.written
        print(
            f"wrote {rows} vector(s) to {run.out}" + (f"; {failed} input(s) failed" if failed else ""),
            file=sys.stderr,
        )
    return code
