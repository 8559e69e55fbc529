"""What classify and embed share on the command line: thread policy, and a batch run shown on the terminal
(`show_run`: progress, error lines, exit code, and at Ctrl-C the command that continues it)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable

from ..errors import Interrupted


def idle_threads_sleep() -> None:
    """Let torch's OpenMP threads sleep, not spin, while they wait for work (unless OMP_WAIT_POLICY is set).

    Call it before torch is imported: OpenMP reads the variable when torch loads it. A spinning thread holds a
    core that the thread it waits for may need: on a CPU shared with the decoding workers or other processes,
    every parallel region of the forward then waits for a core. Whole-process `vmae classify` on the shared
    2-core box (load average 6-8): 0.84x the wall time and 0.81x the CPU time (median of 6 interleaved pairs).
    `vmae embed` does not call it: its steady state with and without disagreed between runs.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def exit_code(failures: int) -> int:
    """0 when every input was done, 1 when some failed (every other input still reported)."""
    return 1 if failures else 0


def report_error(record: dict) -> None:
    """One line on stderr for a failed input's record."""
    report_failure(record["path"], record["error"]["message"])


def report_failure(path: str, message: str) -> None:
    """One line on stderr for a failed input (naming the file once)."""
    print(f"error: {message}" if path in message else f"error: {path}: {message}", file=sys.stderr)


def resume_command() -> str:
    """The command line of this run with --resume: what continues it after an interrupt."""
    args = sys.argv[1:]
    return shlex.join(["vmae", *args, *([] if "--resume" in args else ["--resume"])])


def interrupted(e: Interrupted, inputs: list[str]) -> Interrupted:
    """The line that ends a batch run stopped by Ctrl-C (`BatchRun.interrupted`): what was kept, and the
    command that continues it."""
    if e.journal is None:
        return Interrupted(
            f"interrupted after {e.kept} of {e.total} input(s); nothing was kept on disk (results go to stdout): "
            "run with --out FILE to be able to --resume"
        )
    stdin = " (with the same list of paths on stdin)" if "-" in inputs else ""
    return Interrupted(
        f"interrupted: {e.kept} of {e.total} input(s) done and kept in {e.journal}; continue with: "
        f"{resume_command()}{stdin}"
    )


def show_run(
    run, inputs: list[str], label: str, quiet: bool, render: Callable[[dict], None] | None = None
) -> int:
    """Run a BatchRun (inference/batch.py) on the command line: the model loads, then a progress bar over what
    is left to do, each new record given to `render` (the table; JSON is written by the run itself), one line
    on stderr per failed input, and at Ctrl-C what was kept and the command that continues it. Returns the
    exit code."""
    from .ui import progress

    try:
        run.start()  # loads the model
        with progress(len(run.paths) - len(run.done), quiet, label) as advance:
            for record in run:
                if record["path"] in run.done:
                    continue
                advance()
                if render is not None:
                    render(record)
                if not record["ok"]:
                    report_error(record)
    except (KeyboardInterrupt, Interrupted) as e:
        raise interrupted(e if isinstance(e, Interrupted) else run.stop(), inputs) from None
    return exit_code(run.failures)
