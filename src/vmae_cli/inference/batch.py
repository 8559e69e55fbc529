"""Classify or embed many videos as one run: records in input order, a journal, resume, and Ctrl-C that keeps
what is done.

    from vmae_cli.inference.batch import classify_batch

    run = classify_batch(["videos/"], out=Path("labels.jsonl"), resume=True)
    for record in run:  # each input's record, in input order, as soon as it and those before it are done
        ...
    run.failures  # inputs that failed (their records say why)

With `out`, every finished record goes to the journal `out.partial` as it comes, and `out` appears whole at the
end (writers.py); a run stopped early (Ctrl-C: `Interrupted`; or a caller that stops iterating) keeps them,
and the same call with `resume=True` does only what is left. Nothing here imports torch before the run starts
iterating: `vmae classify clip.mp4` starts decoding (ahead.py) before torch is imported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import Interrupted, UsageError, option
from ..video.discover import expand_inputs, parse_shard, take_shard
from .options import RunOptions
from .writers import (
    EmbeddingWriter,
    RecordWriter,
    check_outputs,
    check_settings,
    error_record,
    finished_records,
    journal_settings,
    partial_path,
)  # fmt: skip

DEFAULT_MODEL = "MCG-NJU/videomae-base-finetuned-kinetics"


def gather_inputs(
    inputs: list[str], shard: str | None, out: Path | None
) -> tuple[list[str], Path | None, int]:
    """Expand the inputs, keep this shard's part, and give each torchrun rank its own output file. The
    count: folders that could not be listed (already named on stderr), failures of the run."""
    paths, unlisted = expand_inputs(inputs)
    index, count = parse_shard(shard)
    if not paths:
        raise UsageError(
            "no inputs: give video files, folders, globs, or - for paths on stdin"
            + (f" ({len(unlisted)} folder(s) could not be listed)" if unlisted else ""),
            param="inputs", value=list(inputs),
        )  # fmt: skip
    paths = take_shard(paths, index, count)
    if count > 1 and shard is None and out is not None:  # every rank got the same out: one file each
        out = out.with_name(f"{out.stem}.rank{index}of{count}{out.suffix}")
    return paths, out, len(unlisted)


def run_settings(model: str, revision: str | None, opts: RunOptions, **extra) -> dict:
    """What a run's outputs depend on (model, sampling, precision...): kept in its journal, so that a resumed
    run refuses to mix another model or other settings into one output. `dtype` is the option as given until the
    run, once torch is loaded, puts what it means on this machine in its place (`tasks.run_dtype`)."""
    local = Path(model).expanduser()
    return dict(model=str(local.resolve()) if local.exists() else model, revision=revision, dtype=opts.dtype,
                frames=opts.frames, stride=opts.stride, sampling=opts.sampling, clips=opts.clips, crops=opts.crops,
                **extra)  # fmt: skip


@contextlib.contextmanager
def claimed(out: Path | None, files: dict[Path, str], inputs: list[str], force: bool) -> Iterator[None]:
    """Make sure the run's outputs destroy nothing (`check_outputs`), then hold the lock on `out` until the
    run ends, so that a second run with the same `out` is refused instead of mixing into this one."""
    from ..files import exclusive_lock

    if out is None:
        yield
        return
    check_outputs(files, inputs, force)
    with exclusive_lock(out):
        yield


class BatchRun:
    """One run over many inputs: iterate it for each input's record, in input order.

    `paths`: the inputs (folders and globs expanded, this shard's part); `out`: the output file (a torchrun
    rank's own name where every rank got the same one); `done`: inputs an earlier run finished (resume);
    `failures`: inputs that failed, so far (folders that could not be listed count); `written`: for embed
    into a matrix, (vectors written, inputs failed) once the run ends.
    """

    def __init__(self, inputs: list[str], out: Path | None, *, shard: str | None, resume: bool, force: bool,
                 settings: dict):  # fmt: skip
        if resume and out is None:
            raise UsageError(f"{option('resume')} needs {option('out')} FILE (the output to continue)",
                             param="resume", value=True)  # fmt: skip
        self.inputs = list(inputs)
        self.paths, self.out, unlisted = gather_inputs(self.inputs, shard, out)
        self.resume, self.force, self.settings = resume, force, settings
        self.done: set[str] = set()
        self.failures, self.finished = unlisted, 0
        self.writer: RecordWriter | EmbeddingWriter | None = None
        self.written: tuple[int, int] | None = None
        self._records, self._started = self._run(), False

    def start(self) -> BatchRun:
        """Claim the outputs, read what an earlier run finished (`done`) and load the model; iterating starts
        the run if this was not called."""
        if not self._started:
            self._started = True
            next(self._records)  # the run stops there, ready
        return self

    def __iter__(self) -> Iterator[dict]:
        return self.start()._records

    @property
    def journal(self) -> Path | None:
        return partial_path(self.out) if self.out is not None else None

    def stop(self) -> Interrupted:
        """End the run early (the caller was interrupted): what is done stays in the journal. Returns the
        error that says what was kept."""
        self._records.close()
        return self.interrupted()

    def interrupted(self) -> Interrupted:
        kept = self.writer.kept if self.out is not None and self.writer is not None else self.finished
        total = len(self.paths)
        if self.out is None:
            message = (f"interrupted after {kept} of {total} input(s); nothing was kept on disk: give "
                       f"{option('out')} to be able to {option('resume')}")  # fmt: skip
        else:
            message = (f"interrupted: {kept} of {total} input(s) done and kept in {self.journal}; continue with "
                       f"{option('resume')} and the same inputs")  # fmt: skip
        return Interrupted(message, kept=kept, total=total, journal=self.journal)

    def _run(self) -> Iterator[dict | None]:
        raise NotImplementedError

    def _ordered(self, results, record: Callable, previous: Callable[[str], dict]) -> Iterator[dict | None]:
        """None once ready, then each input's record in input order: `previous(path)` for those done before,
        `record(path, result)` (written by it) for the others, from the engine's `results`."""
        try:
            yield None  # ready (`start`)
            for path in self.paths:
                rec = previous(path) if path in self.done else record(path, next(results))
                self.failures += not rec["ok"]
                self.finished += 1
                yield rec
        except (KeyboardInterrupt, GeneratorExit) as e:
            results.close()  # stops the decoding workers before this process goes
            if self.writer is not None:
                self.writer.suspend()
            if isinstance(e, KeyboardInterrupt):
                raise self.interrupted() from None
            raise


class _Classify(BatchRun):
    def __init__(self, inputs, model, revision, options, *, top_k, timeline, window, hop, out, fmt, stream,
                 provenance, resume, force, shard, decode_ahead):  # fmt: skip
        self.model, self.revision, self.opts, self.top_k = model, revision, options, top_k
        self.plan_args = (timeline, window, hop)
        self.fmt, self.stream, self.provenance, self.decode_ahead = fmt, stream, provenance, decode_ahead
        settings = run_settings(
            model, revision, options, top_k=top_k, timeline=timeline, window=window, hop=hop
        )
        super().__init__(inputs, out, shard=shard, resume=resume, force=force, settings=settings)

    def _run(self) -> Iterator[dict | None]:
        from .ahead import decoded_ahead

        timeline, window, hop = self.plan_args
        out, paths = self.out, self.paths
        one = paths[0] if self.decode_ahead and len(paths) == 1 and not timeline and not self.resume else None
        with (
            claimed(out, RecordWriter.files(out) if out is not None else {}, paths, self.force),
            decoded_ahead(one, self.model, self.revision, self.opts) as ahead,  # decodes while torch imports
        ):
            from ..video.timeline import Timeline
            from .provenance import RunProvenance
            from .tasks import checked_results, classification_record, load_model, run_dtype  # imports torch

            self.settings["dtype"] = run_dtype("classify", self.opts)  # what auto is here
            if self.resume:
                check_settings(journal_settings(out), self.settings, partial_path(out))
            done = finished_records(out) if self.resume else {}
            self.done = set(done)
            todo = [p for p in paths if p not in done]
            net, engine = (
                load_model(self.model, self.revision, "classify", self.opts) if todo else (None, None)
            )
            provenance = RunProvenance.of(engine, self.model) if todo and self.provenance else None
            plan = Timeline(window, hop, self.opts.clips) if timeline else None
            results = checked_results(engine.run(todo, plan, ahead) if todo else iter(()), engine)
            if self.fmt is not None:
                self.writer = RecordWriter(out, self.fmt, self.stream, done=done, settings=self.settings)

            def record(path, result) -> dict:
                rec = classification_record(result, net.config, self.top_k, provenance)
                if self.writer is not None:
                    self.writer.write(rec)
                return rec

            def previous(path) -> dict:
                if self.writer is not None:
                    self.writer.write(done[path])
                return done[path]

            yield from self._ordered(results, record, previous)
            if self.writer is not None:
                self.writer.close()


class _Embed(BatchRun):
    def __init__(self, inputs, model, revision, options, *, pool, out, fmt, resume, force, shard):
        self.model, self.revision, self.opts, self.pool, self.fmt = model, revision, options, pool, fmt
        settings = run_settings(model, revision, options, pool=pool)
        super().__init__(inputs, out, shard=shard, resume=resume, force=force, settings=settings)

    def _run(self) -> Iterator[dict | None]:
        out, fmt, resume = self.out, self.fmt, self.resume
        files = RecordWriter.files(out) if fmt == "jsonl" else EmbeddingWriter.files(out)
        with claimed(out, files, self.paths, self.force):
            from .provenance import RunProvenance
            from .tasks import checked_results, embedding, embedding_width, load_model, run_dtype  # torch

            self.settings["dtype"] = run_dtype(self.pool, self.opts)  # what auto is here

            # What an earlier run finished, read before anything is opened for writing (a JSON Lines journal is
            # rewritten from the start), and the model loaded before a fresh journal appears (a model that
            # fails to load leaves nothing behind).
            if fmt == "jsonl" and resume:
                check_settings(journal_settings(out), self.settings, partial_path(out))
            previous = finished_records(out) if fmt == "jsonl" and resume else {}
            if fmt != "jsonl" and resume:
                self.writer = EmbeddingWriter(out, fmt, resume=True, settings=self.settings)
            self.done = self.writer.done() if self.writer is not None else set(previous)
            todo = [p for p in self.paths if p not in self.done]
            net, engine = (
                load_model(self.model, self.revision, self.pool, self.opts) if todo else (None, None)
            )
            provenance = RunProvenance.of(engine, self.model) if todo and fmt == "jsonl" else None
            if self.writer is None:
                self.writer = (RecordWriter(out, "jsonl", done=previous, settings=self.settings) if fmt == "jsonl"
                               else EmbeddingWriter(out, fmt, settings=self.settings))  # fmt: skip
            results = checked_results(engine.run(todo) if todo else iter(()), engine)

            def record(path, result) -> dict:
                failed = None if result.ok else error_record(path, result.error)
                if fmt == "jsonl":
                    rec = ({"path": path, "ok": True, "embedding": embedding(result).tolist(),
                            **provenance.record_fields(result.clips)}
                           if result.ok else {**failed, "provenance": provenance.run})  # fmt: skip
                    self.writer.write(rec)
                    return rec
                self.writer.write(path, embedding(result) if result.ok else None, result.error)
                return failed or {"path": path, "ok": True}

            def done(path) -> dict:
                if fmt == "jsonl":
                    self.writer.write(previous[path])
                    return previous[path]
                return {"path": path, "ok": True}

            yield from self._ordered(results, record, done)
            if fmt == "jsonl":
                self.writer.close()
            else:
                self.written = self.writer.close(
                    self.paths, embedding_width(net.config, self.pool) if net else 0
                )


def classify_batch(
    inputs: list[str], model: str = DEFAULT_MODEL, *, revision: str | None = None,
    options: RunOptions | None = None, top_k: int = 5, timeline: bool = False, window: float | None = None,
    hop: float | None = None, out: Path | None = None, fmt: str | None = "jsonl", stream=None,
    provenance: bool | None = None, resume: bool = False, force: bool = False, shard: str | None = None,
    decode_ahead: bool = True,
) -> BatchRun:  # fmt: skip
    """Classify `inputs` (files, folders, globs, "-" for paths on stdin): a run whose records come in input order.

    `fmt`: "jsonl" or "json", the records written to `out` (or to `stream`, by default stdout); None: only
    yielded. `provenance`: each record says where its frames come from and how the run was made (by default
    when records are written). `timeline`: labels for consecutive windows of `window` seconds every `hop`.
    `resume`: continue an interrupted run into the same `out` (same settings). `force`: replace a file at `out`
    that vmae did not write. `shard`: "i/n", this process's part of the inputs. `decode_ahead`: a single input
    is decoded while torch imports and the model loads.
    """
    return _Classify(inputs, model, revision, options or RunOptions(), top_k=top_k, timeline=timeline,
                     window=window, hop=hop, out=out, fmt=fmt, stream=stream,
                     provenance=fmt is not None if provenance is None else provenance, resume=resume, force=force,
                     shard=shard, decode_ahead=decode_ahead)  # fmt: skip


def embed_batch(
    inputs: list[str], out: Path, model: str = DEFAULT_MODEL, *, revision: str | None = None,
    options: RunOptions | None = None, pool: str = "auto", fmt: str = "npy", resume: bool = False,
    force: bool = False, shard: str | None = None,
) -> BatchRun:  # fmt: skip
    """Embed `inputs` into `out`: "npy" (with OUT-stem.paths.txt), "npz", "safetensors" or "jsonl" (`fmt`), rows
    in input order; failed inputs are listed in OUT-stem.errors.jsonl. Its records say which inputs failed.
    `pool`: auto, mean, token0 or none (every token). Other arguments as for `classify_batch`."""
    return _Embed(inputs, model, revision, options or RunOptions(), pool=pool, out=out, fmt=fmt, resume=resume,
                  force=force, shard=shard)  # fmt: skip
