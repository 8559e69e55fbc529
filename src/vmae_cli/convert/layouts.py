"""Reading foreign VideoMAE checkpoints, telling their layout, and renaming them to transformers' keys.

Sources, detected from their keys:
- original: MCG-NJU/VideoMAE pre-training (`encoder.`/`decoder.`, `encoder_to_decoder`, `mask_token`) and
  fine-tuning (`blocks.N.`, `fc_norm`, `head`) checkpoints, under `model`/`module` (DeepSpeed) wrappers;
- v2: OpenGVLab/VideoMAEv2, the same key names plus optional layer scale (`gamma_1`/`gamma_2`), folded here
  into the linear layer before it (exact); cosine attention (`attn.scale`) has no HF form and is refused;
- hf: a transformers `pytorch_model.bin` / safetensors (4.x or 5.x names), with its config.json if beside it.

Pickles are read with `torch.load(weights_only=True)`, allowing only `argparse.Namespace` (the `args` that
original checkpoints carry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, VmaeError, listing
from ..hub import CONFIG_NAME, PREPROCESSOR_NAME
from ..models.config import VideoMAEConfig
from ..models.layers import sinusoid_table
from .reference import BLOCK_NAMES as _BLOCK_NAMES

WRAPPERS = ("model", "module", "state_dict")
PREFIXES = ("module.", "_orig_mod.", "backbone.")  # DDP, torch.compile, detection/mmaction wrappers
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "mp_rank_00_model_states.pt")


class ConversionError(VmaeError):
    """A checkpoint that cannot be brought into the Hugging Face layout faithfully."""


@dataclass
class SourceCheckpoint:
    """What a source file holds: a flat state dict, the training run's `args`, an HF config if one is beside it."""

    path: Path
    state: dict[str, torch.Tensor]
    args: dict[str, Any] = field(default_factory=dict)
    config: VideoMAEConfig | None = None
    preprocessor: dict | None = None
    stripped: list[str] = field(default_factory=list)


# ---- reading ---------------------------------------------------------------------------------------------
def read_checkpoint(src: str | os.PathLike) -> SourceCheckpoint:
    """Read a .pth/.pt/.bin/.safetensors file, or the weights of a folder, without running any pickled code."""
    path = Path(src).expanduser()
    if not path.exists():
        raise CheckpointError(f"{src}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    files = _weight_files(path) if path.is_dir() else [path]
    obj: dict[str, Any] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                obj.update(load_file(file))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{file}: damaged or not a safetensors file ({e})") from None
        else:
            loaded = _safe_torch_load(file)
            if not isinstance(loaded, dict):
                raise CheckpointError(f"{file}: holds a {type(loaded).__name__}, not a dict of weights")
            obj.update(loaded)
    state, args = _unwrap(obj, path)
    state, stripped = strip_prefixes(state)
    config = preprocessor = None
    if (folder / CONFIG_NAME).is_file() and (path.is_dir() or path.suffix in (".bin", ".safetensors")):
        try:
            config = VideoMAEConfig.from_json_file(folder / CONFIG_NAME)
        except VmaeError:
            config = None  # not a VideoMAE config.json: infer from the shapes instead
        if config is not None and (folder / PREPROCESSOR_NAME).is_file():
            preprocessor = json.loads((folder / PREPROCESSOR_NAME).read_text())
    return SourceCheckpoint(path, state, args, config, preprocessor, stripped)


def _weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            names = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / n for n in names]
    found = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".bin", ".safetensors"))
    if len(found) == 1:
        return found
    what = (
        "no weight file"
        if not found
        else f"{len(found)} weight files ({', '.join(p.name for p in found[:4])})"
    )
    raise CheckpointError(f"{folder}: {what}; pass the checkpoint file itself")


def _safe_torch_load(file: Path) -> Any:
    """torch.load(weights_only=True) plus `argparse.Namespace` (the `args` of original checkpoints), nothing else."""
    import pickle

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{file}: refused: the pickle would build objects other than tensors{what}, which could run code; "
            "vmae reads only tensors and argparse.Namespace. Re-save the state dict alone in a trusted environment"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as e:
        detail = "not a pickle" if isinstance(e, KeyError) else str(e).splitlines()[0]  # text: KeyError(byte)
        raise CheckpointError(f"{file}: damaged or not a PyTorch checkpoint ({detail})") from None


def _unwrap(obj: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args if isinstance(args, dict) else {}
    state = obj
    for key in WRAPPERS:
        if isinstance(obj.get(key), dict) and obj[key]:
            state = obj[key]
            break
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise CheckpointError(
            f"{path}: no state dict of tensors found (top-level keys: {', '.join(map(str, list(obj)[:8]))}); "
            f"expected the weights under one of {', '.join(WRAPPERS)} or at the top level"
        )
    return dict(state), args


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip each wrapper prefix that every key carries, each at most once (`module._orig_mod.` -> ``)."""
    stripped: list[str] = []
    while True:
        prefix = next(
            (p for p in PREFIXES if p not in stripped and all(k.startswith(p) for k in state)), None
        )
        if prefix is None:
            return state, stripped
        state = {k[len(prefix) :]: v for k, v in state.items()}
        stripped.append(prefix)


# ---- detection -------------------------------------------------------------------------------------------
def detect_source(state: dict[str, torch.Tensor], args: dict[str, Any] | None = None) -> str:
    """`hf`, `v2` or `original`, from sentinel keys (v2 only where something v2-specific is present)."""
    keys = list(state)
    if any(".attention.attention." in k or "patch_embeddings.projection" in k for k in keys):
        return "hf"
    if not any(k.endswith("patch_embed.proj.weight") for k in keys):
        raise ConversionError(
            "not a VideoMAE checkpoint: no patch embedding (patch_embed.proj.weight or "
            f"embeddings.patch_embeddings.projection.weight); first keys: {', '.join(keys[:5])}"
        )
    v2_args = {"num_sample", "with_checkpoint", "decoder_mask_type", "decoder_mask_ratio"}
    if any(k.endswith(".attn.scale") for k in keys) or v2_args & set(args or {}):
        return "v2"
    return "original"


def layout_of(hf_state: dict[str, torch.Tensor]) -> str:
    if "encoder_to_decoder.weight" in hf_state:
        return "pretraining"
    return "classifier" if "classifier.weight" in hf_state else "encoder"


ARCHITECTURES = {
    "pretraining": "VideoMAEForPreTraining",
    "classifier": "VideoMAEForVideoClassification",
    "encoder": "VideoMAEModel",
}


# ---- original / v2 -> transformers names -----------------------------------------------------------------
def original_to_hf(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rename an original (v1/v2) state dict to transformers' on-disk names.

    Returns the new state dict and what was changed on the way: `folded` (blocks whose layer scale was
    folded), `dropped` (keys with no HF counterpart that cost nothing: fixed position tables, key biases),
    `tables` (the position tables found, to be checked against the sinusoid).
    """
    pretraining = any(k.startswith(("decoder.", "encoder_to_decoder.")) or k == "mask_token" for k in state)
    enc = "encoder." if pretraining or all(k.startswith("encoder.") for k in state) else ""
    out_enc = "videomae." if pretraining or "head.weight" in state else ""
    top = {
        f"{enc}patch_embed.proj.weight": f"{out_enc}embeddings.patch_embeddings.projection.weight",
        f"{enc}patch_embed.proj.bias": f"{out_enc}embeddings.patch_embeddings.projection.bias",
        f"{enc}norm.weight": f"{out_enc}layernorm.weight",
        f"{enc}norm.bias": f"{out_enc}layernorm.bias",
        "fc_norm.weight": "fc_norm.weight", "fc_norm.bias": "fc_norm.bias",
        "head.weight": "classifier.weight", "head.bias": "classifier.bias",
    }  # fmt: skip
    if pretraining:
        for name in ("encoder_to_decoder.weight", "mask_token", "decoder.norm.weight", "decoder.norm.bias",
                     "decoder.head.weight", "decoder.head.bias"):  # fmt: skip
            top[name] = name
    block_re = re.compile(rf"^(?:{re.escape(enc)}(blocks)|(decoder\.blocks))\.(\d+)\.(.+)$")
    out: dict[str, torch.Tensor] = {}
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    info: dict[str, Any] = {"folded": 0, "dropped": [], "tables": {}}
    unknown = []
    for key, value in state.items():
        value = value.to(torch.float32) if value.is_floating_point() else value
        m = block_re.match(key)
        if m and (m.group(1) or pretraining):
            dest = (
                f"{out_enc}encoder.layer.{m.group(3)}."
                if m.group(1)
                else f"decoder.decoder_layers.{m.group(3)}."
            )
            blocks.setdefault(dest, {})[m.group(4)] = value
        elif key in top:
            out[top[key]] = value.clone()
        elif key == f"{enc}pos_embed" or (pretraining and key == "pos_embed"):
            info["tables"]["decoder" if key == "pos_embed" and pretraining else "encoder"] = value
            info["dropped"].append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"keys with no counterpart in transformers' VideoMAE: {listing(unknown)}; "
            "is this a VideoMAE checkpoint (no CLS token, no learned extras)?"
        )
    for dest, parts in blocks.items():
        converted, folded, dropped = _convert_block(parts, dest)
        out.update({dest + k: v for k, v in converted.items()})
        info["folded"] += folded
        info["dropped"] += dropped
    return out, info


def _convert_block(
    parts: dict[str, torch.Tensor], where: str
) -> tuple[dict[str, torch.Tensor], bool, list[str]]:
    p = dict(parts)
    if "attn.scale" in p:
        raise ConversionError(
            f"uses cosine attention (VideoMAEv2 cos_attn: a learned attn.scale in {where.rstrip('.')}); "
            "transformers' VideoMAE has scaled dot-product attention only, so it cannot be converted faithfully"
        )
    if "attn.qkv.weight" not in p:
        raise ConversionError(f"{where.rstrip('.')}: no attn.qkv.weight; not a VideoMAE block")
    qkv = p.pop("attn.qkv.weight")
    D = qkv.shape[1]
    if qkv.shape[0] != 3 * D:
        raise ConversionError(
            f"attn.qkv.weight {tuple(qkv.shape)}: attention width differs from the model width"
        )
    out = {
        "attention.attention.query.weight": qkv[:D].clone(),
        "attention.attention.key.weight": qkv[D : 2 * D].clone(),
        "attention.attention.value.weight": qkv[2 * D :].clone(),
    }
    dropped = []
    if (
        "attn.qkv.bias" in p
    ):  # a key bias adds q.b_k to every logit of a query: softmax ignores it, so drop it
        b = p.pop("attn.qkv.bias")
        p["attn.q_bias"], p["attn.v_bias"] = b[:D], b[2 * D :]
        dropped.append(f"{where}attn.qkv.bias[key part]")
    # Layer scale: x + g * (W h + b) == x + (diag(g) W) h + g * b, so fold g into the linear before it.
    g1, g2 = p.pop("gamma_1", None), p.pop("gamma_2", None)
    for gamma, linear in ((g1, "attn.proj"), (g2, "mlp.fc2")):
        if gamma is not None:
            p[f"{linear}.weight"] = gamma[:, None] * p[f"{linear}.weight"]
            p[f"{linear}.bias"] = gamma * p[f"{linear}.bias"]
    if ("attn.q_bias" in p) != ("attn.v_bias" in p):
        raise ConversionError(f"{where.rstrip('.')}: has only one of q_bias/v_bias")
    unknown = [k for k in p if k not in _BLOCK_NAMES]
    if unknown:
        raise ConversionError(f"{where.rstrip('.')}: unknown block keys {', '.join(sorted(unknown))}")
    out.update({_BLOCK_NAMES[k]: v.clone() for k, v in p.items()})
    return out, g1 is not None or g2 is not None, dropped


def check_position_table(table: torch.Tensor, name: str) -> None:
    """A stored pos_embed must be the fixed sinusoid (recomputed from the config); a learned one is refused."""
    n, d = table.shape[-2:]
    expected = sinusoid_table(n, d).to(table.dtype).float()
    diff = (table.reshape(n, d).float() - expected).abs().max().item()
    if diff > 1e-5:
        raise ConversionError(
            f"{name} is learned (it differs from the fixed sinusoid table by up to {diff:.3g}); transformers' "
            "VideoMAE only has the fixed table, so this checkpoint cannot be converted faithfully"
        )
