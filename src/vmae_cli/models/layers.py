"""The building blocks of the encoder and decoder, under transformers' module names: the position table,
stochastic depth, attention, the pre-LN layer and its stack, the patch embedding, and `pool`, the one
function that turns an encoder's tokens into one vector per clip (the classifier, `features()` and embedding
all call it).

Numerics follow transformers' forward operation by operation (operand order of the residual adds, the
eps of each LayerNorm, the position table computed in float64), so logits agree to float precision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .activations import ACTIVATIONS
from .config import VideoMAEConfig
from .targets import patchify


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos position table (n_position, dim), float32, computed in float64 like the original.

    A new tensor each call, copied from a table computed once per shape: loading a model builds it twice (the
    module, then its buffers after the meta device), and ViT-B's (1568, 768) takes 15-30 ms to compute."""
    return torch.from_numpy(_sinusoid(n_position, dim).copy())


@functools.lru_cache(maxsize=8)
def _sinusoid(n_position: int, dim: int) -> np.ndarray:
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000, 2 * (j // 2) / dim)  # (n, dim)
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    table = angle.astype(np.float32)
    table.flags.writeable = False
    return table


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class SelfAttention(nn.Module):
    """Multi-head self-attention; q and v have biases, k has none (the BEiT/VideoMAE convention)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_dropout = attn_dropout
        self.implementation = "sdpa"

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """x: (B, N, D) -> ((B, N, D), attention probabilities (B, heads, N, N) or None)."""
        B, N, D = x.shape
        q = F.linear(x, self.query.weight, self.q_bias)
        k = F.linear(x, self.key.weight)
        v = F.linear(x, self.value.weight, self.v_bias)
        q, k, v = (
            t.view(B, N, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v)
        )  # (B, h, N, hd)
        dropout = self.attn_dropout if self.training else 0.0
        scale = self.head_dim**-0.5
        if self.implementation == "sdpa" and not need_weights:
            ctx, probs = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale), None
        else:  # the readable reference; also the only path that can return the probabilities
            probs = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
            ctx = F.dropout(probs, dropout, self.training) @ v
        return ctx.transpose(1, 2).reshape(B, N, D), probs


class Dense(nn.Module):
    """A Linear under the name `dense`, the way transformers nests it (`output.dense`, `intermediate.dense`)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_dropout: float):
        super().__init__()
        self.attention = SelfAttention(dim, heads, qkv_bias, attn_dropout)
        self.output = Dense(dim, dim)


class Layer(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, cfg: VideoMAEConfig, drop_path: float = 0.0):
        super().__init__()
        self.attention = Attention(dim, heads, cfg.qkv_bias, cfg.attention_probs_dropout_prob)
        self.intermediate = Dense(dim, mlp_dim)
        self.output = Dense(mlp_dim, dim)
        self.layernorm_before = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = ACTIVATIONS[cfg.hidden_act]  # a function, no parameters

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        a, probs = self.attention.attention(self.layernorm_before(x), need_weights)
        a = self.dropout(self.attention.output(a))
        x = self.drop_path(a) + x  # new branch first: transformers' operand order, for identical rounding
        h = self.act(self.intermediate(self.layernorm_after(x)))
        x = self.drop_path(self.dropout(self.output(h))) + x
        return x, probs


class Stack(nn.Module):
    """Transformer layers with optional hidden-state/attention capture and activation checkpointing."""

    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False):
        hidden = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layer:
            if self.gradient_checkpointing and self.training and not output_attentions:
                x, probs = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x, probs = layer(x, output_attentions)
            if hidden is not None:
                hidden.append(x)
            if attentions is not None:
                attentions.append(probs)
        return x, (tuple(hidden) if hidden else None), (tuple(attentions) if attentions else None)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    return [rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth, as the original


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        (ph, pw), ts = cfg.patch_hw, cfg.tubelet_size
        self.projection = nn.Conv3d(cfg.num_channels, cfg.hidden_size, (ts, ph, pw), stride=(ts, ph, pw))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, N, D), tokens in (t, h, w) C order."""
        return self.projection(pixel_values.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.patch_embeddings = PatchEmbeddings(cfg)
        # Fixed, never saved (as in every VideoMAE checkpoint); a buffer so that .to(device) moves it.
        self.register_buffer(
            "position_embeddings", sinusoid_table(cfg.num_patches, cfg.hidden_size), persistent=False
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None,
        tubes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`tubes`: `patchify(pixel_values, ...)` if the caller has it already (pre-training shares it)."""
        if bool_masked_pos is None:
            x = self.patch_embeddings(pixel_values)
            return x + self.position_embeddings.to(x.dtype)
        # Masked input: embed the visible tubelets only, as one matmul with the convolution's weights. Same
        # result as embedding all and dropping the masked ones (transformers' order) up to float rounding, at
        # 1 - mask_ratio of the cost, forward and backward.
        proj = self.patch_embeddings.projection
        B, D = pixel_values.shape[0], proj.out_channels
        ts, ph, pw = proj.kernel_size
        if tubes is None:
            tubes = patchify(pixel_values, ts, (ph, pw))  # (B, N, ts*ph*pw, C)
        keep = ~bool_masked_pos
        tubes = tubes[keep].reshape(B, -1, ts, ph, pw, tubes.shape[-1]).permute(0, 1, 5, 2, 3, 4)
        x = F.linear(tubes.flatten(2), proj.weight.reshape(D, -1), proj.bias)  # weight order (C, ts, ph, pw)
        pos = self.position_embeddings.to(x.dtype).expand(B, -1, -1)
        x = x + pos[keep].reshape(B, -1, D)
        if torch.compiler.is_compiling():  # traced, attention must know that the count is not 0
            torch._check(x.shape[1] > 0)
        return x


# ---- pooling ---------------------------------------------------------------------------------------------
POOLINGS = ("mean+fc_norm", "mean", "token0", "none")


def classifier_pooling(config: VideoMAEConfig) -> str:
    """What a classifier's head reads: "mean+fc_norm" with mean pooling, else "token0"."""
    return "mean+fc_norm" if config.use_mean_pooling else "token0"


def pool(
    tokens: torch.Tensor, how: str, norm: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """An encoder's tokens (B, N, D) as one vector per clip, `how` one of POOLINGS: "mean+fc_norm", `norm`
    (a mean-pooling classifier's fc_norm) of the token mean, (B, D); "mean", the token mean, (B, D); "token0",
    the first token, (B, D); "none", every token, (B, N * D)."""
    if how == "mean+fc_norm":
        if norm is None:
            raise ValueError('pooling "mean+fc_norm" needs the norm (a classifier\'s fc_norm)')
        return norm(tokens.mean(1))
    if how == "mean":
        return tokens.mean(1)
    if how == "token0":
        return tokens[:, 0]
    if how == "none":
        return tokens.flatten(1)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")
