"""The one path from a video file to model input, shared by the CLI, inference and training.

    path --VideoReader--> exact frame count --SamplingSpec--> indices (clips, T)
         --get_frames (union of all clips, one decode pass)--> uint8 --Preprocessor--> (views, T, 3, S, S)

Views are ordered clip-major: view v is clip v // crops, crop v % crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .preprocess import Preprocessor
from .sampling import SamplingSpec
from .video import VideoReader


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


def _read(path, spec: SamplingSpec, size, reader_kwargs, transform=None) -> tuple[np.ndarray, Clips]:
    with VideoReader(path, **reader_kwargs) as reader:
        n = reader.count_frames()  # exact (demux only); the decode needs the same index anyway
        indices = spec.indices(n)  # (clips, T)
        flat = reader.get_frames(indices.reshape(-1), size=size, transform=transform)  # repeats decode once
        timestamps = reader.timestamps[indices]
        info = Clips(
            os.fspath(path), indices, timestamps, n, reader.fps, frame_size=(reader.height, reader.width)
        )
    return flat.reshape(*indices.shape, *flat.shape[1:]), info


def load_frames(path, spec: SamplingSpec, *, size: tuple[int, int] | None = None, **reader_kwargs) -> Clips:
    """Sampled frames before preprocessing (for training-time augmentation).

    Args:
        size: optional (width, height) for swscale to resize to while converting to RGB.
        reader_kwargs: passed to VideoReader (threads, timeout).
    Returns:
        Clips with `frames` uint8 (clips, T, H, W, 3); indices and timestamps are (clips, T).
    """
    frames, clips = _read(path, spec, size, reader_kwargs)
    clips.frames = frames
    return clips


def load_clips(
    path, spec: SamplingSpec, preprocessor: Preprocessor, *, normalize: bool = True, **reader_kwargs
) -> Clips:
    """All views of one video as model input, decoded in one pass over the union of indices.

    Args:
        normalize: False leaves `pixel_values` as resized, cropped uint8, a quarter of the bytes to move
            between processes and to a GPU; `preprocessor.normalize` finishes them where the model runs.
    Returns:
        Clips with `pixel_values` float32 (or uint8) (clips * crops, T, 3, S, S) and indices / timestamps
        (clips * crops, T), each clip's row repeated for its crops.
    """

    def resize(
        rgb: np.ndarray,
    ) -> np.ndarray:  # uint8 (H, W, 3) -> (h, w, 3): the pixels of a whole-clip resize
        return preprocessor.resize(rgb[None])[0].permute(1, 2, 0).numpy()

    # Each distinct frame is resized as soon as it is decoded, so only one frame at full size is ever held,
    # however large the pictures and however many clips; resize_crop then finds them at size.
    frames, clips = _read(path, spec, None, reader_kwargs, resize)
    views = [preprocessor.resize_crop(f, spec.crops) for f in frames]  # each uint8 (crops, T, 3, S, S)
    clips.pixel_values = preprocessor.normalize(torch.cat(views)) if normalize else torch.cat(views)
    clips.indices = np.repeat(clips.indices, spec.crops, axis=0)
    clips.crops = spec.crops
    clips.timestamps = np.repeat(clips.timestamps, spec.crops, axis=0)
    return clips
