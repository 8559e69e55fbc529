"""Tubelets and pixels: a clip cut into the tokens' pixels (`patchify`) and put back (`unpatchify`), and the
pixels pre-training predicts (`pretraining_targets`). `ShapeError` is what input of the wrong shape raises.
"""

from __future__ import annotations

import torch

from ..errors import VmaeError
from .config import VideoMAEConfig

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


class ShapeError(VmaeError, ValueError):
    """Input tensors whose shape does not fit the model."""


def patchify(frames: torch.Tensor, tubelet: int, patch: tuple[int, int]) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, N, tubelet*ph*pw, C): the pixels of each token, channel last."""
    B, T, C, H, W = frames.shape
    ph, pw = patch
    x = frames.reshape(B, T // tubelet, tubelet, C, H // ph, ph, W // pw, pw)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3).contiguous()  # (B, T', H', W', ts, ph, pw, C)
    return x.view(B, -1, tubelet * ph * pw, C)


def unpatchify(patches: torch.Tensor, cfg: VideoMAEConfig) -> torch.Tensor:
    """(B, N, tubelet*ph*pw*C) -> (B, T, C, H, W); the inverse of `patchify` followed by flattening."""
    B = patches.shape[0]
    (ph, pw), ts, C = cfg.patch_hw, cfg.tubelet_size, cfg.num_channels
    t, h, w = cfg.grid
    x = patches.reshape(B, t, h, w, ts, ph, pw, C).permute(
        0, 1, 4, 7, 2, 5, 3, 6
    )  # (B, t, ts, C, h, ph, w, pw)
    return x.reshape(B, t * ts, C, h * ph, w * pw)


def pretraining_targets(
    pixel_values: torch.Tensor,
    bool_masked_pos: torch.Tensor,
    cfg: VideoMAEConfig,
    tubes: torch.Tensor | None = None,
):
    """What the decoder must predict for the masked tokens: (B, num_masked, patch_dim).

    Pixels are first un-normalised with the ImageNet mean/std (as transformers and the original do, whatever
    the preprocessor used); with `norm_pix_loss` each token is normalised per channel over its pixels.
    `tubes`: `patchify(pixel_values, ...)` if the caller has it already.
    """
    with torch.no_grad():
        if cfg.num_channels != 3 and not cfg.norm_pix_loss:
            raise ShapeError(
                "norm_pix_loss=False needs 3-channel input (it un-normalises with ImageNet stats)"
            )
        B = pixel_values.shape[0]
        if tubes is None:
            tubes = patchify(pixel_values, cfg.tubelet_size, cfg.patch_hw)  # (B, N, P, C)
        patches = tubes[bool_masked_pos].reshape(B, -1, *tubes.shape[2:])  # masked tokens only
        if cfg.num_channels == 3:
            # back to [0, 1]: the same products and sums as on the frames, on the masked tokens only
            mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=patches.device, dtype=patches.dtype)
            std = torch.tensor(IMAGENET_DEFAULT_STD, device=patches.device, dtype=patches.dtype)
            patches = patches * std + mean
        if cfg.norm_pix_loss:
            # unbiased std per token and channel, as a sum of squares (torch.var is far slower on the CPU)
            centred = patches - patches.mean(dim=-2, keepdim=True)
            var = centred.square().sum(dim=-2, keepdim=True) / (patches.shape[-2] - 1)
            patches = centred / (var.sqrt() + 1e-6)
        return patches.flatten(2)
