"""What classify and embed share around the engine: inputs, shards, resume, progress, exit codes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UsageError
from ..inference import expand_inputs, parse_shard, take_shard


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


@contextlib.contextmanager
def progress(total: int, quiet: bool, label: str) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (videos/s, ETA) for more than one input, when stderr is a terminal."""
    if quiet or total <= 1 or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, rate="")

        def advance() -> None:
            bar.advance(task)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:.2f} videos/s" if speed else "")

        yield advance


def exit_code(failures: int) -> int:
    """0 when every input was done, 1 when some failed (every other input still reported)."""
    return 1 if failures else 0


def report_error(record: dict) -> None:
    """One line on stderr for a failed input (naming the file once)."""
    path, message = record["path"], record["error"]["message"]
    print(f"error: {message}" if path in message else f"error: {path}: {message}", file=sys.stderr)
