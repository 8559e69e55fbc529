"""What commands show: JSON on stdout, rich tables for a terminal. Humans' messages go to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    stream.flush()


def _stdout_console():
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
    _stdout_console().print(table)
