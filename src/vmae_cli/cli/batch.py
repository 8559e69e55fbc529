"""What classify and embed share around the engine: inputs, shards, resume, progress, exit codes."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import Interrupted, UsageError
from ..video.discover import expand_inputs, parse_shard, take_shard


def idle_threads_sleep() -> None:
    """Let torch's OpenMP threads sleep, not spin, while they wait for work (unless OMP_WAIT_POLICY is set).

    Call it before torch is imported: OpenMP reads the variable when torch loads it. A spinning thread holds a
    core that the thread it waits for may need: on a CPU shared with the decoding workers or other processes,
    every parallel region of the forward then waits for a core. Whole-process `vmae classify` on the shared
    2-core box (load average 6-8): 0.84x the wall time and 0.81x the CPU time (median of 6 interleaved pairs).
    `vmae embed` does not call it: its steady state with and without disagreed between runs.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
            + (f" ({len(unlisted)} folder(s) could not be listed)" if unlisted else "")
        )
    paths = take_shard(paths, index, count)
    if count > 1 and shard is None and out is not None:  # every rank got the same --out: one file each
        out = out.with_name(f"{out.stem}.rank{index}of{count}{out.suffix}")
    return paths, out, len(unlisted)


def exit_code(failures: int) -> int:
    """0 when every input was done, 1 when some failed (every other input still reported)."""
    return 1 if failures else 0


def report_error(record: dict) -> None:
    """One line on stderr for a failed input (naming the file once)."""
    path, message = record["path"], record["error"]["message"]
    print(f"error: {message}" if path in message else f"error: {path}: {message}", file=sys.stderr)


def run_settings(model: str, revision: str | None, opts, **extra) -> dict:
    """What a run's outputs depend on (model, sampling, precision...): kept in its journal, so that `--resume`
    refuses to mix another model or other settings into one output. `opts`: the run's RunOptions."""
    local = Path(model).expanduser()
    return dict(model=str(local.resolve()) if local.exists() else model, revision=revision, dtype=opts.dtype,
                frames=opts.frames, stride=opts.stride, sampling=opts.sampling, clips=opts.clips, crops=opts.crops,
                **extra)  # fmt: skip


@contextlib.contextmanager
def claimed(out: Path | None, files: dict[Path, str], inputs: list[str], force: bool) -> Iterator[None]:
    """Make sure the run's outputs destroy nothing (`check_outputs`), then hold the lock on `out` until the
    run ends, so that a second run with the same --out is refused instead of mixing into this one."""
    from ..files import exclusive_lock
    from ..inference.writers import check_outputs

    if out is None:
        yield
        return
    check_outputs(files, inputs, force)
    with exclusive_lock(out):
        yield


def resume_command() -> str:
    """The command line of this run with --resume: what continues it after an interrupt."""
    args = sys.argv[1:]
    return shlex.join(["vmae", *args, *([] if "--resume" in args else ["--resume"])])


def interrupted(
    out: Path | None, kept: int, total: int, journal: Path | None, from_stdin: bool
) -> Interrupted:
    """The error that ends a run stopped by Ctrl-C: what was kept, and the command that continues it."""
    if out is None:
        return Interrupted(
            f"interrupted after {kept} of {total} input(s); nothing was kept on disk (results go to stdout): "
            "run with --out FILE to be able to --resume"
        )
    stdin = " (with the same list of paths on stdin)" if from_stdin else ""
    return Interrupted(
        f"interrupted: {kept} of {total} input(s) done and kept in {journal}; continue with: "
        f"{resume_command()}{stdin}"
    )
