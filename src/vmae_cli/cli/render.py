"""Terminal renderings of results (rich tables on stdout)."""

from __future__ import annotations

import sys


def _console():
    from rich.console import Console

    return Console(file=sys.stdout, soft_wrap=True)


def print_classification(record: dict) -> None:
    """A table of the top labels; with a timeline, one compact row per segment."""
    from rich.table import Table

    if not record["ok"]:
        return  # errors are reported on stderr
    console = _console()
    if "segments" in record:
        table = Table(title=record["path"], title_justify="left")
        for col, justify in (("start", "right"), ("end", "right"), ("label", "left"), ("score", "right")):
            table.add_column(col, justify=justify)
        for seg in record["segments"]:
            top = seg["predictions"][0]
            table.add_row(f"{seg['start']:.2f}", f"{seg['end']:.2f}", top["label"], f"{top['score']:.3f}")
        console.print(table)
        return
    table = Table(title=f"{record['path']}  ({record['views']} view{'s' if record['views'] != 1 else ''})",
                  title_justify="left")  # fmt: skip
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for rank, p in enumerate(record["predictions"], 1):
        table.add_row(str(rank), p["label"], f"{p['score']:.3f}")
    console.print(table)
