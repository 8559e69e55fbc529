"""The one path from a video file to model input, shared by the CLI, inference and training.

    path ==VideoReader==> exact frame count ==SamplingSpec (or a timeline plan)==> indices (clips, T)
         ==get_frames (the union of the clips' frames, in as few passes as memory allows)==> uint8
         ==Preprocessor==> (views, T, 3, S, S), streamed in chunks

Views are ordered clip-major: view v is clip v // crops, crop v % crops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from .preprocess import Preprocessor
from .reader import VideoReader
from .sampling import SamplingSpec
from .timeline import Timeline, TimelinePlan, plan_timeline

# Resized frames decoded in one pass while making the views of one video (at least one clip's frames): past
# it, the union of all clips' frames is decoded in several passes (each seeks to its keyframe), so that
# many views of a long video need no more memory than a few.
DECODE_BUDGET = 64 << 20


@dataclass
class Clips:
    """The views of one video and where they came from."""

    path: str
    indices: np.ndarray  # int64 (views, T) frame indices, in presentation order
    timestamps: np.ndarray  # float64 (views, T) seconds from the stream start
    num_frames: int  # exact frame count of the video
    fps: float
    pixel_values: torch.Tensor | None = None  # float32 (views, T, 3, S, S), from load_clips
    frames: np.ndarray | None = None  # uint8 (clips, T, H, W, 3) before preprocessing, from load_frames
    crops: int = 1  # views per clip: rows of indices / timestamps repeat each clip's row this many times
    frame_size: tuple[int, int] | None = None  # (height, width) of the frames, upright: where the crops lie
    timeline: TimelinePlan | None = (
        None  # a timeline's plan: the windows, clips_per_window * crops views each
    )


def plan_clips(reader: VideoReader, spec: SamplingSpec, timeline: Timeline | None = None) -> Clips:
    """Where the views of one video come from, before any frame is decoded (rows repeated per crop)."""
    if timeline is None:
        plan, rows = None, spec.indices(reader.count_frames())  # exact count (demux only)
    else:
        plan = plan_timeline(reader.timestamps, reader.fps, spec, timeline)
        rows = plan.indices
    return Clips(
        os.fspath(reader.path), np.repeat(rows, spec.crops, axis=0),
        np.repeat(reader.times(rows), spec.crops, axis=0), reader.count_frames(), reader.fps,
        crops=spec.crops, frame_size=(reader.height, reader.width), timeline=plan,
    )  # fmt: skip


def iter_views(
    reader: VideoReader, clips: Clips, preprocessor: Preprocessor, max_views: int, budget: int = DECODE_BUDGET
) -> Iterator[torch.Tensor]:
    """The views of `clips` as uint8 (k, T, 3, ch, cw) chunks in view order, k <= max(max_views, crops).

    Every distinct frame is resized as soon as it is decoded (one frame at full size at a time). Clips are
    taken in order and grouped so that each group's frames not decoded yet fit in `budget` bytes once
    resized (a group is at least one clip); each group decodes in one pass (the union of all clips' frames
    at once when they fit), and a resized frame is kept only while a later clip still needs it. So memory
    stays at about `budget` plus one chunk of views, however many views and however long the video.
    """
    rows = clips.indices[:: clips.crops]
    uses: dict[int, int] = {}  # frame index -> clips not yet emitted that need it
    for j in rows.reshape(-1).tolist():
        uses[j] = uses.get(j, 0) + 1
    resized: dict[int, torch.Tensor] = {}  # uint8 (3, h, w)
    h, w = preprocessor.output_size(reader.height, reader.width)
    limit = max(rows.shape[1], budget // (h * w * 3))  # frames decoded per pass

    def resize(rgb: np.ndarray) -> np.ndarray:  # uint8 (H, W, 3) -> (h, w, 3), as the whole clip's resize
        return preprocessor.resize(rgb[None])[0].permute(1, 2, 0).numpy()

    first, chunk, size = 0, [], 0
    while first < len(rows):
        new: set[int] = set()
        last = first
        while last < len(rows):  # grow the group while its new frames fit
            add = set(rows[last].tolist()) - resized.keys() - new
            if last > first and len(new) + len(add) > limit:
                break
            new |= add
            last += 1
        if new:
            wanted = sorted(new)
            frames = torch.from_numpy(reader.get_frames(wanted, transform=resize)).permute(0, 3, 1, 2)
            # a resized frame is freed once no later clip needs it
            resized.update(zip(wanted, frames, strict=True))
            del frames
        for row in rows[first:last].tolist():
            chunk.append(preprocessor.crop_views(torch.stack([resized[j] for j in row]), clips.crops))
            size += clips.crops
            for j in row:
                uses[j] -= 1
                if not uses[j]:
                    resized.pop(j, None)
            if size >= max_views:
                yield torch.cat(chunk)
                chunk, size = [], 0
        first = last
    if chunk:
        yield torch.cat(chunk)


def load_frames(path, spec: SamplingSpec, *, size: tuple[int, int] | None = None, **reader_kwargs) -> Clips:
    """Sampled frames before preprocessing (for training-time augmentation).

    Args:
        size: optional (width, height) for swscale to resize to while converting to RGB.
        reader_kwargs: passed to VideoReader (threads, timeout).
    Returns:
        Clips with `frames` uint8 (clips, T, H, W, 3); indices and timestamps are (clips, T).
    """
    with VideoReader(path, **reader_kwargs) as reader:
        clips = plan_clips(reader, replace(spec, crops=1))
        batch = reader.read(clips.indices.reshape(-1), size=size)  # repeats decode once
    clips.frames = batch.frames.reshape(*clips.indices.shape, *batch.frames.shape[1:])
    clips.timestamps = batch.timestamps.reshape(clips.indices.shape)  # the index as decoding left it
    return clips


def load_clips(
    path, spec: SamplingSpec, preprocessor: Preprocessor, *, normalize: bool = True, **reader_kwargs
) -> Clips:
    """All views of one video as model input (for many views, `iter_views` streams them instead).

    Args:
        normalize: False leaves `pixel_values` as resized, cropped uint8, a quarter of the bytes to move
            between processes and to a GPU; `preprocessor.normalize` finishes them where the model runs.
    Returns:
        Clips with `pixel_values` float32 (or uint8) (clips * crops, T, 3, S, S) and indices / timestamps
        (clips * crops, T), each clip's row repeated for its crops.
    """
    with VideoReader(path, **reader_kwargs) as reader:
        clips = plan_clips(reader, spec)
        views = torch.cat(list(iter_views(reader, clips, preprocessor, max_views=len(clips.indices))))
    clips.pixel_values = preprocessor.normalize(views) if normalize else views
    return clips
