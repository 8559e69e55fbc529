"""Messages for people, on stderr: vmae's log records and Python warnings (vmae's own and its libraries',
torch's included), one line each, without the source line that Python's warnings print.

A message that comes again with other numbers (a corrupt packet at another pts, the same warning for
another batch) is shown once and counted; at the end one line says how many more came. Worker processes
(forked by the data loaders) count their own and say so when they exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import re
import warnings
from collections.abc import Iterator
from typing import TextIO

LOGGERS = ("vmae_cli", "py.warnings")  # py.warnings: where Python warnings are logged (logging's own name)
# A number standing alone ("pts 4608", "2 frame(s)", "0.35"), not one inside a name ("clip2.mp4", "x264").
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])")


class RepeatFilter(logging.Filter):
    """Lets the first message of each kind through and counts the others; a kind is a message with its
    standalone numbers blanked out. `flush` logs one line per kind that came again."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, int, str], list] = {}  # kind -> [first record, how many more]
        multiprocessing.util.register_after_fork(self, RepeatFilter._after_fork)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeats", None) is not None:  # the summary line itself
            return True
        kind = (record.name, record.levelno, _NUMBER.sub("#", record.getMessage()))
        entry = self.seen.get(kind)
        if entry is None:
            self.seen[kind] = [record, 0]
            return True
        entry[1] += 1
        return False

    def flush(self) -> None:
        for first, more in list(self.seen.values()):
            if more:
                logging.getLogger(first.name).log(
                    first.levelno,
                    "%s (and %d more like it)",
                    first.getMessage(),
                    more,
                    extra={"repeats": more},
                )
        for entry in self.seen.values():
            entry[1] = 0

    def _after_fork(self) -> None:
        """In a worker: what the parent showed stays shown, the counting starts anew, and the worker says
        what it held back when it exits (multiprocessing runs its finalizers then)."""
        for entry in self.seen.values():
            entry[1] = 0
        multiprocessing.util.Finalize(self, self.flush, exitpriority=10)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("py.warnings").warning("%s", message)


@contextlib.contextmanager
def messages_to(stream: TextIO) -> Iterator[RepeatFilter]:
    """For the length of one command: log records and warnings to `stream` as `LEVEL: message` lines,
    repeats counted (the count comes out when the block ends). Restores what it changed."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    repeats = RepeatFilter()
    handler.addFilter(repeats)
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate)
             for logger in map(logging.getLogger, LOGGERS)]  # fmt: skip
    for logger, *_ in saved:
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    show = warnings.showwarning
    warnings.showwarning = _log_warning
    try:
        yield repeats
    finally:
        repeats.flush()
        warnings.showwarning = show
        for logger, handlers, level, propagate in saved:
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)
