"""Foreign VideoMAE checkpoints -> a model folder in the Hugging Face layout (`vmae convert`).

Sources, detected from their keys (`source=` forces one):
- original: MCG-NJU/VideoMAE pre-training (`encoder.`/`decoder.`, `encoder_to_decoder`, `mask_token`) and
  fine-tuning (`blocks.N.`, `fc_norm`, `head`) checkpoints, under `model`/`module` (DeepSpeed) wrappers;
- v2: OpenGVLab/VideoMAEv2, the same key names plus optional layer scale (`gamma_1`/`gamma_2`), folded here
  into the linear layer before it (exact); cosine attention (`attn.scale`) has no HF form and is refused;
- hf: a transformers `pytorch_model.bin` / safetensors (4.x or 5.x names), with its config.json if beside it.

Pickles are read with `torch.load(weights_only=True)`, allowing only `argparse.Namespace` (the `args` that
original checkpoints carry). The config comes from tensor shapes; LayerNorm eps is the original's 1e-6
(transformers hard-codes 1e-5 for `fc_norm` and `decoder.norm`: outputs differ from the original by ~1e-5).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UsageError, VmaeError, listing
from ..files import atomic_folder
from ..hub import CONFIG_NAME, PREPROCESSOR_NAME
from ..models.config import VideoMAEConfig
from ..models.labelsets import LABEL_SETS, LABELS_DIR
from ..models.loading import normalize_keys
from ..models.modeling import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, MODEL_CLASSES, sinusoid_table
from .reference import BLOCK_NAMES as _BLOCK_NAMES
from .reference import ORIGINAL_EPS, hf_to_original, verify

log = logging.getLogger(__name__)

SOURCES = ("original", "v2", "hf")
DEFAULT_FRAMES, DEFAULT_IMAGE = 16, 224
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}  # ViT-S/B/L/H/g
DECODER_HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 640: 8}  # pre-training decoders of S/B/L(v2 H, g)/H
WRAPPERS = ("model", "module", "state_dict")
PREFIXES = ("module.", "_orig_mod.", "backbone.")  # DDP, torch.compile, detection/mmaction wrappers
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "mp_rank_00_model_states.pt")
TOLERANCE = 1e-4


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


@dataclass
class ConversionResult:
    src: str
    dst: str
    source: str  # original | v2 | hf
    layout: str  # pretraining | classifier | encoder
    architecture: str
    config: dict[str, Any]
    origins: dict[str, str]  # where each inferred value came from
    tensors: int
    parameters: int
    folded_layer_scale: int = 0  # blocks whose gamma_1/gamma_2 were folded
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# ---- config ----------------------------------------------------------------------------------------------
def infer_config(
    state: dict[str, torch.Tensor],
    *,
    eps: float,
    heads: int | None = None,
    decoder_heads: int | None = None,
    num_frames: int | None = None,
    image_size: int | None = None,
    args: dict[str, Any] | None = None,
    table_length: int | None = None,
) -> tuple[VideoMAEConfig, dict[str, str]]:
    """A config from the shapes of a transformers-named state dict; `origins` says where each guess came from."""
    P = "videomae." if any(k.startswith("videomae.") for k in state) else ""
    embed = state[P + "embeddings.patch_embeddings.projection.weight"]
    D, C, ts, ph, pw = embed.shape
    layer = P + "encoder.layer.0."
    origins: dict[str, str] = {}
    if heads is None:
        heads = HEADS_BY_WIDTH.get(D)
        origins["num_attention_heads"] = "standard ViT for this width"
        if heads is None:
            raise UsageError(
                f"hidden size {D} is not a standard ViT width ({sorted(HEADS_BY_WIDTH)}): pass --heads"
            )
    else:
        origins["num_attention_heads"] = "--heads"
    has_norm, has_fc_norm = P + "layernorm.weight" in state, "fc_norm.weight" in state
    if has_norm and has_fc_norm:
        raise ConversionError(
            "has both a final norm and fc_norm; transformers' VideoMAE has one or the other"
        )
    if has_fc_norm and "classifier.weight" not in state:
        raise ConversionError("has fc_norm but no head; transformers' VideoMAEModel cannot hold an fc_norm")
    frames, size = _frames_and_size(num_frames, image_size, args or {}, table_length, ts, ph, origins)
    fields: dict[str, Any] = dict(
        hidden_size=D, num_channels=C, tubelet_size=ts, patch_size=ph if ph == pw else (ph, pw),
        num_hidden_layers=_count(state, P + "encoder.layer."), num_attention_heads=heads,
        intermediate_size=state[layer + "intermediate.dense.weight"].shape[0],
        qkv_bias=layer + "attention.attention.q_bias" in state, use_mean_pooling=not has_norm,
        layer_norm_eps=eps, num_frames=frames, image_size=size, id2label=None,  # labels: set by the caller
    )  # fmt: skip
    if "encoder_to_decoder.weight" in state:
        Dd = state["encoder_to_decoder.weight"].shape[0]
        if decoder_heads is None:
            decoder_heads = DECODER_HEADS_BY_WIDTH.get(Dd)
            origins["decoder_num_attention_heads"] = "standard decoder for this width"
            if decoder_heads is None:
                raise UsageError(
                    f"decoder width {Dd} is not a standard one ({sorted(DECODER_HEADS_BY_WIDTH)}): pass --decoder-heads"
                )
        else:
            origins["decoder_num_attention_heads"] = "--decoder-heads"
        fields.update(
            decoder_hidden_size=Dd, decoder_num_attention_heads=decoder_heads,
            decoder_num_hidden_layers=_count(state, "decoder.decoder_layers."),
            decoder_intermediate_size=state["decoder.decoder_layers.0.intermediate.dense.weight"].shape[0],
        )  # fmt: skip
        out_dim = state["decoder.head.weight"].shape[0]
        if out_dim != C * ts * ph * pw:
            raise ConversionError(f"decoder head predicts {out_dim} values per token, not {C}x{ts}x{ph}x{pw}")
    try:
        return VideoMAEConfig(**fields), origins
    except VmaeError as e:
        raise UsageError(
            f"inferred an invalid config ({e}); check --heads, --num-frames, --image-size"
        ) from None


def _count(state: dict[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise ConversionError(f"layers under {prefix} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _frames_and_size(frames, size, args, table_length, ts, patch, origins) -> tuple[int, int]:
    """Flags win, then the training run's args, then the stored position table's length, then 16 x 224."""
    origins["num_frames"] = origins["image_size"] = "--num-frames/--image-size"
    if frames is None and isinstance(args.get("num_frames"), int):
        frames, origins["num_frames"] = args["num_frames"], "checkpoint args"
    if size is None and isinstance(args.get("input_size"), int):
        size, origins["image_size"] = args["input_size"], "checkpoint args"
    if table_length and (frames is None or size is None):
        if frames is None and size is not None and table_length % (size // patch) ** 2 == 0:
            frames, origins["num_frames"] = ts * table_length // (size // patch) ** 2, "pos_embed length"
        elif size is None:
            side = (table_length / ((frames or DEFAULT_FRAMES) // ts)) ** 0.5
            if side == int(side):
                frames = frames or DEFAULT_FRAMES
                size, origins["image_size"] = int(side) * patch, "pos_embed length"
        if frames is None or size is None:
            raise UsageError(f"pos_embed has {table_length} positions: pass --num-frames and --image-size")
    if frames is None:
        frames, origins["num_frames"] = DEFAULT_FRAMES, "default"
    if size is None:
        size, origins["image_size"] = DEFAULT_IMAGE, "default"
    return frames, size


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


# ---- labels ----------------------------------------------------------------------------------------------
def load_labels(spec: str, num_outputs: int) -> dict[int, str]:
    """`k400`, `ssv2` (bundled lists), or a file: one label per line, or JSON (id2label, label2id or a list)."""
    if spec in LABEL_SETS:
        path = LABELS_DIR / f"{spec}.json"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"--labels {spec}: not one of {', '.join(LABEL_SETS)}, and no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            labels = _json_labels(json.loads(text))
        except (ValueError, TypeError) as e:
            raise UsageError(f"--labels {spec}: not a label list ({e})") from None
    else:
        lines = text.rstrip("\n").split("\n")
        if any(not line.strip() for line in lines):
            raise UsageError(f"--labels {spec}: has an empty line; expected one label per line")
        labels = dict(enumerate(line.strip() for line in lines))
    if num_outputs == 0:
        raise UsageError("--labels given, but this checkpoint has no classifier head")
    if len(labels) != num_outputs:
        raise UsageError(
            f"--labels {spec}: {len(labels)} labels, but the classifier head has {num_outputs} outputs"
        )
    return labels


def _json_labels(data: Any) -> dict[int, str]:
    if isinstance(data, list):
        return dict(enumerate(map(str, data)))
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object or list")
    if all(str(k).isdigit() for k in data):
        labels = {int(k): str(v) for k, v in data.items()}
    else:  # label2id, e.g. the official SSv2 labels.json {"Approaching something ...": "0"}
        labels = {int(v): str(k) for k, v in data.items()}
    if sorted(labels) != list(range(len(labels))):
        raise ValueError("ids are not 0..n-1")
    return labels


# ---- the whole conversion --------------------------------------------------------------------------------
def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    source: str | None = None,
    labels: str | None = None,
    heads: int | None = None,
    decoder_heads: int | None = None,
    num_frames: int | None = None,
    image_size: int | None = None,
    check: bool = False,
    tolerance: float = TOLERANCE,
    force: bool = False,
) -> ConversionResult:
    """Convert `src` into the model folder `dst` (written whole or not at all); `check` runs --verify first."""
    if source is not None and source not in SOURCES:
        raise UsageError(f"--from {source}: choose one of {', '.join(SOURCES)}")
    dst = Path(dst)
    _check_destination(dst, force)
    ckpt = read_checkpoint(src)
    detected = detect_source(ckpt.state, ckpt.args)
    source = source or detected
    notes, origins = [], {}
    if source == "hf":
        hf_state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v
                    for k, v in normalize_keys(ckpt.state).items()}  # fmt: skip
        if detected != "hf":
            raise ConversionError(f"{src}: --from hf, but the keys are in the {detected} layout")
        info: dict[str, Any] = {"folded": 0, "dropped": [], "tables": {}}
        original = None
    else:
        if detected == "hf":
            raise ConversionError(f"{src}: --from {source}, but the keys are transformers' (use --from hf)")
        original = ckpt.state
        hf_state, info = original_to_hf(original)
    for name, table in info["tables"].items():
        check_position_table(table, f"{name} pos_embed")
    layout = layout_of(hf_state)
    if source == "hf" and ckpt.config is not None:
        config, eps, head_eps = ckpt.config, ckpt.config.layer_norm_eps, 1e-5
        origins["config"] = "config.json beside the weights"
        changes = {k: v for k, v in (("num_frames", num_frames), ("image_size", image_size),
                                     ("num_attention_heads", heads), ("decoder_num_attention_heads", decoder_heads))
                   if v is not None}  # fmt: skip
        config = config.replace(**changes) if changes else config
    else:
        eps = ORIGINAL_EPS if source != "hf" else VideoMAEConfig.layer_norm_eps
        head_eps = ORIGINAL_EPS if source != "hf" else 1e-5
        tables = info["tables"]
        table_length = tables.get("encoder") if "encoder" in tables else tables.get("decoder")
        config, origins = infer_config(
            hf_state, eps=eps, heads=heads, decoder_heads=decoder_heads, num_frames=num_frames,
            image_size=image_size, args=ckpt.args,
            table_length=table_length.shape[-2] if table_length is not None else None,
        )  # fmt: skip
    num_outputs = hf_state["classifier.weight"].shape[0] if layout == "classifier" else 0
    if labels is not None:
        config = config.replace(id2label=load_labels(labels, num_outputs))
        origins["labels"] = labels
    elif num_outputs and (config.id2label is None or config.num_labels != num_outputs):
        config = config.replace(id2label={i: f"LABEL_{i}" for i in range(num_outputs)})
        origins["labels"] = "generic names LABEL_i"
        data_set = ckpt.args.get("data_set")
        notes.append("class names are LABEL_i: pass --labels k400|ssv2|FILE for real names"
                     + (f" (the training run's args say data_set={data_set})" if data_set else ""))  # fmt: skip
    if source != "hf":
        notes.append("LayerNorm eps 1e-6 as the original; transformers fixes fc_norm/decoder.norm at 1e-5 (~1e-5 "
                     "difference in outputs)")  # fmt: skip
    if info["folded"]:
        notes.append(
            f"layer scale (gamma_1/gamma_2) of {info['folded']} blocks folded into attn.proj and mlp.fc2"
        )

    architecture = ARCHITECTURES[layout]
    model = _build(architecture, config, hf_state, str(src))
    preprocessor = (
        ckpt.preprocessor if ckpt.preprocessor and image_size is None else preprocessor_config(config)
    )
    result = ConversionResult(
        src=str(src), dst=str(dst), source=source, layout=layout, architecture=architecture,
        config=_config_summary(config, layout), origins=origins, tensors=len(hf_state),
        parameters=sum(p.numel() for p in model.parameters()), folded_layer_scale=info["folded"],
        dropped=info["dropped"], notes=notes,
    )  # fmt: skip

    def verify_written(folder: Path) -> None:
        written = MODEL_CLASSES[architecture].from_pretrained(folder)
        reference_state = original if original is not None else hf_to_original(hf_state)
        result.max_abs_diff = verify(written, reference_state, config, eps, head_eps)
        result.tolerance = tolerance
        if not result.max_abs_diff <= tolerance:
            # Tell a wrong mapping from the known residual: the same reference with transformers' head eps.
            same_eps = verify(written, reference_state, config, eps, 1e-5)
            raise ConversionError(
                f"verification failed: the converted model differs from the original forward by up to "
                f"{result.max_abs_diff:.3g} (tolerance {tolerance:g}; {same_eps:.3g} with transformers' fc_norm/"
                f"decoder.norm eps 1e-5, so the rest is that eps difference); nothing was written to {dst}"
            )

    write_model_folder(model, dst, preprocessor, force, verify_written if check else None)
    return result


def _check_destination(dst: Path, force: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise UsageError(f"{dst}: folder exists and is not empty; pass --force to replace it")


def _build(architecture: str, config: VideoMAEConfig, state: dict[str, torch.Tensor], source: str):
    with torch.device("meta"):
        model = MODEL_CLASSES[architecture](config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]  # fmt: skip
    if missing or unexpected or wrong:
        parts = [f"{what}: {listing(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]  # fmt: skip
        raise ConversionError(f"{source}: weights do not fit a {architecture} ({'; '.join(parts)})")
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, assign=True)
    model._init_buffers()
    return model.eval()


def preprocessor_config(config: VideoMAEConfig) -> dict[str, Any]:
    """The standard VideoMAE preprocessing (ImageNet mean/std, resize the short side, center crop) at this size."""
    h, w = config.image_hw
    return {
        "crop_size": {"height": h, "width": w}, "do_center_crop": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": list(IMAGENET_DEFAULT_MEAN),
        "image_processor_type": "VideoMAEImageProcessor", "image_std": list(IMAGENET_DEFAULT_STD),
        "resample": 2, "rescale_factor": 1 / 255, "size": {"shortest_edge": min(h, w)},
    }  # fmt: skip


def write_model_folder(model, dst: Path, preprocessor: dict, force: bool, check=None) -> None:
    """Save into a temporary sibling folder, run `check` on it, then rename it to `dst` (replacing it if forced)."""
    _check_destination(dst, force)
    with atomic_folder(dst) as tmp:
        model.save_pretrained(tmp, preprocessor=preprocessor)
        if check is not None:
            check(tmp)


def _config_summary(config: VideoMAEConfig, layout: str) -> dict[str, Any]:
    out = {k: getattr(config, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
        "tubelet_size", "num_frames", "image_size", "qkv_bias", "use_mean_pooling", "layer_norm_eps")}  # fmt: skip
    out["num_labels"] = config.num_labels
    if layout == "pretraining":
        out.update(
            {
                k: getattr(config, k)
                for k in (
                    "decoder_hidden_size",
                    "decoder_num_hidden_layers",
                    "decoder_num_attention_heads",
                    "decoder_intermediate_size",
                )
            }
        )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
