"""What VideoReader stands on: opening a file's video stream, the frame index, and the decoding loop.

`open_video` opens a file under the pixel limit and picks its first decodable video stream, or raises the
VideoError that says why not. Frame index i is the i-th frame in presentation order: the index is read from
an MP4's sample table where that lists a constant-rate grid (`sample_table_index`), else by demuxing the
stream once without decoding (`demux_index`): milliseconds even for long files, exact for variable frame
rates, and it counts what is really there rather than what the header claims. `seek_runs` splits the wanted
frames into runs that each start with a seek of their own (wherever the keyframe before the next wanted
frame lies more than SEEK_SKIP frames ahead); `safe_decode` decodes, skipping damaged packets, and
`WantedFrames` gathers what it yields.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import av
import numpy as np

from .errors import (
    EmptyVideoError,
    FrameTooLargeError,
    NoVideoStreamError,
    VideoDecodeError,
    VideoPermissionError,
    VideoTimeoutError,
    ffmpeg_error,
    reason,
    warn,
)

# Wanted frames closer than this are decoded through, not sought: a seek flushes and refills the decoder,
# which costs more than a few frames (a 16x4 window at the end of a 1080p H.264 clip with a keyframe every
# 12 frames: 0.33 s decoded through, 0.45 s seeking at each keyframe, 2-core CPU). A 16x4 window never seeks
# inside itself.
SEEK_SKIP = 16


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


def open_video(
    path: str, *, max_pixels: int, timeout: float | None, threads: int
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and set up its first decodable video stream (threads, the pixel limit), or raise the
    VideoError that says why not. Frames over `max_pixels` raise FrameTooLargeError; FFmpeg refuses to
    allocate them too (its `max_pixels` option, set for probing and decoding)."""
    # max_pixels reaches the decoders that probing runs (a PNG is decoded to learn its format)
    limit = {"max_pixels": str(max_pixels)}
    with ffmpeg_error() as last_error:
        try:
            container = av.open(path, options=limit, timeout=timeout)
        except av.error.ExitError as e:  # FFmpeg's interrupt callback fired: the open timeout
            raise VideoTimeoutError(
                f"{path}: opening took longer than {timeout:g} s; check the file or raise the time limit"
            ) from e
        except av.error.PermissionError as e:
            raise VideoPermissionError(f"{path}: permission denied; check the file's permissions") from e
        except av.error.FFmpegError as e:
            _check_size(path, max_pixels, last_error())
            raise VideoDecodeError(
                f"{path}: not a readable video ({last_error() or reason(e)}); check the file or re-encode it"
            ) from e
    try:
        return _video_stream(path, container, last_error(), limit, max_pixels, threads)
    except BaseException:
        container.close()
        raise


def _check_size(
    path: str, max_pixels: int, ffmpeg_error: str | None, width: int = 0, height: int = 0
) -> None:
    """Raise FrameTooLargeError for a picture over the limit: from the header's size, else, where that is
    unknown (0 x 0: the probe hit max_pixels, or opening failed), from FFmpeg's refusal to allocate one.
    A refusal with a size known is another stream's (huge cover art beside the video): not this one's."""
    found = re.search(r"Picture size (\d+)x(\d+)", ffmpeg_error or "")
    if width * height == 0 and found:
        width, height = int(found[1]), int(found[2])
    if width * height > max_pixels:
        raise FrameTooLargeError(path, width, height, max_pixels)


def _video_stream(
    path: str, container, ffmpeg_error: str | None, limit: dict, max_pixels: int, threads: int
) -> tuple:
    """The container's first decodable video stream, set up for decoding (the caller closes the container
    if this raises)."""
    if container.format.name == "tty":  # FFmpeg reads any text file as an "ANSI art" video
        raise VideoDecodeError(f"{path}: a text file, not a video; pass a video file")
    if not any(s.type in ("video", "audio", "subtitle") for s in container.streams):
        # nothing, or only data streams of unknown codec: a header cut short, or not media
        raise VideoDecodeError(
            f"{path}: no audio or video stream found; the file is truncated or not a video, "
            "re-copy or re-encode it"
        )
    # cover art (an attached picture) is a one-frame "video" stream in audio files: not a video
    attached = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not s.disposition & attached]
    if not videos:
        raise NoVideoStreamError(
            f"{path}: no video stream (audio, cover art or data only); pass a video file"
        )
    decodable = [s for s in videos if s.codec_context is not None]
    if not decodable:
        raise VideoDecodeError(
            f"{path}: the video stream cannot be decoded (unsupported codec or damaged header); re-encode it"
        )
    stream = decodable[0]
    cc = stream.codec_context
    _check_size(path, max_pixels, ffmpeg_error, cc.width, cc.height)
    cc.options = limit  # FFmpeg refuses larger pictures while decoding too (a stream that changes size)
    # Frame threads pay off on large pictures (PyAV#1980); on tiny ones their hand-off costs more
    # than the decoding, so those keep slice threads.
    stream.thread_type = "AUTO" if cc.width * cc.height >= 320 * 240 else "SLICE"
    cc.thread_count = threads
    return container, stream


def sample_table_index(path: str, container, stream, reopen: Callable[[], tuple]) -> FrameIndex | None:
    """Fast path for constant-rate MP4/MOV: the demuxer's sample table already lists every frame.

    Its timestamps are decode times; evenly spaced ones mean presentation times on the same grid,
    starting at the first frame's pts. `get_frames` checks every decoded frame against the grid
    and rebuilds the index by demuxing if one is off. `reopen` opens the file afresh: (container, stream).
    """
    if not {"mov", "mp4"} & set(container.format.name.split(",")):
        return None
    entries = stream.index_entries
    n = len(entries)
    if n < 2 or n != stream.frames:
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
    size = os.path.getsize(path)
    if any(entries[i].pos + entries[i].size > size for i in probes):
        return None
    container, stream = reopen()
    try:  # reordering is bounded, so the first pts is among the first few packets
        first = [p.pts for _, p in zip(range(32), container.demux(stream), strict=False) if p.pts is not None]
    finally:
        container.close()
    if not first:
        return None
    pts0 = min(first)
    # Keyframes are left to FFmpeg's own sample-table seek (key_pts None): see VideoReader._decode_seek.
    return FrameIndex(pts0 + np.arange(n, dtype=np.int64) * step, None, None, True, True, pts0 - d0)


def demux_index(path: str, container, stream, check: Callable[[], None], avi_b_frames: bool) -> FrameIndex:
    """Demux every packet of `stream` once (no decoding) and keep their timestamps; closes `container`.

    `check` raises once the time limit is over; `avi_b_frames`: an AVI whose stream reorders frames, where
    FFmpeg derives every pts from decode order.
    """
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
                warn(f"{path}: stopped reading packets ({reason(e)}); using the first {len(ts)}")
                break
            if packet.size == 0:
                continue
            if len(ts) % 512 == 0:
                check()
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
        raise EmptyVideoError(f"{path}: the video stream has no frames; check or re-encode the file")
    pts = np.asarray(ts, dtype=np.int64)
    order = np.argsort(pts, kind="stable")
    pts = pts[order]
    if reliable and np.any(np.diff(pts) == 0):
        reliable = False
    # AVI stores no presentation times: FFmpeg derives them from decode order, so in a stream that
    # reorders frames (B-frames) every pts is dts plus a constant and names the wrong frame.
    if reliable and avi_b_frames and len(offsets) == 1:
        reliable = False
    if not keys or keys[0] > pts[0]:
        keys, seeks = [int(pts[0])] + keys, [int(pts[0])] + seeks  # decoding from the start always works
    key_order = np.argsort(keys, kind="stable")
    return FrameIndex(
        pts, np.asarray(keys, np.int64)[key_order], np.asarray(seeks, np.int64)[key_order], reliable
    )


def seek_runs(index: FrameIndex, wanted: np.ndarray, stream) -> list[tuple[int, int]]:
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
        entries = stream.index_entries
        target = index.pts[wanted] - index.dts_shift  # what VideoReader._decode_seek seeks to, in decode time
        step = int(index.pts[1] - index.pts[0])
        split = np.zeros(len(wanted) - 1, dtype=bool)
        for i in np.flatnonzero(np.diff(wanted) > SEEK_SKIP).tolist():
            k = entries.search_timestamp(int(target[i + 1]), backward=True)
            split[i] = k >= 0 and entries[k].timestamp > target[i] + SEEK_SKIP * step
    starts = [0, *(np.flatnonzero(split) + 1).tolist()]
    return list(zip(starts, [*starts[1:], len(wanted)], strict=True))


# Codecs whose non-reference frames nothing else is predicted from (H.264's nal_ref_idc = 0, MPEG-1/2
# B-frames) and whose packets hold one frame each, so that a packet's pts names its frame. Left out: HEVC
# (its sub-layer non-reference pictures can still be references for higher temporal layers) and MPEG-4
# part 2 (AVI's packed B-frames put two frames in one packet).
NONREF_SKIPPABLE = frozenset({"h264", "mpeg2video", "mpeg1video"})


class WantedFrames:
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


class SeekMoved(Exception):
    """After a seek, the first keyframe's timestamp is not one the index knows."""


def safe_decode(container, stream, path: str, keep: set[int] | None = None, keys: set[int] | None = None):
    """Decoded frames of `stream`, skipping (with a warning) packets that fail to decode.

    `keep` (a set of pts): frames with other timestamps are decoded only if other frames are predicted from
    them; non-reference frames (most B-frames) that nobody wants are skipped. Frame threads read the setting
    as each packet is submitted.
    `keys` (a set of pts, after a seek): packets before the first keyframe are dropped (nothing decodes
    right from them), and that keyframe must have one of these timestamps, else `SeekMoved` is raised:
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
                warn(f"{path}: stopped reading ({reason(e)}); later frames are unavailable")
                try:
                    yield from cc.decode(None)
                except av.error.FFmpegError:
                    pass
                return
            if keys is not None and packet.size:
                if not packet.is_keyframe:
                    continue
                if packet.pts not in keys:
                    raise SeekMoved(packet.pts)
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
                    warn(f"{path}: skipped a corrupt packet at pts {packet.pts} ({reason(e)})")
                if failures > 1000:
                    raise VideoDecodeError(
                        f"{path}: too many corrupt packets; the file is damaged, re-encode it"
                    ) from e
    finally:
        if skipping:  # the reader decodes again later: leave the decoder as found
            cc.skip_frame = "DEFAULT"
