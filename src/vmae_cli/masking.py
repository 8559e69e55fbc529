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


def running_cell_mask(config: VideoMAEConfig, batch: int, mask_ratio: float = 0.5) -> torch.Tensor:
    """VideoMAEv2 decoder masking: a 2x2 cell pattern that shifts each time step (True = not decoded).

    Only `mask_ratio` 0.25, 0.5 and 0.75 tile a 2x2 cell exactly; the same mask serves every sample.
    """
    t, h, w = config.grid
    keep_per_cell = round((1 - mask_ratio) * 4)
    if abs(keep_per_cell / 4 - (1 - mask_ratio)) > 1e-6 or h % 2 or w % 2:
        raise ValueError("running-cell masking needs an even token grid and mask_ratio in {0.25, 0.5, 0.75}")
    cell = torch.ones(4, dtype=torch.bool)
    cell[:keep_per_cell] = False  # False = decoded
    frames = []
    for i in range(t):
        c = cell.roll(i % 4).view(2, 2)  # shift the visible cells one step per time slot
        frames.append(c.repeat(h // 2, w // 2).flatten())
    return torch.stack(frames).flatten().unsqueeze(0).expand(batch, -1)
