"""VideoMAE: encoder, pre-training decoder and classifier, with transformers' module and parameter names.

Parameter names are the on-disk names of Hugging Face checkpoints (`...attention.attention.q_bias`, no key
bias), so `state_dict()` is the file layout and loading needs no renaming. Shapes follow transformers:
`pixel_values` is (B, T, C, H, W), frames first.

Numerics follow transformers' forward operation by operation (operand order of the residual adds, the
eps of each LayerNorm, the position table computed in float64), so logits agree to float precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..errors import VmaeError
from .config import HIDDEN_ACTS, VideoMAEConfig
from .loading import PretrainedMixin
from .outputs import (  # noqa: F401 - ModelOutput re-exported: vmae_cli.models.modeling named them first
    BaseModelOutput,
    ImageClassifierOutput,
    ModelOutput,
    VideoMAEForPreTrainingOutput,
)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class ShapeError(VmaeError, ValueError):
    """Input tensors whose shape does not fit the model."""


def _require(condition: torch.Tensor, message: Callable[[], str]) -> None:
    """Raise ShapeError unless `condition` (a bool tensor) holds. Under torch.export or torch.compile a Python
    branch on tensor values cannot be traced: there the check becomes an assertion that the program runs."""
    if torch.compiler.is_compiling():
        torch._check(condition.item(), message)
    elif not bool(condition):
        raise ShapeError(message())


# ---- activations: transformers' ACT2FN entries without parameters, written as transformers writes them ----
# (module-level functions rather than lambdas, so that a model stays picklable)
def _gelu_10(x: torch.Tensor) -> torch.Tensor:
    return torch.clip(F.gelu(x), -10, 10)


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_python(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_pytorch_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


def _sqrtsoftplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x).sqrt()


ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU
    "gelu_10": _gelu_10,
    "gelu_fast": _gelu_fast,
    "gelu_new": _gelu_new,
    "gelu_python": _gelu_python,
    "gelu_pytorch_tanh": _gelu_pytorch_tanh,
    "gelu_python_tanh": _gelu_new,  # transformers writes these two apart; the same operations
    "gelu_accurate": _gelu_new,
    "hardswish": F.hardswish,
    "laplace": _laplace,
    "leaky_relu": F.leaky_relu,
    "linear": _linear,
    "mish": F.mish,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "relu2": _relu2,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "sqrtsoftplus": _sqrtsoftplus,
    "swish": F.silu,
    "tanh": torch.tanh,
}
assert set(ACTIVATIONS) == set(HIDDEN_ACTS)


# ---- building blocks -------------------------------------------------------------------------------------
def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos position table (n_position, dim), float32, computed in float64 like the original."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000, 2 * (j // 2) / dim)  # (n, dim)
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(angle.astype(np.float32))


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


def _drop_path_rates(rate: float, depth: int) -> list[float]:
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


# ---- models ----------------------------------------------------------------------------------------------
class VideoMAEPreTrainedModel(PretrainedMixin, nn.Module):
    """Weight init, attention backend and the shared checkpoint methods (`from_pretrained`, `save_pretrained`)."""

    config: VideoMAEConfig

    def init_weights(self) -> None:
        if next(
            self.parameters()
        ).is_meta:  # built to be loaded into (from_pretrained): nothing to initialise
            return
        for module in self.modules():
            self._init_module(module)

    def _init_module(self, module: nn.Module) -> None:
        """New weights as the original VideoMAE draws them: every weight matrix xavier-uniform (the patch
        embedding as the matrix it is, as MAE does), biases 0, the mask token N(0, 0.02) cut at one std.

        transformers draws N(0, initializer_range) instead. At ViT-B's width the two are alike (std 0.02
        against 0.036); at the small presets' (96) xavier's std is 0.1, and with 0.02 the patch content is a
        few percent of the position table it is added to: pre-training from such an init sat on the "predict
        each clip's mean colour" plateau (held-out masked loss above that baseline after 500 steps; below it
        with this init) and from-scratch fine-tuning started from features that hardly saw the pixels.
        """
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, SelfAttention) and module.q_bias is not None:
            nn.init.zeros_(module.q_bias)
            nn.init.zeros_(module.v_bias)
        elif isinstance(module, VideoMAEForPreTraining):
            nn.init.trunc_normal_(module.mask_token, std=0.02, a=-0.02, b=0.02)

    def _init_buffers(self) -> None:
        """Recompute the position tables (after building on the meta device)."""
        for module in self.modules():
            if isinstance(module, Embeddings):
                module.position_embeddings = sinusoid_table(self.config.num_patches, self.config.hidden_size)
            elif isinstance(module, VideoMAEForPreTraining):
                module.position_embeddings = sinusoid_table(
                    self.config.num_patches, self.config.decoder_hidden_size
                )

    def _output_flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """A call's keywords, and the config's fields where a keyword is None (transformers' rule)."""
        cfg = self.config
        return (
            bool(cfg.output_attentions if output_attentions is None else output_attentions),
            bool(cfg.output_hidden_states if output_hidden_states is None else output_hidden_states),
            bool(cfg.return_dict if return_dict is None else return_dict),
        )

    def set_attn_implementation(self, name: str) -> None:
        """'sdpa' (fused `scaled_dot_product_attention`, the default) or 'eager' (explicit softmax)."""
        if name not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
        for module in self.modules():
            if isinstance(module, SelfAttention):
                module.implementation = name

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, (Stack, Decoder)):
                module.gradient_checkpointing = enable

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class VideoMAEModel(VideoMAEPreTrainedModel):
    """The encoder. `last_hidden_state` is (B, N_visible, D); `layernorm` exists only without mean pooling."""

    def __init__(self, config: VideoMAEConfig, drop_path_rate: float = 0.0, *, init: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        rates = _drop_path_rates(drop_path_rate, config.num_hidden_layers)
        D = config.hidden_size
        self.encoder = Stack(
            [Layer(D, config.num_attention_heads, config.intermediate_size, config, r) for r in rates]
        )
        self.layernorm = None if config.use_mean_pooling else nn.LayerNorm(D, eps=config.layer_norm_eps)
        if init:  # a head model initialises everything once, itself included
            self.init_weights()

    def check_inputs(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None
    ) -> torch.Tensor | None:
        cfg = self.config
        (h, w), c, t = cfg.image_hw, cfg.num_channels, cfg.num_frames
        if pixel_values.ndim != 5 or tuple(pixel_values.shape[1:]) != (t, c, h, w):
            raise ShapeError(
                f"pixel_values must have shape (batch, {t}, {c}, {h}, {w}) = (batch, frames, channels, height, "
                f"width) for this model, got {tuple(pixel_values.shape)}"
            )
        if bool_masked_pos is None:
            return None
        B, N = pixel_values.shape[0], cfg.num_patches
        if bool_masked_pos.ndim == 1:
            bool_masked_pos = bool_masked_pos.unsqueeze(0)
        if bool_masked_pos.shape[-1] != N or bool_masked_pos.shape[0] not in (1, B):
            raise ShapeError(
                f"bool_masked_pos must have shape ({B}, {N}), got {tuple(bool_masked_pos.shape)}"
            )
        bool_masked_pos = bool_masked_pos.to(device=pixel_values.device, dtype=torch.bool).expand(B, N)
        counts = bool_masked_pos.sum(1)
        if B > 1:
            _require(
                counts.min() == counts.max(),
                lambda: (
                    "bool_masked_pos must mask the same number of tokens in every sample of a batch; got "
                    f"{counts.tolist()} (tube masking gives equal counts)"
                ),
            )
        return bool_masked_pos

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        attentions, hidden, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        bool_masked_pos = self.check_inputs(pixel_values, bool_masked_pos)
        out = self.encode(pixel_values, bool_masked_pos, attentions, hidden)
        return out if return_dict else out.to_tuple()

    def encode(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        tubes: torch.Tensor | None = None,
    ) -> BaseModelOutput:
        """`forward` without the input checks, for callers that made them (pixel_values (B, T, C, H, W)).
        `tubes`: the input already patchified (`patchify`), for a masked input."""
        x = self.embeddings(pixel_values, bool_masked_pos, tubes)  # (B, N_visible, D)
        x, hidden, attentions = self.encoder(x, bool(output_hidden_states), bool(output_attentions))
        if self.layernorm is not None:
            x = self.layernorm(x)
        return BaseModelOutput(x, hidden, attentions)


class Decoder(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        D = cfg.decoder_hidden_size
        self.decoder_layers = nn.ModuleList(
            [
                Layer(D, cfg.decoder_num_attention_heads, cfg.decoder_intermediate_size, cfg)
                for _ in range(cfg.decoder_num_hidden_layers)
            ]
        )
        self.norm = nn.LayerNorm(D, eps=1e-5)  # transformers' default eps here, not layer_norm_eps
        self.head = nn.Linear(D, cfg.patch_dim) if cfg.patch_dim > 0 else nn.Identity()
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        """x: (B, N, Dd) visible then masked tokens -> (B, return_token_num, patch_dim) for the last tokens."""
        for layer in self.decoder_layers:
            if self.gradient_checkpointing and self.training:
                x, _ = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x, _ = layer(x)
        return self.head(self.norm(x[:, -return_token_num:]))


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


class VideoMAEForPreTraining(VideoMAEPreTrainedModel):
    """Masked autoencoder: encode the visible tokens, decode all, predict the pixels of the masked ones."""

    has_decoder = True

    def __init__(self, config: VideoMAEConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.config = config
        self.videomae = VideoMAEModel(config, drop_path_rate, init=False)
        self.encoder_to_decoder = nn.Linear(config.hidden_size, config.decoder_hidden_size, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        table = sinusoid_table(config.num_patches, config.decoder_hidden_size)
        self.register_buffer("position_embeddings", table, persistent=False)
        self.decoder = Decoder(config)
        self.init_weights()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        decoder_mask: torch.Tensor | None = None,
    ):
        """`decoder_mask` (B, N), optional: VideoMAEv2's dual masking. True marks the masked tokens the decoder
        reconstructs (a subset of `bool_masked_pos`, the same count per sample); the others are left out of
        the decoder and the loss. See `masking.decoder_mask`. Without it every masked token is decoded."""
        if bool_masked_pos is None:
            raise ShapeError(
                "VideoMAEForPreTraining needs bool_masked_pos (B, N), True = masked; see vmae_cli.models.masking"
            )
        attentions, hidden, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        bool_masked_pos = self.videomae.check_inputs(pixel_values, bool_masked_pos)
        decoded = (
            bool_masked_pos
            if decoder_mask is None
            else self._check_decoder_mask(decoder_mask, bool_masked_pos)
        )
        # patchified once: the encoder embeds the visible tubes, the targets are the masked ones
        tubes = patchify(pixel_values, self.config.tubelet_size, self.config.patch_hw)
        enc = self.videomae.encode(pixel_values, bool_masked_pos, attentions, hidden, tubes=tubes)
        x = self.encoder_to_decoder(enc.last_hidden_state)  # (B, N_visible, Dd)
        B, _, Dd = x.shape
        pos = self.position_embeddings.to(pixel_values.dtype).expand(B, -1, -1)
        pos_visible = pos[~bool_masked_pos].reshape(B, -1, Dd)
        pos_masked = pos[decoded].reshape(B, -1, Dd)
        x = torch.cat([x + pos_visible, self.mask_token + pos_masked], dim=1)  # visible first, then masked
        logits = self.decoder(x, pos_masked.shape[1])  # (B, N_decoded, patch_dim)
        labels = pretraining_targets(pixel_values, decoded, self.config, tubes)
        torch._check(labels.shape[1] == logits.shape[1])  # the same tokens: true, and torch.export must know
        # in fp32, as autocast computes it, against unrounded targets (not targets rounded to a bf16 logits' dtype)
        loss = F.mse_loss(logits.float(), labels.float())
        out = VideoMAEForPreTrainingOutput(loss, logits, enc.hidden_states, enc.attentions)
        return out if return_dict else out.to_tuple()

    @staticmethod
    def _check_decoder_mask(decoder_mask: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        decoder_mask = decoder_mask.to(device=bool_masked_pos.device, dtype=torch.bool)
        if decoder_mask.shape != bool_masked_pos.shape:
            raise ShapeError(
                f"decoder_mask must have the shape of bool_masked_pos {tuple(bool_masked_pos.shape)}, "
                f"got {tuple(decoder_mask.shape)}"
            )
        counts = decoder_mask.sum(1)
        _require(
            ~(decoder_mask & ~bool_masked_pos).any() & (counts.min() == counts.max()) & (counts[0] > 0),
            lambda: (
                "decoder_mask must pick some of the masked tokens (True only where bool_masked_pos is True), "
                "the same number in every sample"
            ),
        )
        return decoder_mask


class VideoMAEForVideoClassification(VideoMAEPreTrainedModel):
    """Encoder + `fc_norm(mean of tokens)` (mean pooling) or `layernorm(tokens)[:, 0]`, then a linear head."""

    has_classifier = True

    def __init__(self, config: VideoMAEConfig, drop_path_rate: float = 0.0, head_dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.videomae = VideoMAEModel(config, drop_path_rate, init=False)
        D, L = config.hidden_size, config.num_labels
        self.fc_norm = (
            nn.LayerNorm(D, eps=1e-5) if config.use_mean_pooling else None
        )  # eps 1e-5, as transformers
        self.head_dropout = nn.Dropout(head_dropout)  # no parameters: absent from checkpoints
        self.classifier = nn.Linear(D, L) if L > 0 else nn.Identity()
        self.init_weights()

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled vector the classifier sees: (B, D)."""
        seq = self.videomae(
            pixel_values, output_attentions=False, output_hidden_states=False, return_dict=True
        )
        seq = seq.last_hidden_state
        return self.fc_norm(seq.mean(1)) if self.fc_norm is not None else seq[:, 0]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        attentions, hidden, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        enc = self.videomae(
            pixel_values, output_attentions=attentions, output_hidden_states=hidden, return_dict=True
        )
        seq = enc.last_hidden_state
        pooled = self.fc_norm(seq.mean(1)) if self.fc_norm is not None else seq[:, 0]
        logits = self.classifier(self.head_dropout(pooled))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = ImageClassifierOutput(loss, logits, enc.hidden_states, enc.attentions)
        return out if return_dict else out.to_tuple()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: VideoMAEConfig) -> torch.Tensor:
    """transformers' rule: regression for one label, cross-entropy for integer labels, else multi-label BCE."""
    problem = cfg.problem_type
    if problem is None:
        if cfg.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def count_parameters(config: VideoMAEConfig, architecture: str = "VideoMAEForVideoClassification") -> int:
    """Parameters of a model, from its config alone (no weights are built)."""
    cls = MODEL_CLASSES[architecture]
    with torch.device("meta"):
        return sum(p.numel() for p in cls(config).parameters())


MODEL_CLASSES = {
    "VideoMAEModel": VideoMAEModel,
    "VideoMAEForPreTraining": VideoMAEForPreTraining,
    "VideoMAEForVideoClassification": VideoMAEForVideoClassification,
}
