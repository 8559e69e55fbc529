"""What the command line shows a person: JSON on stdout, rich tables for a terminal, the progress bar on stderr.

The one module of vmae, with render.py and live.py beside it, that draws with rich; the library returns data.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..jsonfile import dumps


def print_json(data: Any, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(dumps(data, indent=2) + "\n")
    stream.flush()


def stdout_console():
    """A rich console on stdout that never wraps a line (a pipe gets whole lines)."""
    from rich.console import Console

    return Console(file=sys.stdout, soft_wrap=True)


def print_mapping(data: dict[str, Any], title: str | None = None) -> None:
    """A two-column table of a flat-ish mapping (nested values shown compactly)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        table.add_row(key.replace("_", " "), str(value))
    stdout_console().print(table)


@contextlib.contextmanager
def progress(
    total: int, quiet: bool, label: str, *, completed: int = 0, transient: bool = True, unit: str = "videos"
) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr (rate, ETA) for more than one item, when stderr is a terminal.

    Yields `advance(done=None, info=None)`: one more item done (or `done` items in all), with `info` beside
    the bar (by default the rate, in `unit`/s). `completed`: items done before the bar starts (a resumed run).
    """
    if quiet or total <= 1 or not sys.stderr.isatty():
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=transient) as bar:
        task = bar.add_task(label, total=total, completed=completed, info="")

        def advance(done: int | None = None, info: str | None = None) -> None:
            if done is None:
                bar.advance(task)
            else:
                bar.update(task, completed=done)
            if info is None:
                speed = bar.tasks[task].speed
                info = f"{speed:.2f} {unit}/s" if speed else ""
            bar.update(task, info=info)

        yield advance


def training_progress(quiet: bool) -> Callable[..., contextlib.AbstractContextManager] | None:
    """The bar of a training run (rank 0): steps, with loss, lr and clips/s beside it; kept when the run ends."""
    return None if quiet else functools.partial(progress, quiet=False, transient=False)
