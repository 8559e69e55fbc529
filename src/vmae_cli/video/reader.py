"""VideoReader: PyAV decoding that touches only the frames a clip needs, with exact seeking.

Frame index i is the i-th frame in presentation order; the reader maps indices to packet timestamps once
(video/decoding.py builds that index) and `get_frames` then seeks to the keyframe before the first wanted
frame, decodes in order, names each decoded frame by its timestamp, and stops after the last wanted one. A
seek is trusted only if it lands on a keyframe of the index, at or before the first wanted frame; one that
lands late (intra refresh) retries from an earlier keyframe. Timestamps that are missing or ambiguous (raw
streams, AVI with B-frames), or that change after a seek (MPEG-PS), make it decode from the start and name
frames by counting. Wanted frames far apart are read in runs (`seek_runs`): any set of frames costs at most
about one GOP of decoding per run, never the frames between runs.

Frames are limited to MAX_PIXELS (8192 x 8192): FFmpeg itself refuses to allocate a larger picture (its
`max_pixels` option, set for probing and decoding), so a small file that claims a huge picture (a PNG of
16000 x 16000 renamed .mp4) cannot take gigabytes, and the reader says so in one line.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import av
import numpy as np

from .decoding import (
    NONREF_SKIPPABLE,
    FrameIndex,
    SeekMoved,
    WantedFrames,
    demux_index,
    open_video,
    safe_decode,
    sample_table_index,
    seek_runs,
)
from .errors import (
    EmptyVideoError,
    VideoDecodeError,
    VideoNotFoundError,
    VideoTimeoutError,
    path_error,
    reason,
    warn,
)

log = logging.getLogger(__name__)

# The largest picture the reader decodes: twice 8K UHD (33 MP), 8192 x 8192 square. A decoded frame of this
# size takes 100 MB in 8-bit YUV 4:2:0, 200 MB as RGB, 512 MB in 16-bit RGBA (1 GB in float RGBA: EXR).
MAX_PIXELS = 2**26


@dataclass
class FrameBatch:
    """Frames together with their presentation times, as `VideoReader.read` returns them."""

    frames: np.ndarray  # uint8 (N, H, W, 3) RGB, upright
    timestamps: np.ndarray  # float64 (N,) seconds from the stream start (VideoReader.timestamps), per frame


class VideoReader:
    """Random access to the frames of one video file.

    Args:
        path: a local video file.
        threads: decoder threads; 0 lets FFmpeg choose.
        timeout: seconds one operation (open, index, one `get_frames`) may take; None: no limit.
        max_pixels: the largest picture (width x height) to decode; larger ones raise FrameTooLargeError.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int = 0,
        timeout: float | None = 120.0,
        max_pixels: int = MAX_PIXELS,
    ):
        self.path = os.fspath(path)
        self.threads = threads
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.clamped = np.empty(0, np.int64)  # indices of the last get_frames call that were past the end
        self._index: FrameIndex | None = None
        self._rotation: int | None = None
        try:
            info = os.stat(self.path)
        except OSError as e:
            raise path_error(self.path, e) from e
        if not stat.S_ISREG(info.st_mode):
            raise VideoNotFoundError(f"{self.path}: not a file; pass a video file")
        if info.st_size == 0:
            raise EmptyVideoError(f"{self.path}: the file is empty (0 bytes); re-copy or re-encode it")
        self._container, self._stream = self._open()
        self._fresh = True  # nothing read from self._container yet: decoding from frame 0 needs no reopening
        cc = self._stream.codec_context
        # the stored picture size, as the header gives it; a stream that changes size midway (joined HLS
        # renditions, video calls) is scaled to it, so that every call returns the same shape
        self._stored_size = (cc.width, cc.height)
        self._reformatter = av.video.reformatter.VideoReformatter()

    # -- lifecycle -------------------------------------------------------------------------------
    def _open(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        return open_video(self.path, max_pixels=self.max_pixels, timeout=self.timeout, threads=self.threads)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # never demuxes or decodes: a repr must not fail on a broken file
        frames = len(self._index.pts) if self._index is not None else "?"
        return f"VideoReader({self.path!r}, {frames} frames)"

    # -- metadata --------------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        if rate:
            return float(rate)
        ts = self.timestamps
        return (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 25.0

    @property
    def duration(self) -> float:
        """Seconds, from the stream header, else from the frame timestamps (first to last frame, plus one).

        The container's duration is not used: some demuxers count it from time 0 (a Matroska file whose
        first frame is at 40 s "lasts" 41 s), others from the first frame.
        """
        s = self._stream
        if s.duration and s.time_base:
            return float(s.duration * s.time_base)
        ts = self.timestamps
        return float(ts[-1] - ts[0]) + 1.0 / self.fps

    @property
    def num_frames(self) -> int:
        """The exact number of frames, as `count_frames()`.

        Headers are not trusted: containers without a frame count (Matroska, WebM, MPEG-TS/PS, FLV) only
        give a duration x rate estimate, which is far off for variable rates, late start times or bitrate
        guesses, and even an MP4 count lists frames an edit list hides or a cut-short file lacks.
        """
        return self.count_frames()

    def count_frames(self) -> int:
        """The exact number of frames (demuxes the stream once, no decoding)."""
        return len(self.frame_index().pts)

    @property
    def timestamps(self) -> np.ndarray:
        """float64 (N,) presentation time of each frame in seconds, from the stream start."""
        index = self.frame_index()
        start = index.pts[0] if len(index.pts) else 0
        return (index.pts - start).astype(np.float64) * float(self._stream.time_base or 0)

    def times(self, indices) -> np.ndarray:
        """float64 seconds of the frames `get_frames(indices)` returns, in the shape of `indices` (no decoding).

        Indices past the end are clamped to the last frame, as `get_frames` clamps them.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if np.any(idx < 0):
            raise ValueError(f"frame indices must be >= 0, got {idx.min()}")
        ts = self.timestamps
        return ts[np.minimum(idx, len(ts) - 1)]

    @property
    def rotation(self) -> int:
        """Counter-clockwise degrees (0, 90, 180, 270) to turn a decoded frame to display it."""
        if self._rotation is None:
            rotate_tag = self._stream.metadata.get("rotate")  # legacy tag: clockwise degrees
            if rotate_tag is not None:
                self._rotation = -int(float(rotate_tag)) % 360
            else:
                self._rotation = 0
                container, stream = self._open()  # decode one frame: the display matrix rides on frames
                try:
                    for frame in safe_decode(container, stream, self.path):
                        self._rotation = _quarter_turns(frame.rotation) * 90
                        break
                finally:
                    container.close()
        return self._rotation

    @property
    def width(self) -> int:
        w, h = self._stored_size
        return h if self.rotation in (90, 270) else w

    @property
    def height(self) -> int:
        w, h = self._stored_size
        return w if self.rotation in (90, 270) else h

    def frame_index(self) -> FrameIndex:
        """Demux every packet once (no decoding) and keep their timestamps; cached."""
        if self._index is None:
            self._index = self._index_from_sample_table() or self._build_index()
        return self._index

    def _index_from_sample_table(self) -> FrameIndex | None:
        return sample_table_index(self.path, self._container, self._stream, self._open)

    def _build_index(self) -> FrameIndex:
        deadline = self._deadline()
        avi_b_frames = "avi" in self._container.format.name.split(",") and bool(
            self._stream.codec_context.has_b_frames
        )
        return demux_index(self.path, *self._open(), lambda: self._check(deadline), avi_b_frames)

    # -- frames ----------------------------------------------------------------------------------
    def read(
        self,
        indices,
        size: tuple[int, int] | None = None,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> FrameBatch:
        """Frames by index with their timestamps: `get_frames` (same arguments), and `times` of the same indices."""
        frames = self.get_frames(indices, size=size, transform=transform)
        return FrameBatch(frames, self.times(np.asarray(indices, dtype=np.int64).reshape(-1)))

    def get_frames(
        self,
        indices,
        size: tuple[int, int] | None = None,
        *,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Frames by index, each decoded and converted once, however often it is asked for.

        Args:
            indices: int array-like (N,), any order, repeats allowed. Indices past the last frame are
                clamped to it (frame num_frames - 1), with a logged warning; `clamped` lists them.
            size: optional (width, height) of the output as displayed; swscale resizes during the
                colour conversion (fast path; not bit-equal to the Preprocessor's resize).
            transform: optional function applied to each distinct frame as soon as it is decoded,
                uint8 (H, W, 3) -> uint8 (h, w, 3) (e.g. a resize): only one frame is held at full size.
        Returns:
            uint8 (N, H, W, 3) RGB, upright (rotation applied). A frame that does not decode (a damaged
            packet) is replaced, with a warning, by the nearest earlier frame that did, else the next one.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if np.any(idx < 0):
            raise ValueError(f"frame indices must be >= 0, got {idx.min()}")

        def convert(frame: av.VideoFrame) -> np.ndarray:
            rgb = self._to_rgb(frame, size)
            return rgb if transform is None else transform(rgb)

        if len(idx) == 0:
            self.clamped = idx
            w, h = size if size is not None else (self.width, self.height)
            shape = (h, w, 3) if transform is None else transform(np.zeros((h, w, 3), np.uint8)).shape
            return np.empty((0, *shape), dtype=np.uint8)
        deadline = self._deadline()  # one limit for the whole call, retries and fallbacks included
        while True:
            index = self.frame_index()
            frames = WantedFrames(np.minimum(idx, len(index.pts) - 1), convert)
            if not index.reliable:
                self._decode_sequential(frames, deadline)
                break
            if self._stream.codec_context.name in NONREF_SKIPPABLE:
                frames.keep = set(index.pts[frames.wanted].tolist())
            verdict = "ok"
            for run in seek_runs(index, frames.wanted, self._stream):
                if frames.next < run[1]:  # else the stream ended in an earlier run: all are filled
                    verdict = self._decode_seek(index, frames, run, deadline)
                if verdict != "ok":
                    break
            if verdict == "ok":
                break
            if index.approximate:  # the sample-table grid was wrong somewhere: demux for the exact index
                log.debug("%s: frames off the sample-table grid; demuxing for an exact index", self.path)
                self._index = self._build_index()
            else:  # timestamps cannot name frames after a seek in this file: count from the start from now on
                log.debug("%s: seeking is not exact here (%s); decoding from the start", self.path, verdict)
                self._index = replace(index, reliable=False)
        if frames.out is None:
            raise VideoDecodeError(
                f"{self.path}: no frame could be decoded; the file may be corrupt, re-encode it"
            )
        if frames.missing:
            warn(
                f"{self.path}: {len(frames.missing)} frame(s) did not decode (e.g. {frames.missing[0]}); "
                "using the nearest decoded frame"
            )
        n = len(self.frame_index().pts)
        self.clamped = np.unique(idx[idx >= n])
        if len(self.clamped):
            log.warning(
                "%s: %d of %d frame indices (%s) are past the end (the video has %d frames); they were "
                "clamped to its last frame, %d",
                self.path, int(np.sum(idx >= n)), len(idx), _ranges(self.clamped), n, n - 1,
            )  # fmt: skip
        return frames.out

    def _decode_seek(self, index: FrameIndex, frames: WantedFrames, run: tuple[int, int], deadline) -> str:
        """Seek to the keyframe at or before the run's first wanted frame and decode to its last one.

        Returns "ok", or why the frames cannot be trusted: "late" (the seek landed after the first wanted
        frame, or gave no frame; with an exact index, earlier keyframes are tried first), "unknown" (a
        timestamp not in the index), "moved" (the keyframe reached is not one of the index: timestamps
        differ after a seek), "unseekable" (the demuxer cannot seek).
        """
        first_pts = index.pts[frames.wanted[run[0]]]
        if index.key_pts is None:  # sample-table index: FFmpeg finds the keyframe at or before the target
            target = int(first_pts - index.dts_shift)
            starts = [(1 if target > index.pts[0] - index.dts_shift else 0, target)]
        else:
            k = int(np.searchsorted(index.key_pts, first_pts, side="right")) - 1
            # Intra refresh: frames after a recovery point only come out once the picture has recovered, so
            # a seek can land late; an earlier keyframe has recovered by then. Back off k-1, k-2, k-4, ... 0
            # (decoding from the start always works).
            back = sorted({k, *(k - 2**i for i in range(k.bit_length()) if k - 2**i > 0), 0}, reverse=True)
            starts = [(j, int(index.key_seek[j])) for j in back]
        for k, target in starts:
            frames.rewind(run[0])
            verdict = self._decode_from(index, k, target, frames, int(frames.wanted[run[1] - 1]), deadline)
            if verdict != "late":
                return verdict
        return "late"

    def _decode_from(
        self, index: FrameIndex, k: int, target: int, frames: WantedFrames, last: int, deadline
    ) -> str:
        # Seeking to the first frame is skipped: some demuxers land oddly on negative start timestamps.
        if k > 0:
            self._fresh = False
            try:
                self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            except av.error.FFmpegError as e:  # some demuxers cannot seek (raw streams)
                log.debug("%s: seek failed (%s)", self.path, reason(e))
                return "unseekable"
            keys = None if index.key_pts is None else index.key_set
        else:
            self._reopen()
            keys = None
        first = int(frames.wanted[frames.next])
        previous = None
        try:
            for frame in safe_decode(self._container, self._stream, self.path, frames.keep, keys):
                self._check(deadline)
                t = frame.pts if frame.pts is not None else frame.dts
                j = int(np.searchsorted(index.pts, t)) if t is not None else -1
                if t is None or j >= len(index.pts) or index.pts[j] != t:
                    log.debug("%s: frame with unknown timestamp %s", self.path, t)
                    return "unknown"
                if previous is not None and t <= previous:  # a damaged packet upset the decoder's reordering
                    frames.late(j, frame)  # this frame was missed when a later one came out: put it back
                    continue
                previous = t
                if frames.last is None and j > first and k > 0:
                    log.debug("%s: seek landed on frame %d after wanted %d", self.path, j, first)
                    return "late"
                frames.add(j, frame)
                if j >= last:
                    return "ok"
        except SeekMoved:
            return "moved"
        if frames.last is None and k > 0:
            return "late"
        frames.end()  # the stream ended before the last wanted frame: the real end is earlier
        return "ok"

    def _decode_sequential(self, frames: WantedFrames, deadline: float | None) -> None:
        """Decode from the start and name frames by their output position."""
        self._reopen()
        last = int(frames.wanted[-1])
        for j, frame in enumerate(safe_decode(self._container, self._stream, self.path)):
            self._check(deadline)
            frames.add(j, frame)
            if j >= last:
                return
        frames.end()

    def _reopen(self) -> None:
        """Be at the start of the file for decoding: open it again unless nothing was read yet (opening
        probes, which decodes a frame: a whole picture for an image file)."""
        if not self._fresh:
            self._container.close()
            self._container, self._stream = self._open()
        self._fresh = False

    def _to_rgb(self, frame: av.VideoFrame, size) -> np.ndarray:
        """One frame as uint8 (H, W, 3), resized by swscale if `size` is given, then made upright."""
        # the display matrix rides on every frame; the legacy tag only if FFmpeg did not convert it
        turns = _quarter_turns(frame.rotation) or (
            self.rotation // 90 if "rotate" in self._stream.metadata else 0
        )
        # One reformatter for the reader: it keeps its swscale context, where to_ndarray builds one per frame.
        if size is None and (frame.width, frame.height) == self._stored_size:
            rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        else:
            if size is None:
                w, h = self._stored_size
            else:
                w, h = size if turns % 2 == 0 else size[::-1]  # resize before turning the picture
            rgb = self._reformatter.reformat(frame, format="rgb24", width=w, height=h).to_ndarray()
        return np.rot90(rgb, turns) if turns else rgb

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _check(self, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise VideoTimeoutError(
                f"{self.path}: reading took longer than {self.timeout:g} s; re-encode the file or raise the time limit"
            )


def _quarter_turns(degrees: float | None) -> int:
    return round((degrees or 0) / 90) % 4


def _ranges(values: np.ndarray, most: int = 3) -> str:
    """Sorted distinct ints as "3, 7-9, 12" (at most `most` ranges, then "...")."""
    cuts = np.flatnonzero(np.diff(values) != 1) + 1
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in np.split(values, cuts)]
    return ", ".join(parts[:most]) + (", ..." if len(parts) > most else "")
