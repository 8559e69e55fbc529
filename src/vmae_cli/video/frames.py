"""The video inputs transformers' VideoMAEImageProcessor accepts, as uint8 RGB frames (T, H, W, 3).

A video is a 4-D array or tensor, or a list of frames: 3-D arrays or tensors (channels last or first) or
PIL images. A batch is a list of videos or a 5-D array; a single frame (3-D, or a PIL image) is a video of
one frame. Frames with 1 channel are repeated to RGB; 4 channels (RGBA) are composited onto white, as
transformers' `convert_to_rgb` does. PIL is never imported here: a PIL image is recognised by its class,
from a PIL that the caller has imported.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

CHANNELS = (1, 3, 4)


def as_videos(videos) -> tuple[list[np.ndarray | torch.Tensor], bool]:
    """`videos` -> (a list of uint8 (T, H, W, 3) arrays or tensors, whether the input was a batch)."""
    if _is_array(videos) and videos.ndim == 5:
        return [as_video(v) for v in videos], True
    if isinstance(videos, (list, tuple)) and videos:
        if all(isinstance(v, (list, tuple)) for v in videos):
            return [as_video(v) for v in videos], True
        if all(_is_array(v) and v.ndim == 4 for v in videos):
            return [as_video(v) for v in videos], True
    return [as_video(videos)], False


def as_video(video) -> np.ndarray | torch.Tensor:
    """One video -> uint8 (T, H, W, 3), a numpy array or (for tensors in) a tensor on the same device."""
    if _is_pil(video) or (_is_array(video) and video.ndim == 3):
        video = [video]  # a single frame
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("a video needs at least one frame, got an empty list")
        frames = [_pil_rgb(f) if _is_pil(f) else f for f in video]
        if not all(_is_array(f) and f.ndim == 3 for f in frames):
            raise ValueError("expected frames as 3-D arrays (H, W, C) or (C, H, W), or PIL images")
        if any(isinstance(f, torch.Tensor) for f in frames):
            video = torch.stack([torch.as_tensor(f) for f in frames])
        else:
            video = np.stack(frames)
    if not _is_array(video) or video.ndim != 4:
        shape = tuple(video.shape) if _is_array(video) else type(video).__name__
        raise ValueError(
            f"expected a video as frames (T, H, W, 3), a list of frames or PIL images, got {shape}"
        )
    if video.dtype != (torch.uint8 if isinstance(video, torch.Tensor) else np.uint8):
        raise ValueError(f"expected uint8 frames (values 0..255), got {video.dtype}")
    return _to_rgb(_channels_last(video))


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _is_pil(x) -> bool:
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(x, image.Image)


def _pil_rgb(image) -> np.ndarray:
    """transformers' conversion of a PIL image: transparency composited onto white, then RGB."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    return np.asarray(image.convert("RGB"))


def _channels_last(video):
    """(T, H, W, C) or (T, C, H, W) -> (T, H, W, C). Channels last wins when both could be channels (a
    frame 1, 3 or 4 pixels tall): vmae's frames are channels last. transformers assumes first there."""
    if video.shape[-1] in CHANNELS:
        return video
    if video.shape[1] in CHANNELS:
        return video.permute(0, 2, 3, 1) if isinstance(video, torch.Tensor) else video.transpose(0, 2, 3, 1)
    raise ValueError(f"frames of shape {tuple(video.shape[1:])} have no channel axis of 1, 3 or 4 channels")


def _to_rgb(video):
    """uint8 (T, H, W, C) with C in 1, 3, 4 -> (T, H, W, 3), as transformers' `convert_to_rgb` on arrays."""
    c = video.shape[-1]
    if c == 3:
        return video
    if c == 1:
        return video.expand(*video.shape[:-1], 3) if isinstance(video, torch.Tensor) else video.repeat(3, -1)
    tensor = isinstance(video, torch.Tensor)
    x = video.double() if tensor else video.astype(np.float64)
    alpha = x[..., 3:4] / 255
    rgb = (alpha * x[..., :3] + (1 - alpha) * 255).round()  # onto white; round half to even, as np.round
    return rgb.to(torch.uint8) if tensor else rgb.astype(np.uint8)
