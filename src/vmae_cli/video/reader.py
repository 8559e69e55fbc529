"""VideoReader: PyAV decoding that touches only the frames a clip needs, with exact seeking.

Frame index i is the i-th frame in presentation order. The reader builds that mapping by demuxing
the video stream once without decoding (packet timestamps, sorted): milliseconds even for long
files, exact for variable frame rates, and it counts what is really there rather than what the
header claims. `get_frames` then seeks to the keyframe before the first wanted frame, decodes in
order, names each decoded frame by its timestamp, and stops after the last wanted one. A seek is
trusted only if it lands on a keyframe of the index, at or before the first wanted frame; one that
lands late (intra refresh) retries from an earlier keyframe. Timestamps that are missing or
ambiguous (raw streams, AVI with B-frames), or that change after a seek (MPEG-PS), make it decode
from the start and name frames by counting. Wanted frames far apart are read in runs: the reader seeks
again wherever the keyframe before the next wanted frame lies more than SEEK_SKIP frames ahead, so any set
of frames costs at most about one GOP of decoding per run, never the frames between runs.

Frames are limited to MAX_PIXELS (8192 x 8192): FFmpeg itself refuses to allocate a larger picture (its
`max_pixels` option, set for probing and decoding), so a small file that claims a huge picture (a PNG of
16000 x 16000 renamed .mp4) cannot take gigabytes, and the reader says so in one line.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property

import av
import numpy as np

from ..errors import VmaeError

log = logging.getLogger(__name__)

# The largest picture the reader decodes: twice 8K UHD (33 MP), 8192 x 8192 square. A decoded frame of this
# size takes 100 MB in 8-bit YUV 4:2:0, 200 MB as RGB, 512 MB in 16-bit RGBA (1 GB in float RGBA: EXR).
MAX_PIXELS = 2**26
# Wanted frames closer than this are decoded through, not sought: a seek flushes and refills the decoder,
# which costs more than a few frames (a 16x4 window at the end of a 1080p H.264 clip with a keyframe every
# 12 frames: 0.33 s decoded through, 0.45 s seeking at each keyframe, 2-core CPU). A 16x4 window never seeks
# inside itself.
SEEK_SKIP = 16


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


@dataclass(frozen=True)
class FrameIndex:
    """Timestamps of every packet of the video stream, in presentation order."""

    pts: np.ndarray  # int64 (N,), stream time_base, sorted
    key_pts: np.ndarray  # int64 (K,), pts of keyframes, sorted
    key_seek: np.ndarray  # int64 (K,), timestamp to seek to for each keyframe: min(pts, dts)
    reliable: bool  # False: timestamps missing, repeated or not trustworthy: frames are named by counting
    # True: from the mp4 sample table on a constant-rate grid, checked frame by frame while decoding
    approximate: bool = False
    dts_shift: int = 0  # pts - dts of the first frame (approximate index: to seek in the dts domain)

    @cached_property
    def key_set(self) -> frozenset[int]:
        """key_pts as a set (what a seek must land on), built once: a call may seek many times."""
        return frozenset(self.key_pts.tolist())


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
            raise _path_error(self.path, e) from e
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
        # max_pixels reaches the decoders that probing runs (a PNG is decoded to learn its format)
        limit = {"max_pixels": str(self.max_pixels)}
        with _ffmpeg_error() as ffmpeg_error:
            try:
                container = av.open(self.path, options=limit, timeout=self.timeout)
            except av.error.ExitError as e:  # FFmpeg's interrupt callback fired: the open timeout
                raise VideoTimeoutError(
                    f"{self.path}: opening took longer than {self.timeout:g} s; check the file or raise the time limit"
                ) from e
            except av.error.PermissionError as e:
                raise VideoPermissionError(
                    f"{self.path}: permission denied; check the file's permissions"
                ) from e
            except av.error.FFmpegError as e:
                self._check_size(ffmpeg_error())
                raise VideoDecodeError(
                    f"{self.path}: not a readable video ({ffmpeg_error() or _reason(e)}); "
                    "check the file or re-encode it"
                ) from e
        try:
            return self._video_stream(container, ffmpeg_error(), limit)
        except BaseException:
            container.close()
            raise

    def _check_size(self, ffmpeg_error: str | None, width: int = 0, height: int = 0) -> None:
        """Raise FrameTooLargeError for a picture over the limit: from the header's size, else, where that is
        unknown (0 x 0: the probe hit max_pixels, or opening failed), from FFmpeg's refusal to allocate one.
        A refusal with a size known is another stream's (huge cover art beside the video): not this one's."""
        found = re.search(r"Picture size (\d+)x(\d+)", ffmpeg_error or "")
        if width * height == 0 and found:
            width, height = int(found[1]), int(found[2])
        if width * height > self.max_pixels:
            raise FrameTooLargeError(self.path, width, height, self.max_pixels)

    def _video_stream(self, container, ffmpeg_error: str | None, limit: dict) -> tuple:
        """The container's first decodable video stream, set up for decoding (the caller closes the container
        if this raises)."""
        if container.format.name == "tty":  # FFmpeg reads any text file as an "ANSI art" video
            raise VideoDecodeError(f"{self.path}: a text file, not a video; pass a video file")
        if not any(s.type in ("video", "audio", "subtitle") for s in container.streams):
            # nothing, or only data streams of unknown codec: a header cut short, or not media
            raise VideoDecodeError(
                f"{self.path}: no audio or video stream found; the file is truncated or not a video, "
                "re-copy or re-encode it"
            )
        # cover art (an attached picture) is a one-frame "video" stream in audio files: not a video
        attached = av.stream.Disposition.attached_pic
        videos = [s for s in container.streams.video if not s.disposition & attached]
        if not videos:
            raise NoVideoStreamError(
                f"{self.path}: no video stream (audio, cover art or data only); pass a video file"
            )
        decodable = [s for s in videos if s.codec_context is not None]
        if not decodable:
            raise VideoDecodeError(
                f"{self.path}: the video stream cannot be decoded (unsupported codec or damaged header); "
                "re-encode it"
            )
        stream = decodable[0]
        cc = stream.codec_context
        self._check_size(ffmpeg_error, cc.width, cc.height)
        cc.options = limit  # FFmpeg refuses larger pictures while decoding too (a stream that changes size)
        # Frame threads pay off on large pictures (PyAV#1980); on tiny ones their hand-off costs more
        # than the decoding, so those keep slice threads.
        stream.thread_type = "AUTO" if cc.width * cc.height >= 320 * 240 else "SLICE"
        cc.thread_count = self.threads
        return container, stream

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
                    for frame in _safe_decode(container, stream, self.path):
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
        """Fast path for constant-rate MP4/MOV: the demuxer's sample table already lists every frame.

        Its timestamps are decode times; evenly spaced ones mean presentation times on the same grid,
        starting at the first frame's pts. `get_frames` checks every decoded frame against the grid
        and rebuilds the index by demuxing if one is off.
        """
        if not {"mov", "mp4"} & set(self._container.format.name.split(",")):
            return None
        entries = self._stream.index_entries
        n = len(entries)
        if n < 2 or n != self._stream.frames:
            return None
        # Reading every entry costs ~1 us each in Python (15,000 for ten minutes at 25 fps): check the grid on
        # 65 evenly spaced entries instead; every decoded frame is checked against it as well.
        d0 = entries[0].timestamp
        step = entries[1].timestamp - d0
        probes = np.unique(np.linspace(0, n - 1, num=min(n, 65)).astype(np.int64)).tolist()
        if step <= 0 or any(entries[i].timestamp != d0 + i * step for i in probes):
            return None
        # An edit list that starts after the first sample (a file cut without re-encoding) hides the frames
        # before it: FFmpeg keeps them, flagged discard, to decode from their keyframe. They sit at the start.
        if any(entries[i].is_discard for i in [*range(min(n, 64)), *probes]):
            return None
        # A file cut short after a leading moov still lists every sample: check the table against the size.
        size = os.path.getsize(self.path)
        if any(entries[i].pos + entries[i].size > size for i in probes):
            return None
        container, stream = self._open()
        try:  # reordering is bounded, so the first pts is among the first few packets
            first = [
                p.pts for _, p in zip(range(32), container.demux(stream), strict=False) if p.pts is not None
            ]
        finally:
            container.close()
        if not first:
            return None
        pts0 = min(first)
        # Keyframes are left to FFmpeg's own sample-table seek (key_pts None): see _decode_seek.
        return FrameIndex(pts0 + np.arange(n, dtype=np.int64) * step, None, None, True, True, pts0 - d0)

    def _build_index(self) -> FrameIndex:
        deadline = self._deadline()
        container, stream = self._open()
        ts, keys, seeks = [], [], []
        offsets = set()  # pts - dts of every packet
        reliable = True
        try:
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:  # truncated tail: keep what came before
                    _warn(f"{self.path}: stopped reading packets ({_reason(e)}); using the first {len(ts)}")
                    break
                if packet.size == 0:
                    continue
                if len(ts) % 512 == 0:
                    self._check(deadline)
                t = packet.pts if packet.pts is not None else packet.dts
                if packet.is_discard:  # before an MP4 edit list's start: decoded as a reference, never shown
                    if packet.is_keyframe and t is not None:  # still where decoding the first frames starts
                        keys.append(t)
                        seeks.append(min(t, packet.dts) if packet.dts is not None else t)
                    continue
                if t is None:
                    reliable = False
                    t = len(ts)
                elif packet.dts is not None:
                    offsets.add(t - packet.dts)
                ts.append(t)
                if packet.is_keyframe:
                    keys.append(t)
                    seeks.append(min(t, packet.dts) if packet.dts is not None else t)
        finally:
            container.close()
        if not ts:
            raise EmptyVideoError(f"{self.path}: the video stream has no frames; check or re-encode the file")
        pts = np.asarray(ts, dtype=np.int64)
        order = np.argsort(pts, kind="stable")
        pts = pts[order]
        if reliable and np.any(np.diff(pts) == 0):
            reliable = False
        # AVI stores no presentation times: FFmpeg derives them from decode order, so in a stream that
        # reorders frames (B-frames) every pts is dts plus a constant and names the wrong frame.
        if reliable and "avi" in self._container.format.name.split(",") and len(offsets) == 1:
            reliable = not self._stream.codec_context.has_b_frames
        if not keys or keys[0] > pts[0]:
            keys, seeks = [int(pts[0])] + keys, [int(pts[0])] + seeks  # decoding from the start always works
        key_order = np.argsort(keys, kind="stable")
        return FrameIndex(
            pts, np.asarray(keys, np.int64)[key_order], np.asarray(seeks, np.int64)[key_order], reliable
        )

    # -- frames ----------------------------------------------------------------------------------
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
            frames = _Frames(np.minimum(idx, len(index.pts) - 1), convert)
            if not index.reliable:
                self._decode_sequential(frames, deadline)
                break
            if self._stream.codec_context.name in NONREF_SKIPPABLE:
                frames.keep = set(index.pts[frames.wanted].tolist())
            verdict = "ok"
            for run in self._runs(index, frames.wanted):
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
            _warn(
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

    def _runs(self, index: FrameIndex, wanted: np.ndarray) -> list[tuple[int, int]]:
        """Split the wanted frames (sorted, distinct) into runs wanted[a:b], each read after a seek of its own.

        A run ends where the keyframe at or before the next wanted frame lies more than SEEK_SKIP frames
        after the current one: seeking there skips the frames between instead of decoding them, so a run
        costs at most about one GOP of decoding before its first frame.
        """
        if index.key_pts is not None:
            # the keyframe at or before each next wanted frame, against the frame SEEK_SKIP after each one
            keys = index.key_pts[np.searchsorted(index.key_pts, index.pts[wanted[1:]], side="right") - 1]
            split = keys > index.pts[np.minimum(wanted[:-1] + SEEK_SKIP, len(index.pts) - 1)]
        else:  # sample-table index: FFmpeg's own keyframe search over the table, as the seek itself does
            entries = self._stream.index_entries
            target = index.pts[wanted] - index.dts_shift  # what _decode_seek seeks to, in decode time
            step = int(index.pts[1] - index.pts[0])
            split = np.zeros(len(wanted) - 1, dtype=bool)
            for i in np.flatnonzero(np.diff(wanted) > SEEK_SKIP).tolist():
                k = entries.search_timestamp(int(target[i + 1]), backward=True)
                split[i] = k >= 0 and entries[k].timestamp > target[i] + SEEK_SKIP * step
        starts = [0, *(np.flatnonzero(split) + 1).tolist()]
        return list(zip(starts, [*starts[1:], len(wanted)], strict=True))

    def _decode_seek(self, index: FrameIndex, frames: _Frames, run: tuple[int, int], deadline) -> str:
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
        self, index: FrameIndex, k: int, target: int, frames: _Frames, last: int, deadline
    ) -> str:
        # Seeking to the first frame is skipped: some demuxers land oddly on negative start timestamps.
        if k > 0:
            self._fresh = False
            try:
                self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            except av.error.FFmpegError as e:  # some demuxers cannot seek (raw streams)
                log.debug("%s: seek failed (%s)", self.path, _reason(e))
                return "unseekable"
            keys = None if index.key_pts is None else index.key_set
        else:
            self._reopen()
            keys = None
        first = int(frames.wanted[frames.next])
        previous = None
        try:
            for frame in _safe_decode(self._container, self._stream, self.path, frames.keep, keys):
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
        except _SeekMoved:
            return "moved"
        if frames.last is None and k > 0:
            return "late"
        frames.end()  # the stream ended before the last wanted frame: the real end is earlier
        return "ok"

    def _decode_sequential(self, frames: _Frames, deadline: float | None) -> None:
        """Decode from the start and name frames by their output position."""
        self._reopen()
        last = int(frames.wanted[-1])
        for j, frame in enumerate(_safe_decode(self._container, self._stream, self.path)):
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


# Codecs whose non-reference frames nothing else is predicted from (H.264's nal_ref_idc = 0, MPEG-1/2
# B-frames) and whose packets hold one frame each, so that a packet's pts names its frame. Left out: HEVC
# (its sub-layer non-reference pictures can still be references for higher temporal layers) and MPEG-4
# part 2 (AVI's packed B-frames put two frames in one packet).
NONREF_SKIPPABLE = frozenset({"h264", "mpeg2video", "mpeg1video"})


class _Frames:
    """Where decoded frames go: each wanted frame is converted once and copied to every position wanting it.

    Frames arrive in presentation order, named by index, in runs (one per seek) that each start afresh. A
    wanted frame that never comes out (its packet is damaged) takes the nearest earlier frame of its run
    that did, else the first one after it.
    """

    def __init__(self, idx: np.ndarray, convert) -> None:
        self.size = len(idx)
        self.convert = convert
        self.positions: dict[int, list[int]] = {}
        for pos, j in enumerate(idx.tolist()):
            self.positions.setdefault(j, []).append(pos)
        self.wanted = np.fromiter(sorted(self.positions), np.int64)
        self.keep: set[int] | None = None  # pts of the wanted frames, where unwanted non-reference ones skip
        self.out: np.ndarray | None = None  # allocated from the first converted frame
        self.missing: list[int] = []
        self.rewind(0)

    def rewind(self, start: int) -> None:
        """(Re)start a run at wanted[start], forgetting what an earlier try of this run decoded."""
        self.next = start  # self.wanted[self.next] is the next wanted frame not yet seen
        self.last: av.VideoFrame | None = None  # the latest decoded frame of this run, wanted or not
        first = self.wanted[start] if start < len(self.wanted) else np.iinfo(np.int64).max
        self.missing = [j for j in self.missing if j < first]
        self._converted: tuple[av.VideoFrame, np.ndarray] | None = None

    def add(self, j: int, frame: av.VideoFrame) -> None:
        wanted = self.wanted
        while self.next < len(wanted) and wanted[self.next] < j:  # skipped over: those did not decode
            self._missed(int(wanted[self.next]), self.last if self.last is not None else frame)
        if self.next < len(wanted) and wanted[self.next] == j:
            self._put(j, frame)
            self.next += 1
        self.last = frame

    def late(self, j: int, frame: av.VideoFrame) -> None:
        """A frame that came out after a later one (damaged streams): it replaces its stand-in, if any."""
        if j in self.missing:
            self.missing.remove(j)
            self._put(j, frame)

    def end(self) -> None:
        """The stream ended: wanted frames after the last decoded one take it."""
        while self.last is not None and self.next < len(self.wanted):
            self._missed(int(self.wanted[self.next]), self.last)

    def _missed(self, j: int, frame: av.VideoFrame) -> None:
        self.missing.append(j)
        self._put(j, frame)
        self.next += 1

    def _put(self, j: int, frame: av.VideoFrame) -> None:
        if self._converted is not None and self._converted[0] is frame:
            rgb = self._converted[1]
        else:
            rgb = self.convert(frame)
            self._converted = (frame, rgb)
        if self.out is None:
            self.out = np.empty((self.size, *rgb.shape), dtype=np.uint8)
        for pos in self.positions[j]:  # plain slice copies: fancy-index assignment is far slower
            self.out[pos] = rgb


class _SeekMoved(Exception):
    """After a seek, the first keyframe's timestamp is not one the index knows."""


def _safe_decode(container, stream, path: str, keep: set[int] | None = None, keys: set[int] | None = None):
    """Decoded frames of `stream`, skipping (with a warning) packets that fail to decode.

    `keep` (a set of pts): frames with other timestamps are decoded only if other frames are predicted from
    them; non-reference frames (most B-frames) that nobody wants are skipped. Frame threads read the setting
    as each packet is submitted.
    `keys` (a set of pts, after a seek): packets before the first keyframe are dropped (nothing decodes
    right from them), and that keyframe must have one of these timestamps, else `_SeekMoved` is raised:
    demuxers that interpolate timestamps (MPEG-PS) can name the same frame differently after a seek.
    """
    packets = container.demux(stream)
    cc = stream.codec_context
    skipping = False
    failures = 0
    try:
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # unreadable tail: flush what the decoder holds and stop
                _warn(f"{path}: stopped reading ({_reason(e)}); later frames are unavailable")
                try:
                    yield from cc.decode(None)
                except av.error.FFmpegError:
                    pass
                return
            if keys is not None and packet.size:
                if not packet.is_keyframe:
                    continue
                if packet.pts not in keys:
                    raise _SeekMoved(packet.pts)
                keys = None
            if keep is not None:
                skip = packet.pts is not None and packet.pts not in keep
                if skip != skipping:
                    cc.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
            try:
                yield from packet.decode()
            except av.error.FFmpegError as e:
                failures += 1
                if failures == 1:
                    _warn(f"{path}: skipped a corrupt packet at pts {packet.pts} ({_reason(e)})")
                if failures > 1000:
                    raise VideoDecodeError(
                        f"{path}: too many corrupt packets; the file is damaged, re-encode it"
                    ) from e
    finally:
        if skipping:  # the reader decodes again later: leave the decoder as found
            cc.skip_frame = "DEFAULT"


@contextmanager
def _ffmpeg_error():
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


def _path_error(path: str, e: OSError) -> VideoError:
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


def _quarter_turns(degrees: float | None) -> int:
    return round((degrees or 0) / 90) % 4


def _ranges(values: np.ndarray, most: int = 3) -> str:
    """Sorted distinct ints as "3, 7-9, 12" (at most `most` ranges, then "...")."""
    cuts = np.flatnonzero(np.diff(values) != 1) + 1
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in np.split(values, cuts)]
    return ", ".join(parts[:most]) + (", ..." if len(parts) > most else "")


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
