"""`vmae classify PATHS...`: name what happens in videos (top-k labels), as a table, JSON or JSON Lines."""

from __future__ import annotations

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
    JsonFlag,
    ModelOpt,
    OutOpt,
    QuietOpt,
    ResumeOpt,
    RevisionOpt,
    SamplingOpt,
    ShardOpt,
    StrideOpt,
    ThreadsOpt,
    WorkersOpt,
)  # fmt: skip

DEFAULT_MODEL = "MCG-NJU/videomae-base-finetuned-kinetics"


def classify(
    inputs: InputsArg = None,
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per video.")] = 5,
    json_: JsonFlag = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON line per video, in input order.")] = False,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
    shard: ShardOpt = None,
    timeline: Annotated[
        bool,
        typer.Option(
            "--timeline",
            help="Labels for consecutive windows of each video, each sampled as the model was trained "
            "(--clips: clips per window; default: enough clips to cover it).",
        ),
    ] = False,
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            min=0.01,
            help="Timeline or --live window in seconds (default: one clip).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    hop: Annotated[
        float | None,
        typer.Option(
            "--hop",
            min=0.01,
            help="Timeline or --live step in seconds (default: the window).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    live: Annotated[
        str | None,
        typer.Option(
            "--live",
            metavar="SOURCE",
            show_default=False,
            help="Classify a stream as it comes: a URL (rtsp, http, udp, tcp...), a capture device "
            "(/dev/video0), or - for a stream piped on stdin. One JSON line per window (a live table "
            "on a terminal); frames are dropped rather than falling behind.",
        ),
    ] = None,  # fmt: skip
    live_format: Annotated[
        str | None,
        typer.Option(
            "--live-format",
            metavar="NAME",
            show_default=False,
            help="FFmpeg input format of --live: v4l2, avfoundation, dshow, mpegts... (default: guessed).",
        ),
    ] = None,  # fmt: skip
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
    """Classify videos with a VideoMAE classifier (Kinetics-400 by default).

    Sampling follows the model: a fine-tuned vmae model samples as it was trained; otherwise Kinetics
    models take a central 16x4 window and SSv2 models 16 segments. --clips 5 --crops 3 averages the
    paper's 15 test views. The default model is MCG-NJU/videomae-base-finetuned-kinetics. --live SOURCE
    classifies a stream (URL, capture device, or - for stdin) window by window as it comes.
    """
    from .batch import idle_threads_sleep

    idle_threads_sleep()  # before torch is imported
    from ..inference.batch import classify_batch
    from ..inference.options import RunOptions
    from .batch import show_run
    from .render import print_classification

    if json_ and jsonl:
        raise typer.BadParameter("choose one of --json and --jsonl")
    if resume and out is None:
        raise typer.BadParameter("--resume needs --out FILE (the output to continue)")
    opts = RunOptions(batch_size, device, dtype, workers, threads, frames, stride, sampling, clips, crops)
    if live is not None:
        from .live import run_live

        if inputs or out is not None or resume or shard is not None or timeline or jsonl:
            raise typer.BadParameter("--live reads one stream and writes JSON lines to stdout: give no inputs, "
                                     "--out, --resume, --shard, --timeline or --jsonl with it")  # fmt: skip
        return run_live(live, model, revision, opts, top_k=top_k, window=window, hop=hop, input_format=live_format,
                        as_json=json_)  # fmt: skip
    if live_format is not None:
        raise typer.BadParameter("--live-format goes with --live")
    if (window is not None or hop is not None) and not timeline:
        raise typer.BadParameter("--window and --hop go with --timeline or --live")
    fmt = "json" if json_ else "jsonl" if jsonl else None
    if fmt is None and out is not None:
        if out.suffix not in (".json", ".jsonl"):
            raise typer.BadParameter(
                f"{out}: unknown suffix {out.suffix or '(none)'!r}; name it .json (one array) or .jsonl (JSON "
                "Lines), or choose the format with --json or --jsonl",
                param_hint="--out",
            )
        fmt = out.suffix[1:]
    inputs = inputs or []
    run = classify_batch(inputs, model, revision=revision, options=opts, top_k=top_k, timeline=timeline,
                         window=window, hop=hop, out=out, fmt=fmt, resume=resume, force=force, shard=shard)  # fmt: skip
    return show_run(run, inputs, "classify", quiet, print_classification if fmt is None else None)
