"""Live input: classify a stream window by window as it comes, dropping frames rather than falling behind.

    source ==decoding thread==> FrameRing (the newest few seconds of decoded frames; older ones fall out)
           ==model thread: the latest complete window==> clips sampled as a timeline samples a window
           ==iter_views + Engine.forward==> one record per window

A source is anything FFmpeg opens: a network URL (rtsp, http(s), udp, tcp, srt...), a capture device
(/dev/video0 through v4l2; avfoundation or dshow names with `input_format`), or `-` for a pipe on stdin.

Windows are placed in stream time, from the first frame: window k is [k * hop, k * hop + window) seconds.
It is complete once its last frame has arrived. When the model is free it takes the newest complete window;
the windows it could not keep up with are skipped, and their frames counted as dropped, so the lag stays at
most about one window plus one model call, however long the stream runs.

Each record times the window: `latency` is the wall time from the arrival of the window's last frame (out
of the decoder) to the record being handed out, `model_time` the model calls alone.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import av
import numpy as np
import torch

from ..errors import option
from ..video.clips import Clips, iter_views
from ..video.errors import NoVideoStreamError, VideoError, ffmpeg_error, reason
from ..video.timeline import clips_per_window, window_clips
from .tasks import (
    DEFAULT_CLASSIFIER,
    NonFiniteOutput,
    RunOptions,
    load_model,
    non_finite_cause,
    top_predictions,
)

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # for a stream that states no frame rate (raw pipes)
RING_BYTES = 1 << 30  # decoded frames the ring holds at most (YUV 4:2:0: 3 MB a 1080p frame, 340 of them)


class LiveSourceError(VideoError):
    """A live source that cannot be opened or read: unreachable, not a video, silent for too long."""


@dataclass
class _Frame:
    index: int  # frames received before this one
    time: float  # seconds since the stream's first frame
    arrived: float  # time.monotonic() when the decoder gave it
    frame: av.VideoFrame
    used: bool = False  # inside a window that was classified


@dataclass
class LiveStats:
    """What happened to the frames so far."""

    received: int = 0
    dropped: int = 0  # received, never inside a classified window, and no longer waiting for one
    windows: int = 0  # classified
    skipped: int = 0  # windows passed over because the model was busy
    corrupt: int = 0  # packets that did not decode
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line: windows, frames received and dropped, latency."""
        line = (f"{self.windows} window(s) classified, {self.skipped} skipped; {self.received} frames received, "
                f"{self.dropped} dropped")  # fmt: skip
        if self.latencies:
            lat = np.asarray(self.latencies)
            line += f"; latency p50 {np.median(lat):.3f} s, max {lat.max():.3f} s"
        return line


class FrameRing:
    """The newest frames of a source: a decoding thread pushes, the model thread takes windows.

    Frames older than `keep` seconds behind the newest one (or beyond `max_frames`) fall out; those that were
    never inside a classified window count as dropped.
    """

    def __init__(self, keep: float, max_frames: int = 1024):
        self.keep, self.max_frames = keep, max_frames
        self.frames: deque[_Frame] = deque()
        self.stats = LiveStats()
        self.ended = False
        self.error: Exception | None = None
        self._cond = threading.Condition()

    def push(self, frame: av.VideoFrame, t: float) -> None:
        with self._cond:
            self.frames.append(_Frame(self.stats.received, t, time.monotonic(), frame))
            self.stats.received += 1
            while len(self.frames) > self.max_frames or self.frames[0].time < t - self.keep:
                self._evict()
            self._cond.notify_all()

    def finish(self, error: Exception | None = None) -> None:
        with self._cond:
            self.ended, self.error = True, error
            self._cond.notify_all()

    def newest_time(self) -> float | None:
        return self.frames[-1].time if self.frames else None

    def wait(self, ready, timeout: float = 0.5) -> bool:
        """Wait until `ready(self)` or the end of the stream; True if ready."""
        with self._cond:
            while not ready(self) and not self.ended:
                self._cond.wait(timeout)
            return ready(self)

    def take(self, start: float, end: float) -> list[_Frame]:
        """The frames before `end` (and a clip's reach before `start`); those in [start, end) become used and
        earlier ones are done with."""
        start, end = start - 1e-6, end - 1e-6  # as window_clips places frames: 1 us slack for float rounding
        with self._cond:
            taken = [f for f in self.frames if f.time < end]
            for f in taken:
                if f.time >= start:
                    f.used = True
            for f in taken:  # frames before the window that no later window holds: dropped now
                if f.time < start and not f.used:
                    f.used = True
                    self.stats.dropped += 1
            return taken

    def _evict(self) -> None:
        gone = self.frames.popleft()
        self.stats.dropped += not gone.used


def open_source(source: str, input_format: str | None = None, timeout: float = 10.0):
    """(container, video stream) of a live source; LiveSourceError in one line when it cannot be opened."""
    url = "pipe:0" if source == "-" else source
    if input_format is None and source.startswith("/dev/video"):
        input_format = "v4l2"
    with ffmpeg_error() as last_error:
        try:
            container = av.open(url, format=input_format, timeout=(timeout, timeout))
        except av.error.ExitError:
            raise LiveSourceError(
                f"{source}: no answer within {timeout:g} s; check that the source is running"
            ) from None
        except av.error.ConnectionRefusedError:
            raise LiveSourceError(f"{source}: connection refused; check that the stream is running") from None
        except av.error.EOFError:
            raise LiveSourceError(f"{source}: the stream ended before anything in it could be read") from None
        except av.error.FFmpegError as e:
            raise LiveSourceError(f"{source}: cannot open ({last_error() or reason(e)}); check the URL or "
                                  f"device (and {option('input_format')})") from None  # fmt: skip
        except ValueError as e:  # PyAV: an unknown format name
            raise LiveSourceError(f"{source}: {e}; check {option('input_format')}") from None
    videos = [s for s in container.streams.video if s.codec_context is not None]
    if not videos:
        container.close()
        raise NoVideoStreamError(f"{source}: no video stream (audio or data only); pass a video source")
    stream = videos[0]
    stream.thread_type = "SLICE"  # frame threads hold back one frame per thread: latency
    return container, stream


def _decode(container, stream, fps: float, ring: FrameRing, stop: threading.Event, source: str,
            timeout: float) -> None:  # fmt: skip
    """The decoding thread: every frame into the ring, stamped with its seconds since the first frame (a
    frame without a timestamp, or with one that goes back, comes 1 / fps after the one before)."""
    first = last = None
    error = None
    try:
        for packet in container.demux(stream):
            if stop.is_set():
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:  # a damaged packet (lost UDP datagram...): skip it
                ring.stats.corrupt += 1
                if ring.stats.corrupt == 1:
                    log.warning("%s: skipped a packet that does not decode (%s)", source, reason(e))
                continue
            for frame in frames:
                t = frame.time
                if t is not None:
                    first = t if first is None else first
                    t -= first
                if last is not None and (t is None or t <= last):  # no timestamp, or one that goes back
                    t = last + 1 / fps
                last = t or 0.0
                ring.push(frame, last)
    except av.error.ExitError:
        error = LiveSourceError(f"{source}: no data for {timeout:g} s; the stream stalled")
    except av.error.FFmpegError as e:  # the connection broke: the stream ends here
        log.warning("%s: stopped reading (%s)", source, reason(e))
    except Exception as e:  # noqa: BLE001 - handed to the model thread, which raises it
        error = e
    finally:
        ring.finish(error)


class _Snapshot:
    """Frames taken from the ring, read as `iter_views` reads a VideoReader (by global frame index)."""

    def __init__(self, frames: list[_Frame], size: tuple[int, int]):
        self.by_index = {f.index: f.frame for f in frames}
        self.width, self.height = size
        self._reformatter = av.video.reformatter.VideoReformatter()

    def get_frames(self, indices, transform=None) -> np.ndarray:
        out = []
        for j in np.asarray(indices).reshape(-1).tolist():
            rgb = self._reformatter.reformat(self.by_index[j], format="rgb24", width=self.width,
                                             height=self.height).to_ndarray()  # fmt: skip
            out.append(rgb if transform is None else transform(rgb))
        return np.stack(out)


def live_classify(
    source: str,
    model: str = DEFAULT_CLASSIFIER,
    *,
    revision: str | None = None,
    options: RunOptions | None = None,
    top_k: int = 5,
    window: float | None = None,
    hop: float | None = None,
    input_format: str | None = None,
    timeout: float = 10.0,
    loaded: tuple | None = None,
    stats: LiveStats | None = None,
) -> Iterator[dict]:
    """Classify a live source window by window; yields one record per classified window, as it is made.

    Args:
        source: a URL FFmpeg opens (rtsp://, http://, udp://, tcp://...), a capture device (/dev/video0), or
            "-" for a stream piped on stdin.
        model: a model folder, weight file or Hub id (a classifier); `loaded`: (model, engine) from
            `predict.load_model` instead.
        options: sampling and device options (RunOptions; `clips`: clips per window). `threads` 0 sets torch's
            threads to all cores but one (for the whole process), which the decoding thread takes.
        window, hop: seconds (default: one clip, frames x stride / fps; hop: the window).
        input_format: FFmpeg's input format (v4l2, avfoundation, dshow...); default: guessed from the source.
        timeout: seconds to wait for the source to open, and for each read before it counts as stalled.
        stats: a LiveStats to fill (frames received and dropped), readable after an interrupt.
    Yields:
        {"source", "window" (its number), "start", "end" (seconds since the first frame), "clips" ([{"frames",
        "times"}]: global frame numbers and their seconds), "predictions" ([{"label", "index", "score"}]),
        "latency", "model_time" (seconds), "frames_received", "frames_dropped", "windows_skipped"}.
    Raises:
        LiveSourceError (or another VideoError) for a source that cannot be opened or read, or that stalls.
        A stream that ends is the end of the iteration.
    """
    opts = options or RunOptions()
    # torch's spinning OpenMP threads stall for up to seconds when the decoding thread takes one of their cores
    if not opts.threads:
        opts = replace(opts, threads=max(1, (os.cpu_count() or 2) - 1))
    net, engine = loaded or load_model(model, revision, "classify", opts)
    spec = engine.spec
    _warm_up(engine)
    container, stream = open_source(source, input_format, timeout)
    fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
    clip_seconds = spec.frames * spec.stride / fps
    window = window or clip_seconds
    hop = hop or window
    per = clips_per_window(spec, window, clip_seconds, opts.clips)
    cc = stream.codec_context
    size = (cc.width, cc.height)
    # the newest complete window starts at most window + hop before the newest frame; a clip longer than the
    # window reaches half its excess before the window's start
    most = max(16, RING_BYTES * 2 // max(1, 3 * size[0] * size[1]))
    ring = FrameRing(keep=max(window, clip_seconds) + hop + 0.5, max_frames=most)
    if stats is not None:
        ring.stats = stats
    stop = threading.Event()
    thread = threading.Thread(target=_decode, args=(container, stream, fps, ring, stop, source, timeout),
                              name="vmae-live-decode", daemon=True)  # fmt: skip
    thread.start()
    frame_dur, k = 1.0 / fps, 0  # k: the next window that may be classified

    def newest_complete(r: FrameRing) -> int:  # the newest window whose last frame has arrived, or -1
        t = r.newest_time()
        return -1 if t is None else math.floor((t + 1.5 * frame_dur - window) / hop + 1e-9)

    try:
        while True:
            if not ring.wait(lambda r, k=k: newest_complete(r) >= k):
                break
            latest = newest_complete(ring)
            ring.stats.skipped += latest - k
            k = latest
            start, end = k * hop, k * hop + window
            frames = ring.take(start, end)
            if not frames:  # every frame of it already fell out of the ring
                k += 1
                continue
            record = _classify_window(engine, net.config, frames, start, end, size, per, top_k)
            ring.stats.windows += 1
            ring.stats.latencies.append(record["latency"])
            stats_now = ring.stats
            yield {"source": source, "window": k, **record, "frames_received": stats_now.received,
                   "frames_dropped": stats_now.dropped, "windows_skipped": stats_now.skipped}  # fmt: skip
            k += 1
        if ring.error is not None:
            raise ring.error
    finally:
        stop.set()
        thread.join(timeout=1.0)
        if not thread.is_alive():
            container.close()  # else the thread is blocked in a read: the process's end closes it


def _classify_window(engine, config, frames: list[_Frame], start, end, size, per: int, top_k: int) -> dict:
    """One window's record: its clips sampled as a timeline samples a window, through the model."""
    spec = engine.spec
    ts = np.array([f.time for f in frames])
    rows, _ = window_clips(ts, start, end, spec, per)  # indices into `frames`
    first = frames[0].index
    indices = np.repeat(rows + first, spec.crops, axis=0)
    clips = Clips("live", indices, np.repeat(ts[rows], spec.crops, axis=0), frames[-1].index + 1, 0.0,
                  crops=spec.crops, frame_size=size[::-1])  # fmt: skip
    arrived = frames[-1].arrived
    model_time, scores = 0.0, []
    for views in iter_views(_Snapshot(frames, size), clips, engine.preprocessor, engine.batch_size):
        tic = time.perf_counter()
        out = engine.forward(views)
        model_time += time.perf_counter() - tic
        scores.append(engine.per_view(out) if engine.per_view is not None else out)
    score = torch.cat(scores).mean(0)
    if not bool(torch.isfinite(score).all()):
        raise NonFiniteOutput(f"window {start:.2f}-{end:.2f} s: the model produced NaN/inf: "
                              f"{non_finite_cause(engine)}")  # fmt: skip
    return {
        "start": round(start, 3), "end": round(end, 3),
        "clips": [{"frames": (r + first).tolist(), "times": np.round(ts[r], 6).tolist()} for r in rows],
        "predictions": top_predictions(score, config.id2label or {}, top_k),
        "latency": round(time.monotonic() - arrived, 4), "model_time": round(model_time, 4),
    }  # fmt: skip


def _warm_up(engine, most: int = 10, seconds: float = 5.0) -> None:
    """Model calls on blank views before the stream starts, until one is no faster than the one before (the
    first few calls of a process are many times slower than the rest), so that the first windows are not the
    slowest."""
    h, w = engine.preprocessor.crop
    x = torch.zeros(1, engine.spec.frames, 3, h, w, dtype=torch.uint8)
    start, last = time.perf_counter(), math.inf
    for _ in range(most):
        tic = time.perf_counter()
        engine.forward(x)
        took = time.perf_counter() - tic
        if took > 0.8 * last or time.perf_counter() - start > seconds:
            break
        last = took


__all__ = ["FrameRing", "LiveSourceError", "LiveStats", "live_classify", "open_source"]
