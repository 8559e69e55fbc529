"""A timeline: which frames make the clips of each window of a long video.

Every window is sampled as the model was trained, as if it were a whole video of its own:

- window sampling (Kinetics-style): clips of `frames` frames at the model's `stride`, placed in the window
  exactly as plain classify places them in a video (`window_indices` on the window's frames): one clip
  centred (on the stride grid from the window's first frame), or several spread over the window as
  `clips` spreads them; their views are averaged.
  Clips per window: `clips` if given, else enough to cover the window, ceil(window / clip length) with
  clip length = frames x stride / fps. A window shorter than one clip is classified by the clip centred
  on the window's centre, which reaches beyond the window (the plan says so); near the video's ends that
  clip moves inside the video, and a video shorter than one clip gets plain classify's padded clip.
- uniform sampling (SSv2-style): `frames` segments spread over the window, which is how such models
  were trained (`segment_indices` on the window's frames).

Windows are placed in time (VFR-safe): window [start, end) holds the frames whose timestamps lie in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .sampling import SamplingSpec, window_indices


@dataclass(frozen=True)
class Timeline:
    """What a timeline asks for (None: the default)."""

    window: float | None = None  # seconds; default: one clip (frames x stride / fps)
    hop: float | None = None  # seconds between window starts; default: the window
    clips: int | None = None  # clips per window; default: enough to cover the window


@dataclass
class TimelinePlan:
    """The windows of one video and the clips sampled in each (clip rows are window-major)."""

    spec: SamplingSpec  # how each clip samples (its `clips` aside: clips_per_window)
    windows: list[tuple[float, float]]  # (start, end) seconds of each window
    indices: np.ndarray  # int64 (windows * clips_per_window, frames)
    clips_per_window: int
    window: float  # seconds
    hop: float  # seconds
    clip_seconds: float  # frames x stride / fps: the time one clip spans
    clip_longer_than_window: bool  # some window holds fewer frames than one clip spans

    def describe(self) -> dict:
        """What was done, for records: window, hop, clips (and crops) per window, how each clip samples."""
        spec = self.spec
        d = {"window": round(self.window, 3), "hop": round(self.hop, 3), "clips_per_window": self.clips_per_window,
             "crops": spec.crops, "sampling": spec.mode, "frames": spec.frames}  # fmt: skip
        if spec.mode == "window":
            d |= {"stride": spec.stride, "clip_seconds": round(self.clip_seconds, 3),
                  "clip_longer_than_window": self.clip_longer_than_window}  # fmt: skip
        return d


def plan_timeline(timestamps, fps: float, spec: SamplingSpec, timeline: Timeline) -> TimelinePlan:
    """Consecutive windows over the video and the frame indices of each window's clips.

    Args:
        timestamps: float (N,) presentation times in seconds, ascending (`VideoReader.timestamps`).
        fps: the video's average frame rate (clip length in seconds, the default window).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    rate = max(float(fps), 1e-6)
    duration = float(ts[-1] + 1.0 / rate)
    clip_seconds = spec.frames * spec.stride / rate
    window = timeline.window or clip_seconds
    hop = timeline.hop or window
    starts = np.arange(0.0, max(duration - window, 0.0) + 1e-9, hop)
    windows = [(float(s), float(min(s + window, duration))) for s in starts]
    if windows[-1][1] < duration - 1e-6:  # cover the tail with one last full window
        windows.append((max(duration - window, 0.0), duration))
    per = clips_per_window(spec, window, clip_seconds, timeline.clips)
    rows, short = zip(*(window_clips(ts, start, end, spec, per) for start, end in windows), strict=True)
    return TimelinePlan(spec, windows, np.concatenate(rows), per, window, hop, clip_seconds, any(short))


def clips_per_window(spec: SamplingSpec, window: float, clip_seconds: float, clips: int | None = None) -> int:
    """Clips that classify one window: `clips` if given, else enough to cover it (uniform sampling: the spec's
    views, whose segments already spread over the whole window)."""
    if spec.mode == "uniform":
        return spec.clips
    return clips or max(1, math.ceil(window / clip_seconds - 1e-6))


def window_clips(
    ts: np.ndarray, start: float, end: float, spec: SamplingSpec, per: int
) -> tuple[np.ndarray, bool]:
    """int64 (per, frames) indices into `ts` (float (N,) seconds, ascending) of the clips of window
    [start, end), and whether the window holds fewer frames than one clip spans (see the module's notes)."""
    n = len(ts)
    a = min(int(np.searchsorted(ts, start - 1e-6)), n - 1)  # 1 us slack for float rounding of pts
    b = max(int(np.searchsorted(ts, end - 1e-6)), a + 1)
    span = (spec.frames - 1) * spec.stride + 1  # frames one window-sampled clip reaches over
    return _window_clips(a, b, n, spec, per), spec.mode == "window" and b - a < span


def _window_clips(a: int, b: int, n: int, spec: SamplingSpec, per: int) -> np.ndarray:
    """int64 (per, frames): the clips of the window holding frames [a, b) of a video of n frames."""
    if spec.mode == "uniform":
        return spec.indices(b - a) + a
    span = (spec.frames - 1) * spec.stride + 1
    if b - a >= span:
        return window_indices(b - a, spec.frames, spec.stride, per, spec.pad) + a
    if n < span:  # the whole video is shorter than one clip: plain classify's padded clip
        clip = window_indices(n, spec.frames, spec.stride, 1, spec.pad)[0]
    else:  # centred on the window's centre, moved inside the video near its ends
        first = min(max(a + (b - a - span) // 2, 0), n - span)
        clip = first + np.arange(spec.frames, dtype=np.int64) * spec.stride
    return np.repeat(clip[None], per, axis=0)
