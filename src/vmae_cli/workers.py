"""What every decoding worker process sets up when it starts (inference's and training's DataLoaders)."""

from __future__ import annotations

import signal
import sys

import torch


def init_decode_worker(_worker_id: int) -> None:
    """One torch thread per worker (the parallelism is the workers), and Ctrl-C left to the parent.

    The parent stops its workers when it is interrupted; a worker that took the SIGINT itself, or whose
    parent left in the middle of receiving a tensor from it (multiprocessing's fd-sharing thread then
    fails on the closed connection), would print a traceback under the parent's one-line message.
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_if_parent_left


def _quiet_if_parent_left(kind, value, traceback) -> None:
    if issubclass(kind, (ConnectionError, EOFError)):
        return  # the parent closed its end: it is going away, and says so itself
    sys.__excepthook__(kind, value, traceback)
