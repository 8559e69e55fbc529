"""What can go wrong with a video file: the VideoError family, and FFmpeg's failures put in words.

The class names appear in JSON error records ("type"), so they stay as they are. `ffmpeg_error` recovers
FFmpeg's own message where PyAV's exception says only "Invalid argument"; `reason` and `path_error` give one
line for an exception and for a path that cannot be stat'ed. The live reader (inference/live.py) uses them too.
"""

from __future__ import annotations

import errno
import os
import warnings
from contextlib import contextmanager

import av

from ..errors import VmaeError


class VideoError(VmaeError):
    """A file that cannot be used as a video."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist or is not a file."""


class NoVideoStreamError(VideoError):
    """The file opens but holds no video stream (audio only, subtitles...)."""


class VideoPermissionError(VideoError, PermissionError):
    """The file exists but this process may not read it."""


class VideoDecodeError(VideoError):
    """The file is not a readable video, or no frame of it decodes."""


class VideoTimeoutError(VideoDecodeError):
    """Reading took longer than the per-file time limit."""


class EmptyVideoError(VideoError):
    """The file is empty or its video stream has no frames."""


class FrameTooLargeError(VideoError):
    """The video's pictures are larger than the reader's pixel limit (`MAX_PIXELS`)."""

    def __init__(self, path: str, width: int, height: int, limit: int):
        super().__init__(
            f"{path}: frames of {width}x{height} pixels ({width * height / 1e6:.3g} MP) are over the limit of "
            f"{limit} pixels ({limit / 1e6:.3g} MP); scale the video down first "
            "(e.g. ffmpeg -i IN -vf scale=-2:2160 OUT)"
        )
        self.path, self.width, self.height, self.limit = path, width, height, limit

    def __reduce__(self):  # crosses process boundaries (decoding workers) with its fields
        return (type(self), (self.path, self.width, self.height, self.limit))


@contextmanager
def ffmpeg_error():
    """Yields a function that returns FFmpeg's last error message logged since entering, or None.

    PyAV drops FFmpeg's log unless a log level is set, and then its exceptions say only "Invalid argument" or
    "Device or resource busy". Inside, a level that records errors and prints nothing (PANIC) stands in for
    none, only while a file is opened: probing decodes in the calling thread, whereas a log callback taking
    the GIL from FFmpeg's frame threads can deadlock a decoder.
    """
    own = av.logging.get_level() is None
    if own:
        av.logging.set_level(av.logging.PANIC)
    start = av.logging.get_last_error()[0]

    def last() -> str | None:
        count, entry = av.logging.get_last_error()
        return entry[2].strip() if count > start and entry else None

    try:
        yield last
    finally:
        if own:
            av.logging.set_level(None)


def path_error(path: str, e: OSError) -> VideoError:
    """The error for a path that cannot be stat'ed, saying why."""
    if e.errno == errno.ELOOP:
        return VideoNotFoundError(
            f"{path}: a symbolic link loop (a link on this path leads back to itself); fix the link"
        )
    if e.errno == errno.ENOENT and os.path.islink(path):
        return VideoNotFoundError(
            f"{path}: a broken symbolic link (its target {os.readlink(path)!r} does not exist); fix the link"
        )
    if e.errno == errno.ENOENT:
        return VideoNotFoundError(f"{path}: no such file; check the path")
    if e.errno == errno.ENOTDIR:
        return VideoNotFoundError(f"{path}: part of the path is a file, not a folder; check the path")
    if e.errno == errno.EACCES:
        return VideoPermissionError(
            f"{path}: permission denied (a folder on the path); check the permissions"
        )
    return VideoNotFoundError(f"{path}: cannot be read ({e.strerror}); check the path")


def reason(e: Exception) -> str:
    """One line for an FFmpeg or OS error: its strerror, else its first line."""
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def warn(message: str) -> None:
    """A damaged file that still reads: a RuntimeWarning, pointing at the reader's caller."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
