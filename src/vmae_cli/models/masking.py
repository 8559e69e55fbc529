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


def decoder_mask(
    bool_masked_pos: torch.Tensor, decoder_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """VideoMAEv2's dual masking: which masked tokens the decoder reconstructs.

    The decoder drops `int(decoder_ratio * N)` of the N tokens, always among the masked ones, and keeps the
    others: every visible token plus a random subset of the masked ones, chosen per token (not per tube),
    so that over a clip every position gets reconstructed at some time step. Returns bool (B, N), True =
    masked and decoded (a subset of `bool_masked_pos`); the loss covers those tokens only. VideoMAEv2 uses
    decoder_ratio 0.5 with encoder ratio 0.9: the decoder then sees about half the tokens, which roughly
    halves its cost.
    """
    B, N = bool_masked_pos.shape
    n_masked = int(bool_masked_pos[0].sum())
    n_decoded = n_masked - int(decoder_ratio * N)
    if not 0.0 <= decoder_ratio < 1.0 or n_decoded < 1:
        raise ValueError(
            f"decoder_ratio must be in [0, 1) and leave the decoder some masked tokens: {decoder_ratio} drops "
            f"{int(decoder_ratio * N)} of {N} tokens, and only {n_masked} are masked"
        )
    noise = torch.rand(B, N, generator=generator).to(bool_masked_pos.device)
    noise = noise.masked_fill(~bool_masked_pos, 2.0)  # visible tokens rank last: never picked
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < n_decoded
