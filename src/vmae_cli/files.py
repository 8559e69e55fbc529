"""Atomic writes (a file or folder that a run writes appears whole or not at all) and one run per output (locks)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError, VmaeError, option

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


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to fill; on success its files are synced to disk and it is renamed
    to `path` (replacing a folder there), on error removed. A reader sees the old folder or the new one, whole.

    The temporary name is `.NAME.XXXX.tmp`, so a killed writer's leftovers are easy to find and remove."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        yield tmp
        _fsync_files(tmp)  # on disk before the rename makes the folder visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # first: the room it took is free again
        raise
    old = None
    if path.is_dir():
        if any(path.iterdir()):
            old = tmp.with_name(f"{tmp.name[:-4]}.old.tmp")
            os.replace(path, old)
        else:
            path.rmdir()
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path` in which to write the file of that name and any that go with it
    (ONNX's external data); on success each is synced to disk and renamed beside `path`, `path` itself last, on
    error all are removed. Each file appears whole or not at all, and `path` only once the files it needs are
    there. The temporary folder is named `.NAME.<random>.tmp`, as for `atomic_folder`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield work
        _fsync_files(work)
        for name in sorted(os.listdir(work), key=lambda n: n == path.name):
            os.replace(work / name, path.parent / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fsync_files(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---- out of space -----------------------------------------------------------------------------------------
class NoSpaceError(VmaeError):
    """A write failed for lack of room: the device is full, a quota or the process's file size limit is hit."""


def no_space_error(
    error: BaseException, path: str | Path, needed: int, advice: str = "try again"
) -> NoSpaceError | None:
    """The one-line error for a write of about `needed` bytes under `path` that failed for lack of room, or
    None when `error` has another cause. Call it after removing what the failed write left, so the free space
    it reports is what the next try would have. Writers report the cause differently: OSError has an errno,
    safetensors says "(os error 28)", torch.save only that its writer stopped; then the space tells."""
    code = getattr(error, "errno", None)
    if code is None and (found := re.search(r"os error (\d+)", str(error))):
        code = int(found.group(1))
    if code is not None and code not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    limit = _file_size_limit()
    if code == errno.EFBIG or (code is None and limit is not None and limit < needed):
        return NoSpaceError(
            f"cannot write {path}: a file would pass this process's file size limit (ulimit -f: "
            f"{_size(limit or 0)}); it needs about {_size(needed)}: raise the limit, then {advice}"
        )
    if code is None and free >= needed:
        return None
    return NoSpaceError(
        f"no space left on the device of {path}: it needs about {_size(needed)}, {_size(free)} free"
        f"{' (or a disk quota is reached)' if code == errno.EDQUOT else ''}; free some space, then {advice}"
    )


@contextlib.contextmanager
def no_space_reported(path: str | Path, needed: int, advice: str = "try again") -> Iterator[None]:
    """Turn a write under `path` that fails for lack of room into `no_space_error`'s one line."""
    try:
        yield
    except Exception as e:
        full = no_space_error(e, path, needed, advice)
        if full is not None:
            raise full from e
        raise


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


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
                f"wait for it to finish, or choose another {option('out')}",
                param="out",
                value=str(target),
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
