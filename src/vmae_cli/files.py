"""Atomic file writes (a file that a run writes appears whole or not at all) and one run per output (locks)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and writers may recreate the file: give it the usual permissions last
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---- one run per output ------------------------------------------------------------------------------------
_HELD: dict[str, int] = {}  # lock file -> depth, so that a process may take its own lock again


class OutputLocked(UsageError):
    """Another run holds the lock on this output (exit code 2)."""


def lock_path(target: str | Path) -> Path:
    """The lock file of an output file or run folder: `.NAME.lock` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `target` (an output file or a run folder) for the duration; a second run
    that asks for it while this one holds it is refused at once (`OutputLocked`), naming the output.

    POSIX record locks (fcntl.lockf), not flock: they belong to this process only, so decoding workers forked
    from it do not keep a killed run's lock alive; the kernel drops them when the process ends, however it
    ends. The lock file (holding the owner's pid) is removed on a clean exit; a crash leaves it, unlocked.
    """
    import fcntl

    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise OutputLocked(
                f"{target} is being written by another vmae run{f' (pid {owner})' if owner.isdigit() else ''}; "
                "wait for it to finish, or choose another --out"
            ) from None
        try:  # the file may have been removed (by its last owner) between our open and our lock
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(path)  # before unlocking: a run that opens the file now finds it gone and retries
        os.close(fd)
