"""Which frame indices make a clip: the VideoMAE paper's test and training protocols, as pure functions.

Every function returns int64 numpy indices in [0, num_frames) and never fewer than the clip needs:
a video shorter than a window is padded by `pad` ("repeat_last" repeats the last frame, as the
original code does; "loop" starts again from the first sampled frame).

Kinetics test protocol (MCG-NJU/VideoMAE kinetics.py, test mode), reproduced by `window_indices`:
    sub   = [0, stride, 2*stride, ...] < num_frames, padded to clip_len     # every stride-th frame
    step  = max((len(sub) - clip_len) / (num_clips - 1), 0)
    clip k = sub[int(k * step) : int(k * step) + clip_len]                  # k = 0 .. num_clips-1
The original divides by zero for num_clips=1; here one clip is the central one,
start = (len(sub) - clip_len) // 2.

SSv2 test protocol (ssv2.py): tick = num_frames / num_segments; the two views are the segment
starts int(tick*x) and the segment middles int(tick/2 + tick*x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np

from ..errors import ConfigError

Pad = Literal["repeat_last", "loop"]
CROPS = (1, 3)  # the paper's spatial views: the center crop, or three crops along the long side


def _check(num_frames: int, clip_len: int, stride: int = 1) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got {clip_len} and {stride}")


def _pad(sub: np.ndarray, clip_len: int, pad: Pad) -> np.ndarray:
    """Extend `sub` (L,) to at least clip_len entries by the short-video policy."""
    if len(sub) >= clip_len:
        return sub
    if pad == "repeat_last":
        return np.concatenate([sub, np.full(clip_len - len(sub), sub[-1], dtype=np.int64)])
    if pad == "loop":
        return sub[np.arange(clip_len) % len(sub)]
    raise ValueError(f"pad must be 'repeat_last' or 'loop', got {pad!r}")


def window_indices(
    num_frames: int, clip_len: int, stride: int = 1, num_clips: int = 1, pad: Pad = "repeat_last"
) -> np.ndarray:
    """Evenly spaced strided windows (the K400 multi-clip test views).

    Returns:
        int64 (num_clips, clip_len).
    """
    _check(num_frames, clip_len, stride)
    sub = _pad(np.arange(0, num_frames, stride, dtype=np.int64), clip_len, pad)
    if num_clips == 1:
        starts = [(len(sub) - clip_len) // 2]
    else:
        step = max(1.0 * (len(sub) - clip_len) / (num_clips - 1), 0)
        starts = [int(k * step) for k in range(num_clips)]
    return np.stack([sub[s : s + clip_len] for s in starts])


def segment_indices(num_frames: int, num_segments: int, view: Literal["mid", "start"] = "mid") -> np.ndarray:
    """One frame per equal segment (TSN / SSv2 test views): the segment's middle or its start.

    Returns:
        int64 (num_segments,); frames repeat when num_frames < num_segments.
    """
    _check(num_frames, num_segments)
    tick = num_frames / float(num_segments)
    offset = {"mid": tick / 2.0, "start": 0.0}[view]
    return np.array([int(offset + tick * x) for x in range(num_segments)], dtype=np.int64)


def random_window_indices(
    rng: np.random.Generator,
    num_frames: int,
    clip_len: int,
    stride: int = 1,
    jitter: bool = False,
    pad: Pad = "repeat_last",
) -> np.ndarray:
    """A strided window at a uniformly random start (training).

    jitter: add a random offset in [0, stride) to each index (mmaction2's temporal_jitter).
    Returns:
        int64 (clip_len,).
    """
    _check(num_frames, clip_len, stride)
    span = (clip_len - 1) * stride + 1
    if num_frames >= span:
        start = int(rng.integers(0, num_frames - span + 1))
        idx = start + np.arange(clip_len, dtype=np.int64) * stride
    else:
        idx = _pad(np.arange(0, num_frames, stride, dtype=np.int64), clip_len, pad)[:clip_len]
    if jitter and stride > 1:
        idx = np.minimum(idx + rng.integers(0, stride, size=clip_len), num_frames - 1)
    return idx


def random_segment_indices(
    rng: np.random.Generator, num_frames: int, num_segments: int, jitter: bool = True
) -> np.ndarray:
    """One random frame per equal segment (TSN / SSv2 training, ssv2.py train mode).

    jitter=False gives the segment middles. For videos shorter than num_segments the original
    returns all zeros; here frames are spread evenly (floor(x * n / S)) instead.
    Returns:
        int64 (num_segments,).
    """
    _check(num_frames, num_segments)
    if not jitter:
        return segment_indices(num_frames, num_segments, "mid")
    average = num_frames // num_segments
    if average > 0:
        return np.arange(num_segments, dtype=np.int64) * average + rng.integers(0, average, size=num_segments)
    return np.arange(num_segments, dtype=np.int64) * num_frames // num_segments


@dataclass
class SamplingSpec:
    """How to turn one video into views (stored as `frame_sampling` in preprocessor_config.json).

    mode "window": `clips` strided windows of `frames` x `stride` (K400: 16 x 4, 5 clips, 3 crops).
    mode "uniform": `frames` segments; clips=1 takes segment middles, clips=2 the two SSv2 views.
    """

    mode: Literal["window", "uniform"] = "window"
    frames: int = 16
    stride: int = 4  # frames between samples; unused by "uniform"
    clips: int = 1
    crops: int = 1  # 1 = center crop, 3 = three crops along the long side
    pad: Pad = "repeat_last"

    def __post_init__(self) -> None:
        if self.mode not in ("window", "uniform"):
            raise ConfigError(f"frame_sampling mode must be 'window' or 'uniform', got {self.mode!r}")
        if self.mode == "uniform" and self.clips not in (1, 2):
            raise ConfigError(
                f"uniform sampling has 1 or 2 clips (segment middles, starts), got {self.clips}"
            )
        if self.pad not in ("repeat_last", "loop"):
            raise ConfigError(f"frame_sampling pad must be 'repeat_last' or 'loop', got {self.pad!r}")
        if min(self.frames, self.stride, self.clips) < 1:
            raise ConfigError("frame_sampling frames, stride and clips must all be >= 1")
        if self.crops not in CROPS:
            raise ConfigError(f"crops must be 1 (the center) or 3 (along the long side), got {self.crops}")

    def indices(self, num_frames: int) -> np.ndarray:
        """Deterministic test-time indices, int64 (clips, frames)."""
        if self.mode == "window":
            return window_indices(num_frames, self.frames, self.stride, self.clips, self.pad)
        views = ["mid"] if self.clips == 1 else ["start", "mid"]  # ssv2.py view order: chunk 0 = starts
        return np.stack([segment_indices(num_frames, self.frames, v) for v in views])

    @classmethod
    def from_dict(cls, d: dict) -> SamplingSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"unknown frame_sampling keys {sorted(unknown)}; expected some of {sorted(known)}"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
