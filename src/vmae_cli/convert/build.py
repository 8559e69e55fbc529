"""Foreign VideoMAE checkpoints -> a model folder in the Hugging Face layout (`vmae convert`).

The layout is read and renamed by layouts.py (`source=` forces original, v2 or hf); here the config is
inferred from tensor shapes, class names attached, and the folder written whole (verified first if asked).
LayerNorm eps is the original's 1e-6 (transformers hard-codes 1e-5 for `fc_norm` and `decoder.norm`: outputs
differ from the original by ~1e-5).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError, VmaeError, listing, option, spell
from ..files import atomic_folder
from ..models.config import VideoMAEConfig
from ..models.labelsets import LABEL_SETS, LABELS_DIR
from ..models.loading import normalize_keys
from ..models.modeling import MODEL_CLASSES
from ..models.targets import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .layouts import (
    ARCHITECTURES,
    ConversionError,
    check_position_table,
    detect_source,
    layout_of,
    original_to_hf,
    read_checkpoint,
)
from .reference import ORIGINAL_EPS, hf_to_original, verify

SOURCES = ("original", "v2", "hf")
DEFAULT_FRAMES, DEFAULT_IMAGE = 16, 224
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}  # ViT-S/B/L/H/g
DECODER_HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 640: 8}  # pre-training decoders of S/B/L(v2 H, g)/H
TOLERANCE = 1e-4

# heads parameter -> (config field, width -> standard heads, where such a guess comes from, an odd width)
_HEADS = {
    "heads": ("num_attention_heads", HEADS_BY_WIDTH, "standard ViT for this width",
              "hidden size {} is not a standard ViT width"),
    "decoder_heads": ("decoder_num_attention_heads", DECODER_HEADS_BY_WIDTH, "standard decoder for this width",
                      "decoder width {} is not a standard one"),
}  # fmt: skip


@dataclass
class ConversionResult:
    src: str
    dst: str
    source: str  # original | v2 | hf
    layout: str  # pretraining | classifier | encoder
    architecture: str
    config: dict[str, Any]
    origins: dict[str, str]  # where each value came from: a guess, or the parameter that gave it
    tensors: int
    parameters: int
    folded_layer_scale: int = 0  # blocks whose gamma_1/gamma_2 were folded
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def given_by(*params: str) -> str:
    """The origin of a value that the caller passed: its parameter(s), spelled as this process shows them
    (`errors.spelled`: the CLI's summary names its flags)."""
    return "/".join(spell(option(p)) for p in params)


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
    heads = _heads("heads", heads, D, origins)
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
        decoder_heads = _heads("decoder_heads", decoder_heads, Dd, origins)
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
            f"inferred an invalid config ({e.render(option)}); check {option('heads')}, {option('num_frames')}, "
            f"{option('image_size')}"
        ) from None


def _heads(param: str, given: int | None, width: int, origins: dict[str, str]) -> int:
    """Attention heads of the encoder (`heads`) or decoder (`decoder_heads`): `given`, else the standard count for
    this width; `origins` records which."""
    key, by_width, standard, odd = _HEADS[param]
    if given is not None:
        origins[key] = given_by(param)
        return given
    origins[key] = standard
    if width not in by_width:
        raise UsageError(f"{odd.format(width)} ({sorted(by_width)}): pass {option(param)}", param=param)
    return by_width[width]


def _count(state: dict[str, Any], prefix: str) -> int:
    found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    if found != set(range(len(found))):
        raise ConversionError(f"layers under {prefix} are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _frames_and_size(frames, size, args, table_length, ts, patch, origins) -> tuple[int, int]:
    """The caller's values win, then the training run's args, then the stored position table's length, then
    16 x 224."""
    origins["num_frames"] = origins["image_size"] = given_by("num_frames", "image_size")
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
            raise UsageError(
                f"pos_embed has {table_length} positions: pass {option('num_frames')} and {option('image_size')}",
                param="num_frames" if frames is None else "image_size",
            )
    if frames is None:
        frames, origins["num_frames"] = DEFAULT_FRAMES, "default"
    if size is None:
        size, origins["image_size"] = DEFAULT_IMAGE, "default"
    return frames, size


# ---- labels ----------------------------------------------------------------------------------------------
def load_labels(spec: str, num_outputs: int) -> dict[int, str]:
    """`k400`, `ssv2` (bundled lists), or a file: one label per line, or JSON (id2label, label2id or a list)."""
    path = LABELS_DIR / f"{spec}.json" if spec in LABEL_SETS else Path(spec).expanduser()
    named, fields = f"{option('labels')} {spec}", {"param": "labels", "value": spec, "path": path}
    if spec not in LABEL_SETS and not path.is_file():
        raise UsageError(
            f"{named}: not one of {', '.join(LABEL_SETS)}, and no such file", allowed=LABEL_SETS, **fields
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            labels = _json_labels(json.loads(text))
        except (ValueError, TypeError) as e:
            raise UsageError(f"{named}: not a label list ({e})", **fields) from None
    else:
        lines = text.rstrip("\n").split("\n")
        if any(not line.strip() for line in lines):
            raise UsageError(f"{named}: has an empty line; expected one label per line", **fields)
        labels = dict(enumerate(line.strip() for line in lines))
    if num_outputs == 0:
        raise UsageError(f"{option('labels')} given, but this checkpoint has no classifier head", **fields)
    if len(labels) != num_outputs:
        raise UsageError(
            f"{named}: {len(labels)} labels, but the classifier head has {num_outputs} outputs",
            allowed=f"{num_outputs} labels", **fields,
        )  # fmt: skip
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
    """Convert `src` into the model folder `dst` (written whole or not at all). With `check`, the written model
    is first compared with the original forward, and nothing is written if they differ by more than `tolerance`."""
    if source is not None and source not in SOURCES:
        raise UsageError(
            f"{option('source')} {source}: choose one of {', '.join(SOURCES)}",
            param="source",
            value=source,
            allowed=SOURCES,
        )
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
            raise ConversionError(f"{src}: {option('source')} hf, but the keys are in the {detected} layout")
        info: dict[str, Any] = {"folded": 0, "dropped": [], "tables": {}}
        original = None
    else:
        if detected == "hf":
            raise ConversionError(
                f"{src}: {option('source')} {source}, but the keys are transformers' (use {option('source')} hf)"
            )
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
        notes.append(spell(f"class names are LABEL_i: pass {option('labels')} k400|ssv2|FILE for real names")
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
        raise UsageError(f"{dst}: exists and is not a folder", param="dst", value=str(dst), path=dst)
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise UsageError(
            f"{dst}: folder exists and is not empty; pass {option('force')} to replace it",
            param="dst",
            value=str(dst),
            path=dst,
        )


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
        decoder = ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                   "decoder_intermediate_size")  # fmt: skip
        out.update({k: getattr(config, k) for k in decoder})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
