"""`vmae classify --live SOURCE`: a rolling timeline of a stream, JSON Lines on a pipe or a live table on a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections import deque

ROWS = 12  # windows the terminal table shows


def run_live(source: str, model: str, revision: str | None, opts, *, top_k: int, window: float | None,
             hop: float | None, input_format: str | None, as_json: bool) -> int:  # fmt: skip
    """Classify `source` until it ends (exit 0) or Ctrl-C (exit 130); a one-line summary on stderr either way."""
    from ..errors import Interrupted, VmaeError
    from ..inference.live import LiveStats, live_classify
    from ..jsonfile import dumps

    stats = LiveStats()
    records = live_classify(source, model, revision=revision, options=opts, top_k=top_k, window=window, hop=hop,
                            input_format=input_format, stats=stats)  # fmt: skip
    table = contextlib.nullcontext(None) if as_json or not sys.stdout.isatty() else _LiveTable(source)
    try:
        with table as show:
            for record in records:
                if show is None:
                    sys.stdout.write(dumps(record) + "\n")
                    sys.stdout.flush()
                else:
                    show(record)
    except KeyboardInterrupt:
        records.close()
        raise Interrupted(f"interrupted: {stats.summary()}") from None
    except VmaeError as e:
        if not stats.received:
            raise
        # the stream broke after it started: the same error (its type gives the exit code), saying what it gave
        e.args = (f"{Exception.__str__(e)} ({stats.summary()})", *e.args[1:])
        raise e from None
    if not stats.windows:
        raise VmaeError(f"{source}: the stream ended before one window was complete ({stats.summary()})")
    print(f"live: the stream ended; {stats.summary()}", file=sys.stderr)
    return 0


class _LiveTable:
    """A rich table of the last windows, redrawn on stdout as each one comes."""

    def __init__(self, source: str):
        self.source, self.rows = source, deque(maxlen=ROWS)

    def __enter__(self):
        from rich.console import Console
        from rich.live import Live

        self.live = Live(console=Console(file=sys.stdout), auto_refresh=False)
        self.live.__enter__()
        return self.show

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def show(self, record: dict) -> None:
        from rich.table import Table

        self.rows.append(record)
        table = Table(title=f"{self.source}  (live; Ctrl-C stops)", title_justify="left",
                      caption=f"{record['frames_received']} frames received, {record['frames_dropped']} dropped, "
                              f"{record['windows_skipped']} windows skipped", caption_justify="left")  # fmt: skip
        for col, justify in (("start", "right"), ("end", "right"), ("label", "left"), ("score", "right"),
                             ("latency", "right"), ("model", "right")):  # fmt: skip
            table.add_column(col, justify=justify)
        for r in self.rows:
            top = r["predictions"][0]
            table.add_row(f"{r['start']:.2f}", f"{r['end']:.2f}", top["label"], f"{top['score']:.3f}",
                          f"{r['latency']:.3f} s", f"{r['model_time']:.3f} s")  # fmt: skip
        self.live.update(table, refresh=True)
