"""The original MCG-NJU/VideoMAE layout: its key names, and an independent forward written on them.

A verified conversion (`convert_checkpoint(check=True)`) runs this forward on the source checkpoint and the
converted model on the same clip; it shares no code with models/modeling.py, so a renaming mistake cannot hide
in both.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..models.config import VideoMAEConfig
from ..models.loading import normalize_keys

ORIGINAL_EPS = 1e-6  # every LayerNorm of the original models

BLOCK_NAMES = {  # original block suffix -> transformers layer suffix
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "attn.q_bias": "attention.attention.q_bias", "attn.v_bias": "attention.attention.v_bias",
    "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
    "mlp.fc1.weight": "intermediate.dense.weight", "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight", "mlp.fc2.bias": "output.dense.bias",
}  # fmt: skip


def hf_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> original names (to verify a converted hf source against the original forward)."""
    state = normalize_keys(state)
    pretraining = "encoder_to_decoder.weight" in state
    enc = "encoder." if pretraining else ""
    inverse = {v: k for k, v in BLOCK_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("videomae.")
        m = re.match(r"^(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$", key)
        if m:
            dest = (
                f"{enc}blocks.{m.group(2)}."
                if m.group(1) == "encoder.layer"
                else f"decoder.blocks.{m.group(2)}."
            )
            part = m.group(3)
            if part.startswith("attention.attention.") and part.endswith(".weight"):
                qkv.setdefault(dest, {})[part.split(".")[2]] = value
            else:
                out[dest + inverse[part]] = value
            continue
        key = key.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.")
        key = {"layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}.get(key, key)
        key = key.replace("classifier.", "head.")
        if key.startswith(("patch_embed.", "norm.")):
            key = enc + key
        out[key] = value
    for dest, parts in qkv.items():
        out[dest + "attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


# ---- the original forward ------------------------------------------------------------------
def reference_forward(
    state: dict[str, torch.Tensor], cfg: VideoMAEConfig, x: torch.Tensor, mask: torch.Tensor | None = None,
    eps: float = ORIGINAL_EPS, head_eps: float = ORIGINAL_EPS,
) -> torch.Tensor:  # fmt: skip
    """The original VideoMAE forward on original key names, written independently of models/modeling.py.

    x: (B, C, T, H, W), channels first as in the original. Returns classifier logits (B, L), pre-training
    predictions for the masked tokens (B, N_masked, patch_dim) (mask: (B, N) bool, True = masked), or the
    encoder tokens (B, N, D).
    """
    pre = "encoder." if "encoder.patch_embed.proj.weight" in state else ""
    from ..models.activations import ACTIVATIONS

    act = ACTIVATIONS[cfg.hidden_act]  # the original's gelu; a transformers source may name another
    w = state[pre + "patch_embed.proj.weight"]
    D = w.shape[0]
    x = F.conv3d(x, w, state[pre + "patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    B, N, _ = x.shape
    x = x + _sincos(N, D).to(x)
    if mask is not None and "decoder.head.weight" in state:
        x = x[~mask].reshape(B, -1, D)
    for i in range(cfg.num_hidden_layers):
        x = _reference_block(state, f"{pre}blocks.{i}.", x, cfg.num_attention_heads, eps, act)
    if pre + "norm.weight" in state:
        x = F.layer_norm(x, (D,), state[pre + "norm.weight"], state[pre + "norm.bias"], eps)
    if "decoder.head.weight" in state:
        x = F.linear(x, state["encoder_to_decoder.weight"])
        Dd = x.shape[-1]
        pos = _sincos(N, Dd).to(x).expand(B, -1, -1)
        pos_vis, pos_mask = pos[~mask].reshape(B, -1, Dd), pos[mask].reshape(B, -1, Dd)
        x = torch.cat([x + pos_vis, state["mask_token"] + pos_mask], dim=1)
        for i in range(cfg.decoder_num_hidden_layers):
            x = _reference_block(state, f"decoder.blocks.{i}.", x, cfg.decoder_num_attention_heads, eps, act)
        x = x[:, -pos_mask.shape[1] :]
        x = F.layer_norm(x, (Dd,), state["decoder.norm.weight"], state["decoder.norm.bias"], head_eps)
        return F.linear(x, state["decoder.head.weight"], state["decoder.head.bias"])
    if "head.weight" in state:
        if "fc_norm.weight" in state:
            pooled = F.layer_norm(x.mean(1), (D,), state["fc_norm.weight"], state["fc_norm.bias"], head_eps)
        else:
            pooled = x[:, 0]
        return F.linear(pooled, state["head.weight"], state["head.bias"])
    return x


def _sincos(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    angle = pos / torch.pow(10000.0, 2 * (torch.arange(d) // 2).double() / d)
    angle[:, 0::2], angle[:, 1::2] = angle[:, 0::2].sin(), angle[:, 1::2].cos()
    return angle.float()  # (n, d)


def _reference_block(
    s: dict[str, torch.Tensor], p: str, x: torch.Tensor, heads: int, eps: float, act=F.gelu
) -> torch.Tensor:
    B, N, D = x.shape
    h = F.layer_norm(x, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
    bias = s.get(p + "attn.qkv.bias")
    if bias is None and p + "attn.q_bias" in s:
        bias = torch.cat([s[p + "attn.q_bias"], torch.zeros_like(s[p + "attn.v_bias"]), s[p + "attn.v_bias"]])
    qkv = F.linear(h, s[p + "attn.qkv.weight"], bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
    attn = (q * (D // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
    a = F.linear(
        (attn @ v).transpose(1, 2).reshape(B, N, D), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"]
    )
    x = x + (s[p + "gamma_1"] * a if p + "gamma_1" in s else a)
    h = F.layer_norm(x, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps)
    m = F.linear(act(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"],
                 s[p + "mlp.fc2.bias"])  # fmt: skip
    return x + (s[p + "gamma_2"] * m if p + "gamma_2" in s else m)


def verify(
    model, original: dict[str, torch.Tensor], cfg: VideoMAEConfig, eps: float, head_eps: float
) -> float:
    """Largest |converted - original| on one random clip (and a fixed tube mask for pre-training)."""
    g = torch.Generator().manual_seed(0)
    (h, w), t = cfg.image_hw, cfg.grid
    x = torch.randn(1, cfg.num_channels, cfg.num_frames, h, w, generator=g)  # (B, C, T, H, W)
    spatial = torch.zeros(t[1] * t[2], dtype=torch.bool)
    spatial[torch.randperm(spatial.numel(), generator=g)[: int(0.75 * spatial.numel())]] = True
    mask = spatial.repeat(t[0]).unsqueeze(0)  # (1, N), the same spatial mask at every time step
    state = {k: v.float() if v.is_floating_point() else v for k, v in original.items()}
    with torch.no_grad():
        expected = reference_forward(state, cfg, x, mask, eps, head_eps)
        pixel_values = x.permute(0, 2, 1, 3, 4)  # transformers: (B, T, C, H, W)
        if hasattr(model, "decoder"):
            got = model(pixel_values, mask).logits
        elif hasattr(model, "classifier"):
            got = model(pixel_values).logits
        else:
            got = model(pixel_values).last_hidden_state
    return (got.float() - expected).abs().max().item()
