"""A forked child process that works while its parent imports torch, and hands back numpy arrays.

A thread of the importing process shares its GIL: each time the thread takes the GIL between two calls into
PyAV or numpy, the import stops. Measured on 2 cores (medians of 5), `import torch` took 1.01 s alone and 1.31 s
beside a thread decoding a 1080p clip; in another run, 0.93 s alone and 0.97 s beside a forked child decoding
the same clip and converting ViT-B's weights. So on Linux, where fork is cheap and safe before torch is loaded,
the work is done by a child: its arrays go into one shared memory file (memfd), in page-aligned blocks, each
announced on a pipe with what it holds; the parent maps them (copy-on-write: writable, nothing copied) and
reads the announcements in order.

The child inherits the parent's state (the parsed command line, loggers, open files) and ends with os._exit:
it never flushes the parent's buffered output, runs its atexit handlers or prints a traceback. Ctrl-C is for
the parent, which kills the child when it closes it. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

_PAGE = mmap.PAGESIZE


def available() -> bool:
    """Whether to work in a child: Linux (fork, memfd), and torch not loaded yet (forking a process that has
    torch's thread pools running is what fork must not be used for; once torch is loaded there is no import
    left to overlap)."""
    return sys.platform == "linux" and hasattr(os, "memfd_create") and "torch" not in sys.modules


class Outbox:
    """The child's end: `send` puts arrays into the shared file and tells the parent where they are."""

    def __init__(self, fd: int, pipe: int):
        self.fd, self.pipe, self.size = fd, pipe, 0

    def send(self, kind: str, payload: Any = None, arrays: dict | None = None) -> None:
        places, end = {}, self.size
        for key, a in (arrays or {}).items():  # each array on pages of its own
            places[key] = (end, a.dtype.str, a.shape)
            end = _aligned(end + a.nbytes)
        if end > self.size:
            os.ftruncate(self.fd, end)
            block = mmap.mmap(self.fd, end - self.size, offset=self.size)
            for key, a in arrays.items():
                np.frombuffer(block, a.dtype, a.size, places[key][0] - self.size).reshape(a.shape)[...] = a
            block.close()
            self.size = end
        message = pickle.dumps((kind, payload, places), protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(self.pipe, len(message).to_bytes(8, "little") + message)


class Child:
    """The parent's end: the child's messages, in the order it sent them (`receive`), and `close`."""

    def __init__(self, pid: int, fd: int, pipe: int):
        self.pid, self.fd, self.pipe = pid, fd, pipe
        self.received: dict[str, tuple[Any, dict]] = {}
        self.ended = False

    @classmethod
    def start(cls, work: Callable[[Outbox], None]) -> Child | None:
        """Fork a child that runs `work(outbox)` and exits; None if it cannot be started."""
        try:
            fd = os.memfd_create("vmae-ahead", os.MFD_CLOEXEC)
        except OSError:
            return None
        read, write = os.pipe()
        try:
            with warnings.catch_warnings():  # numpy's BLAS threads make Python 3.12+ warn about fork
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            for end in (fd, read, write):
                os.close(end)
            return None
        if pid == 0:  # the child
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.close(read)
                work(Outbox(fd, write))
            except BaseException:  # noqa: BLE001 - the parent does the work itself when a message is missing
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        return cls(pid, fd, read)

    def receive(self, kind: str) -> tuple[Any, dict[Any, np.ndarray]] | None:
        """The payload and arrays of the child's `kind` message, waiting for it; None if the child ended
        without sending one."""
        while kind not in self.received and not self.ended:
            message = _read_exactly(self.pipe, 8)
            body = _read_exactly(self.pipe, int.from_bytes(message, "little")) if message else None
            if body is None:
                self.ended = True
                break
            got, payload, places = pickle.loads(body)  # from the child this process forked
            self.received[got] = (payload, self._map(places))
        return self.received.pop(kind, None)

    def _map(self, places: dict) -> dict:
        sizes = {key: int(np.prod(shape, dtype=np.int64)) for key, (_, _, shape) in places.items()}
        lo = min((off for off, _, _ in places.values()), default=0)
        hi = max((off + sizes[k] * np.dtype(dt).itemsize for k, (off, dt, _) in places.items()), default=0)
        if hi <= lo:
            return {key: np.empty(shape, np.dtype(dt)) for key, (_, dt, shape) in places.items()}
        block = mmap.mmap(
            self.fd, _aligned(hi) - lo, flags=mmap.MAP_PRIVATE, offset=lo
        )  # writable, not shared
        return {
            key: np.frombuffer(block, np.dtype(dt), sizes[key], off - lo).reshape(shape)
            for key, (off, dt, shape) in places.items()
        }

    def close(self) -> None:
        """Stop the child (if it still works) and let go of what it sent and nobody took."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        for end in (self.fd, self.pipe):
            with contextlib.suppress(OSError):
                os.close(end)
        self.received.clear()
        self.ended = True


def _aligned(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, left = [], n
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
