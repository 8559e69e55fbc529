"""VideoReader: PyAV decoding that touches only the frames a clip needs, with exact seeking.

Frame index i is the i-th frame in presentation order. The reader builds that mapping by demuxing
the video stream once without decoding (packet timestamps, sorted): milliseconds even for long
files, exact for variable frame rates, and it counts what is really there rather than what the
header claims. `get_frames` then seeks to the keyframe before the first wanted frame, decodes in
order, names each decoded frame by its timestamp, and stops after the last wanted one. If
timestamps are missing or ambiguous (some AVI/raw streams), or a seek lands after the wanted
frame, it falls back to decoding from the start and counting.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass

import av
import numpy as np

from .errors import VmaeError

log = logging.getLogger(__name__)


class VideoError(VmaeError):
    """A file that cannot be used as a video."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist or is not a file."""


class NoVideoStreamError(VideoError):
    """The file opens but holds no video stream (audio only, subtitles...)."""


class VideoDecodeError(VideoError):
    """The file is not a readable video, or no frame of it decodes."""


class VideoTimeoutError(VideoDecodeError):
    """Reading took longer than the per-file time limit."""


class EmptyVideoError(VideoError):
    """The file is empty or its video stream has no frames."""


@dataclass(frozen=True)
class FrameIndex:
    """Timestamps of every packet of the video stream, in presentation order."""

    pts: np.ndarray  # int64 (N,), stream time_base, sorted
    key_pts: np.ndarray  # int64 (K,), pts of keyframes, sorted
    key_seek: np.ndarray  # int64 (K,), timestamp to seek to for each keyframe: min(pts, dts)
    reliable: bool  # False: timestamps missing or repeated, so frames are named by counting
    # True: from the mp4 sample table on a constant-rate grid, checked frame by frame while decoding
    approximate: bool = False
    dts_shift: int = 0  # pts - dts of the first frame (approximate index: to seek in the dts domain)


class VideoReader:
    """Random access to the frames of one video file.

    Args:
        path: a local video file.
        threads: decoder threads; 0 lets FFmpeg choose.
        timeout: seconds one operation (open, index, one `get_frames`) may take; None: no limit.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0, timeout: float | None = 120.0):
        self.path = os.fspath(path)
        self.threads = threads
        self.timeout = timeout
        self._index: FrameIndex | None = None
        self._rotation: int | None = None
        if not os.path.exists(self.path):
            raise VideoNotFoundError(f"{self.path}: no such file; check the path")
        if not os.path.isfile(self.path):
            raise VideoNotFoundError(f"{self.path}: not a file; pass a video file")
        if os.path.getsize(self.path) == 0:
            raise EmptyVideoError(f"{self.path}: the file is empty (0 bytes); re-copy or re-encode it")
        self._container, self._stream = self._open()
        self._reformatter = av.video.reformatter.VideoReformatter()

    # -- lifecycle -------------------------------------------------------------------------------
    def _open(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        try:
            container = av.open(self.path, timeout=self.timeout)
        except av.error.ExitError as e:  # FFmpeg's interrupt callback fired: the open timeout
            raise VideoTimeoutError(
                f"{self.path}: opening took longer than {self.timeout:g} s; check the file or raise the time limit"
            ) from e
        except av.error.FFmpegError as e:
            raise VideoDecodeError(
                f"{self.path}: not a readable video ({_reason(e)}); check the file or re-encode it"
            ) from e
        if container.format.name == "tty":  # FFmpeg reads any text file as an "ANSI art" video
            container.close()
            raise VideoDecodeError(f"{self.path}: a text file, not a video; pass a video file")
        if not container.streams.video:
            container.close()
            raise NoVideoStreamError(f"{self.path}: no video stream (audio or data only); pass a video file")
        stream = container.streams.video[0]
        # Frame threads pay off on large pictures (PyAV#1980); on tiny ones their hand-off costs more
        # than the decoding, so those keep slice threads.
        cc = stream.codec_context
        stream.thread_type = "AUTO" if cc.width * cc.height >= 320 * 240 else "SLICE"
        stream.codec_context.thread_count = self.threads
        return container, stream

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({self.path!r}, {self.width}x{self.height}, {self.num_frames} frames @ {self.fps:.3f})"

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
        """Seconds, from the stream header, else the container, else the frame timestamps."""
        s = self._stream
        if s.duration and s.time_base:
            return float(s.duration * s.time_base)
        if self._container.duration:
            return self._container.duration / av.time_base
        return self.count_frames() / self.fps

    @property
    def num_frames(self) -> int:
        """The exact count once known, else the header value if it agrees with duration x fps."""
        if self._index is not None:
            return len(self._index.pts)
        header = self._stream.frames
        s = self._stream
        has_duration = bool((s.duration and s.time_base) or self._container.duration)
        if not has_duration:
            return header if header > 0 else self.count_frames()
        estimate = round(self.duration * self.fps)
        if header > 0 and abs(header - estimate) <= max(2, 0.05 * header):
            return header
        return max(estimate, 1)

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
        cc = self._stream.codec_context
        return cc.height if self.rotation in (90, 270) else cc.width

    @property
    def height(self) -> int:
        cc = self._stream.codec_context
        return cc.width if self.rotation in (90, 270) else cc.height

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
        probes = np.unique(np.linspace(0, n - 1, num=min(n, 65)).astype(np.int64))
        if step <= 0 or any(entries[int(i)].timestamp != d0 + int(i) * step for i in probes):
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
                if t is None:
                    reliable = False
                    t = len(ts)
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
        if not keys or keys[0] != pts[0]:
            keys, seeks = [int(pts[0])] + keys, [int(pts[0])] + seeks  # decoding from the start always works
        key_order = np.argsort(keys, kind="stable")
        return FrameIndex(
            pts, np.asarray(keys, np.int64)[key_order], np.asarray(seeks, np.int64)[key_order], reliable
        )

    # -- frames ----------------------------------------------------------------------------------
    def get_frames(self, indices, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frames by index, decoded in one pass.

        Args:
            indices: int array-like (N,), any order, repeats allowed; indices past the real end are
                clamped to the last frame.
            size: optional (width, height) of the output as displayed; swscale resizes during the
                colour conversion (fast path; not bit-equal to the Preprocessor's resize).
        Returns:
            uint8 (N, H, W, 3) RGB, upright (rotation applied).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if np.any(idx < 0):
            raise ValueError(f"frame indices must be >= 0, got {idx.min()}")
        if len(idx) == 0:
            w, h = size if size is not None else (self.width, self.height)
            return np.empty((0, h, w, 3), dtype=np.uint8)
        out = None  # allocated from the first converted frame, so rotation needs no extra probe
        index = self.frame_index()
        idx = np.minimum(idx, len(index.pts) - 1)
        positions: dict[int, list[int]] = {}
        for pos, j in enumerate(idx.tolist()):
            positions.setdefault(j, []).append(pos)

        def sink(j: int, frame: av.VideoFrame) -> None:  # convert once, write to every position wanting it
            nonlocal out
            rgb = self._to_rgb(frame, size)
            if out is None:
                out = np.empty((len(idx), *rgb.shape), dtype=np.uint8)
            for pos in positions[j]:  # plain slice copies: fancy-index assignment is far slower
                out[pos] = rgb

        wanted = np.fromiter(sorted(positions), np.int64)
        decoded = self._decode_seek(index, wanted, sink) if index.reliable else None
        if decoded is None and index.approximate:
            log.debug("%s: frames off the sample-table grid; demuxing for an exact index", self.path)
            self._index = index = self._build_index()
            return self.get_frames(indices, size)
        if decoded is None:
            decoded = self._decode_sequential(wanted, sink)
        if not decoded or out is None:
            raise VideoDecodeError(
                f"{self.path}: no frame could be decoded; the file may be corrupt, re-encode it"
            )
        missing = [j for j in wanted.tolist() if j not in decoded]
        if missing:
            _warn(
                f"{self.path}: {len(missing)} frame(s) did not decode (e.g. {missing[0]}); using the nearest decoded frame"
            )
            got = np.fromiter(sorted(decoded), np.int64)
            for j in missing:  # nearest earlier decoded frame, else the first one after
                k = int(got[max(int(np.searchsorted(got, j)) - 1, 0)])
                out[positions[j]] = out[positions[k][0]]
        return out

    def _decode_seek(self, index: FrameIndex, wanted: np.ndarray, sink) -> set[int] | None:
        """Seek to the keyframe at or before the first wanted frame; None if the seek was not exact."""
        deadline = self._deadline()
        first_pts = index.pts[wanted[0]]
        if index.key_pts is None:  # sample-table index: FFmpeg finds the keyframe at or before the target
            target = int(first_pts - index.dts_shift)
            k = 1 if target > index.pts[0] - index.dts_shift else 0
        else:
            k = int(np.searchsorted(index.key_pts, first_pts, side="right")) - 1
            target = int(index.key_seek[k])
        # Seeking to the first frame is skipped: some demuxers land oddly on negative start timestamps.
        if k > 0:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        else:
            self._container.close()
            self._container, self._stream = self._open()
        want, last = set(wanted.tolist()), int(wanted[-1])
        decoded: set[int] = set()
        first = True
        keep = (
            {int(index.pts[j]) for j in want} if self._stream.codec_context.name in NONREF_SKIPPABLE else None
        )
        for frame in _safe_decode(self._container, self._stream, self.path, keep):
            self._check(deadline)
            t = frame.pts if frame.pts is not None else frame.dts
            j = int(np.searchsorted(index.pts, t)) if t is not None else -1
            if t is None or j >= len(index.pts) or index.pts[j] != t:
                log.debug("%s: frame with unknown timestamp %s; decoding from the start", self.path, t)
                return None
            if first and j > wanted[0]:
                log.debug(
                    "%s: seek landed on frame %d after wanted %d; decoding from the start",
                    self.path,
                    j,
                    wanted[0],
                )
                return None
            first = False
            if j in want:
                sink(j, frame)
                decoded.add(j)
            if j >= last:
                break
        return decoded

    def _decode_sequential(self, wanted: np.ndarray, sink) -> set[int]:
        """Decode from the start and name frames by their output position."""
        deadline = self._deadline()
        self._container.close()
        self._container, self._stream = self._open()
        want, last = set(wanted.tolist()), int(wanted[-1])
        decoded: set[int] = set()
        for j, frame in enumerate(_safe_decode(self._container, self._stream, self.path)):
            self._check(deadline)
            if j in want:
                sink(j, frame)
                decoded.add(j)
            if j >= last:
                break
        return decoded

    def _to_rgb(self, frame: av.VideoFrame, size) -> np.ndarray:
        """One frame as uint8 (H, W, 3), resized by swscale if `size` is given, then made upright."""
        # the display matrix rides on every frame; the legacy tag only if FFmpeg did not convert it
        turns = _quarter_turns(frame.rotation) or (
            self.rotation // 90 if "rotate" in self._stream.metadata else 0
        )
        # One reformatter for the reader: it keeps its swscale context, where to_ndarray builds one per frame.
        if size is None:
            rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
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


def _safe_decode(container, stream, path: str, keep: set[int] | None = None):
    """Decoded frames of `stream`, skipping (with a warning) packets that fail to decode.

    `keep` (a set of pts): frames with other timestamps are decoded only if other frames are predicted from
    them; non-reference frames (most B-frames) that nobody wants are skipped. Frame threads read the setting
    as each packet is submitted.
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


def _quarter_turns(degrees: float | None) -> int:
    return round((degrees or 0) / 90) % 4


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
