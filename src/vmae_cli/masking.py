"""Token masks for pre-training. Convention, everywhere: True = masked (hidden from the encoder).

Tokens are ordered t, h, w (C order), as the patch embedding flattens them.
"""

from __future__ import annotations

import torch

from .config import VideoMAEConfig


def tube_mask(
    config: VideoMAEConfig, batch: int, mask_ratio: float = 0.9, generator: torch.Generator | None = None
) -> torch.Tensor:
    """VideoMAE tube masking: one random spatial mask per sample, repeated at every time step.

    Returns bool (batch, N). Every sample masks exactly `int(mask_ratio * H' * W') * T'` tokens, so a batch
    can be gathered into equal-length sequences.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    t, h, w = config.grid
    per_frame = h * w
    n_masked = int(mask_ratio * per_frame)
    noise = torch.rand(batch, per_frame, generator=generator)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # a random permutation per sample
    spatial = ranks < n_masked  # (B, h*w)
    return spatial.unsqueeze(1).expand(batch, t, per_frame).reshape(batch, t * per_frame)
