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
    from ..inference.provenance import RunProvenance
    from ..inference.tasks import RunOptions, checked_results, embedding, load_model
    from ..inference.writers import (
        EmbeddingWriter,
        RecordWriter,
        check_settings,
        error_record,
        finished_records,
        journal_settings,
        partial_path,
    )  # fmt: skip
    from .batch import claimed, exit_code, gather_inputs, interrupted, report_error, run_settings
    from .ui import progress

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
    paths, out, unlisted = gather_inputs(inputs, shard, out)
    opts = RunOptions(batch_size, device, dtype, workers, threads, frames, stride, sampling, clips, crops)
    settings = run_settings(model, revision, opts, pool=pool)
    files = RecordWriter.files(out) if fmt == "jsonl" else EmbeddingWriter.files(out)
    with claimed(out, files, paths, force):
        # What an earlier run finished, read before anything is opened for writing (a JSON Lines journal is
        # rewritten from the start), and the model loaded before a fresh journal appears (a model that fails
        # to load leaves nothing behind).
        if fmt == "jsonl" and resume:
            check_settings(journal_settings(out), settings, partial_path(out))
        previous = finished_records(out) if fmt == "jsonl" and resume else {}
        resumed = (
            EmbeddingWriter(out, fmt, resume=True, settings=settings) if fmt != "jsonl" and resume else None
        )
        done = resumed.done() if resumed is not None else set(previous)
        todo = [p for p in paths if p not in done]
        _, engine = load_model(model, revision, pool, opts) if todo else (None, None)
        provenance = RunProvenance.of(engine, model) if todo and fmt == "jsonl" else None
        if resumed is not None:
            writer = resumed
        elif fmt == "jsonl":
            writer = RecordWriter(out, "jsonl", done=previous, settings=settings)
        else:
            writer = EmbeddingWriter(out, fmt, settings=settings)
        results = checked_results(engine.run(todo) if todo else iter(()), engine)
        failures = unlisted  # folders that could not be listed: inputs that failed
        try:
            with progress(len(todo), quiet, "embed") as advance:
                for path in paths:
                    if path in done:
                        if fmt == "jsonl":
                            writer.write(previous[path])
                        continue
                    result = next(results)
                    advance()
                    if not result.ok:
                        failures += 1
                        report_error(error_record(path, result.error))
                    if fmt == "jsonl":
                        writer.write({"path": path, "ok": True, "embedding": embedding(result).tolist(),
                                      **provenance.record_fields(result.clips)}
                                     if result.ok else {**error_record(path, result.error),
                                                        "provenance": provenance.run})  # fmt: skip
                    else:
                        writer.write(path, embedding(result) if result.ok else None, result.error)
        except KeyboardInterrupt:
            results.close()  # stops the decoding workers before this process goes
            writer.suspend()
            raise interrupted(out, writer.kept, len(paths), partial_path(out), "-" in inputs) from None
        if fmt == "jsonl":
            writer.close()
        else:
            rows, failed = writer.close(paths)
            print(
                f"wrote {rows} vector(s) to {out}" + (f"; {failed} input(s) failed" if failed else ""),
                file=sys.stderr,
            )
    return exit_code(failures)
