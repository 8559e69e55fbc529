"""Resolve a model reference (folder, weight file, Hub id) and load or save weights in the Hugging Face layout.

Pickled weights are only ever read with `torch.load(weights_only=True)`. Keys are matched exactly: a key
that is missing or left over is an error that names it, except for the head swaps transformers also allows
(an encoder out of a classifier or a pre-training checkpoint; a new classifier head on a pre-trained encoder).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, FieldError, ModelNotFoundError
from ..files import atomic_path, atomic_write_text
from .config import CONFIG_NAME, VideoMAEConfig, warn_about_label_gaps

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PREPROCESSOR_NAME = "preprocessor_config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
WEIGHT_CANDIDATES = (SAFE_WEIGHTS, SAFE_INDEX, PT_WEIGHTS, PT_INDEX)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")

# Keys a checkpoint may carry for a head the target model does not have (and may therefore be dropped).
PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")
CLASSIFIER_ONLY = ("fc_norm.", "classifier.")


@dataclass
class ResolvedModel:
    """Local files of a model: its folder, config, weight files (one, or shards) and preprocessor config."""

    source: str
    folder: Path
    config_path: Path
    weights: list[Path]
    preprocessor_path: Path | None


def resolve(ref: str | os.PathLike, revision: str | None = None, weights: bool = True) -> ResolvedModel:
    """Find a model's files: a local folder, a weight file inside one, or a Hub id (through the HF cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return _resolve_folder(path, str(ref), weights)
    if path.is_file():
        if path.name == CONFIG_NAME:
            return _resolve_folder(path.parent, str(ref), weights)
        if path.suffix in (".safetensors", ".bin", ".json"):
            found = _resolve_folder(path.parent, str(ref), weights=False)
            found.weights = _expand_index(path) if path.suffix == ".json" else [path]
            return found
        raise CheckpointError(
            f"{ref}: not a model folder or weight file; for an original VideoMAE checkpoint run "
            f"`vmae convert {ref} OUT_DIR` first"
        )
    ref = str(ref)
    if _HUB_ID.match(ref) and ".." not in ref:
        return _resolve_hub(ref, revision, weights)
    raise ModelNotFoundError(f"{ref}: no such file or folder")


def _resolve_folder(folder: Path, source: str, weights: bool) -> ResolvedModel:
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise ModelNotFoundError(
            f"{folder}: no {CONFIG_NAME} here, so it is not a model folder (expected {CONFIG_NAME} and "
            f"{SAFE_WEIGHTS}); for an original VideoMAE .pth file run `vmae convert`"
        )
    files: list[Path] = []
    if weights:
        for name in WEIGHT_CANDIDATES:
            if (folder / name).is_file():
                files = _expand_index(folder / name) if name.endswith(".json") else [folder / name]
                break
        else:
            raise ModelNotFoundError(
                f"{folder}: no weights ({SAFE_WEIGHTS} or {PT_WEIGHTS}) beside {CONFIG_NAME}"
            )
    pre = folder / PREPROCESSOR_NAME
    return ResolvedModel(source, folder, config, files, pre if pre.is_file() else None)


def _read_index(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
    return sorted(set(weight_map.values()))


def _expand_index(index: Path) -> list[Path]:
    shards = [index.parent / name for name in _read_index(index)]
    absent = [s.name for s in shards if not s.is_file()]
    if absent:
        raise ModelNotFoundError(f"{index}: shard files are missing: {', '.join(absent)}")
    return shards


def _resolve_hub(repo_id: str, revision: str | None, weights: bool) -> ResolvedModel:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    offline_hint = (
        f"it is not in the local Hugging Face cache ({_cache_dir()}) and the Hub cannot be reached"
        f"{' (HF_HUB_OFFLINE is set)' if _offline() else ''}: download it once with network access "
        f"(`hf download {repo_id}`), or pass a local model folder"
    )

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(repo_id, name, revision=revision))

    try:
        config = fetch(CONFIG_NAME)
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{where}: gated model; accept its terms on the Hub and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{where}: not a local folder, and no such model on the Hugging Face Hub (check the name, or log in "
            "for a private model)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{where}: no such revision on the Hub") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(f"{where}: not a local folder, and {offline_hint}") from None
    except EntryNotFoundError:
        raise ModelNotFoundError(
            f"{where}: the Hub repository has no {CONFIG_NAME}; is it a VideoMAE model?"
        ) from None
    except HfHubHTTPError as e:
        raise ModelNotFoundError(
            f"{where}: the Hub answered an error ({e.__class__.__name__}); try again later"
        ) from None

    files: list[Path] = []
    missing_locally = False
    if weights:
        for name in WEIGHT_CANDIDATES:
            try:
                first = fetch(name)
            except LocalEntryNotFoundError:
                missing_locally = True
                continue
            except EntryNotFoundError:
                continue
            files = [fetch(shard) for shard in _read_index(first)] if name.endswith(".json") else [first]
            break
        if not files:
            if missing_locally:
                raise ModelNotFoundError(f"{where}: weights missing, {offline_hint}")
            raise ModelNotFoundError(
                f"{where}: the repository has no weights ({SAFE_WEIGHTS} or {PT_WEIGHTS})"
            )
    try:
        pre: Path | None = fetch(PREPROCESSOR_NAME)
    except (EntryNotFoundError, HfHubHTTPError):
        pre = None
    return ResolvedModel(repo_id, config.parent, config, files, pre)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


# ---- reading weights -------------------------------------------------------------------------------------
def load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint (safetensors, or pickled .bin through weights_only) onto the CPU."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_load_safetensors(file) if file.suffix == ".safetensors" else _load_pickle(file))
    return state


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(file, e) from None


def cast_weights(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The floating-point tensors of `state` in `dtype` (the others as they are), converted on one thread.

    Safetensors files are memory-mapped, so each tensor is read once, straight into `dtype`. Converting is
    memory-bound: more threads gain little, and on a busy machine each of the ~200 multi-threaded conversions
    waits for a second core to be free (ViT-B fp32 -> bf16 on 2 loaded cores: 0.75 s on 2 threads, 0.06 s on 1).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    finally:
        torch.set_num_threads(threads)


def _damaged(file: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{file}: damaged or truncated safetensors file ({e}); download or save the model again"
    )


# ---- the config against the weights ------------------------------------------------------------------------
@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors' names: F32, BF16, I32...
    file: Path


def read_tensor_infos(files: list[Path]) -> tuple[dict[str, TensorInfo], dict[str, torch.Tensor] | None]:
    """Shape and dtype of every tensor: from the safetensors headers alone (no tensor data is read), or
    from the loaded tensors of pickled files (which have no header to read apart; returned too, to reuse)."""
    if all(f.suffix == ".safetensors" for f in files):
        from safetensors import SafetensorError, safe_open

        infos = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                        part = f.get_slice(name)
                        infos[name] = TensorInfo(tuple(part.get_shape()), part.get_dtype(), file)
            except (SafetensorError, OSError, ValueError) as e:
                raise _damaged(file, e) from None
        return infos, None
    state: dict[str, torch.Tensor] = {}
    infos = {}
    for file in files:
        part = load_weights([file])
        infos.update({k: TensorInfo(tuple(v.shape), _dtype_name(v), file) for k, v in part.items()})
        state.update(part)
    return infos, state


def _dtype_name(tensor: torch.Tensor) -> str:
    """safetensors' name for a floating-point dtype (F32, BF16...), torch's for the others (int32...)."""
    name = str(tensor.dtype).removeprefix("torch.")
    if not tensor.is_floating_point():
        return name
    return "BF16" if name == "bfloat16" else f"F{tensor.element_size() * 8}"


_LAYER = re.compile(r"^(?:videomae\.)?encoder\.layer\.(\d+)\.")
_DECODER_LAYER = re.compile(r"^decoder\.decoder_layers\.(\d+)\.")


def check_config_fits_weights(
    config: VideoMAEConfig,
    infos: dict[str, TensorInfo],
    config_path: Path | None,
    *,
    decoder: bool,
    labels: bool,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Compare a config with what the weights' shapes say, field by field, before the model is built:
    a config.json that claims a million layers is refused at once, not after building them.

    `config_path`: the config.json the config was read from (None: the caller built it); `decoder`: the
    model has the pre-training decoder; `labels`: its classifier must fit the file's; `skip`: fields the
    caller replaced on purpose.
    """
    for name, info in infos.items():
        if not info.dtype.startswith(("F", "BF")):
            raise FieldError(
                f"tensor {name} is {info.dtype}, but VideoMAE weights are floating point (F32, F16 or BF16); "
                "save the model again from its original",
                field=name, value=info.dtype, allowed="F32, F16, BF16", path=info.file,
            )  # fmt: skip

    def tensor(key: str, *, prefixed: bool = True) -> tuple[str, TensorInfo] | tuple[None, None]:
        for k in (key, f"videomae.{key}") if prefixed else (key,):
            if k in infos:
                return k, infos[k]
        return None, None

    facts = []  # (field, the config's value, the weights' value, what says so)
    key, proj = tensor("embeddings.patch_embeddings.projection.weight")
    if proj is not None and len(proj.shape) == 5:
        d, c, ts, ph, pw = proj.shape
        why = f"{key} has shape {proj.shape}"
        facts += [("hidden_size", config.hidden_size, d, why), ("num_channels", config.num_channels, c, why),
                  ("tubelet_size", config.tubelet_size, ts, why), ("patch_size", config.patch_hw, (ph, pw), why)]  # fmt: skip
    facts += _depth("num_hidden_layers", config.num_hidden_layers, _LAYER, infos, "encoder.layer")
    key, mlp = tensor("encoder.layer.0.intermediate.dense.weight")
    if mlp is not None:
        facts.append(
            ("intermediate_size", config.intermediate_size, mlp.shape[0], f"{key} has shape {mlp.shape}")
        )
    key, head = tensor("classifier.weight", prefixed=False)
    if labels and head is not None and config.id2label is not None:
        facts.append(("id2label", config.num_labels, head.shape[0], f"{key} has shape {head.shape}"))
    if decoder:
        key, bridge = tensor("encoder_to_decoder.weight", prefixed=False)
        if bridge is not None:
            facts.append(("decoder_hidden_size", config.decoder_hidden_size, bridge.shape[0],
                          f"{key} has shape {bridge.shape}"))  # fmt: skip
        facts += _depth("decoder_num_hidden_layers", config.decoder_num_hidden_layers, _DECODER_LAYER, infos,
                        "decoder.decoder_layers")  # fmt: skip
        key, mlp = tensor("decoder.decoder_layers.0.intermediate.dense.weight", prefixed=False)
        if mlp is not None:
            facts.append(("decoder_intermediate_size", config.decoder_intermediate_size, mlp.shape[0],
                          f"{key} has shape {mlp.shape}"))  # fmt: skip
    weights = next(iter(infos.values())).file.name if infos else "the weights"
    for field_name, ours, theirs, why in facts:
        if ours != theirs and field_name not in skip:
            shown = f"{len(config.id2label)} labels" if field_name == "id2label" else ours
            hint = (
                "is config.json from this model?" if config_path else "the config does not fit these weights"
            )
            raise FieldError(
                f"{field_name} is {shown}, but {weights} holds {theirs} ({why}); {hint}",
                field=field_name, value=ours, allowed=theirs, path=config_path,
            )  # fmt: skip


def _depth(field_name: str, ours: int, pattern: re.Pattern, infos: dict, what: str) -> list[tuple]:
    found = {int(m.group(1)) for k in infos if (m := pattern.match(k))}
    if not found:
        return []
    return [(field_name, ours, max(found) + 1, f"{what}.0 .. {what}.{max(found)}")]


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file}: holds pickled Python objects besides tensors, which vmae never unpickles; "
            f"run `vmae convert {file} OUT_DIR` to bring it in safely"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{file}: damaged or not a PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{file}: not a flat state dict of tensors; for an original VideoMAE checkpoint run `vmae convert`"
        )
    return obj


# ---- matching keys ---------------------------------------------------------------------------------------
def normalize_keys(state: dict[str, Any]) -> dict[str, Any]:
    """transformers 5.x in-memory names -> on-disk names; drop the fixed position tables if present."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_embeddings"):
            continue  # fixed sinusoid tables, recomputed from the config
        key = key.replace(".attention.attention.query.bias", ".attention.attention.q_bias")
        key = key.replace(".attention.attention.value.bias", ".attention.attention.v_bias")
        out[key] = value
    return out


def _short(keys: list[str], n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def match_state_dict(
    model, state: dict[str, Any], source: str, ignore_mismatched_sizes: bool = False
) -> tuple[dict, dict[str, list]]:
    """Fit a checkpoint's keys to `model`, allowing only the head swaps transformers allows.

    Returns the state dict to load, and transformers' loading info: `missing_keys` (heads to initialise; a
    warning names them), `unexpected_keys` (left out), `mismatched_keys` ((key, file shape, model shape) of a
    classifier replaced under `ignore_mismatched_sizes`) and `error_msgs` (empty).
    Raises CheckpointError naming any other missing, unexpected or wrongly shaped key.
    """
    state = normalize_keys(state)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    is_base = not hasattr(model, "videomae")
    has_prefix = any(k.startswith("videomae.") for k in state)
    dropped: list[str] = []
    if is_base and has_prefix:  # encoder out of a classifier / pre-training checkpoint
        dropped = [k for k in state if not k.startswith("videomae.")]
        state = {k[len("videomae.") :]: v for k, v in state.items() if k.startswith("videomae.")}
    elif not is_base and not has_prefix:  # a bare encoder checkpoint under a head model
        state = {f"videomae.{k}": v for k, v in state.items()}

    allowed_missing: tuple[str, ...] = ()
    allowed_unexpected: tuple[str, ...] = ()
    is_classifier = hasattr(model, "classifier")
    ckpt_has_head = any(k.startswith(CLASSIFIER_ONLY) for k in state)
    if is_classifier:
        allowed_unexpected = PRETRAINING_ONLY
        if not ckpt_has_head:  # pre-trained encoder -> new classifier (and its own final norm choice)
            allowed_missing = CLASSIFIER_ONLY
            allowed_unexpected += ("videomae.layernorm.",)
        elif not any(k.startswith("classifier.") for k in state):  # a 0-label classifier: fc_norm only
            allowed_missing = ("classifier.",)
    elif model.has_decoder and not any(k.startswith(PRETRAINING_ONLY) for k in state):
        # an encoder or a classifier under the pre-training model: a new decoder, as transformers allows (only
        # when the file has none of it: a partial decoder is a damaged checkpoint)
        allowed_missing, allowed_unexpected = PRETRAINING_ONLY, CLASSIFIER_ONLY

    mismatched = [k for k in state if k in expected and tuple(state[k].shape) != expected[k]]
    replaced = []
    if mismatched and ignore_mismatched_sizes and all(k.startswith("classifier.") for k in mismatched):
        replaced = [(k, tuple(state.pop(k).shape), expected[k]) for k in mismatched]
        allowed_missing += ("classifier.",)
        mismatched = []
    if mismatched:
        detail = "; ".join(
            f"{k}: {tuple(state[k].shape)} in the file, {expected[k]} in the model" for k in mismatched[:4]
        )
        raise CheckpointError(
            f"{source}: weights do not fit the config ({detail}); is config.json from this model?"
        )

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad_missing = [k for k in missing if not k.startswith(allowed_missing)] if allowed_missing else missing
    bad_unexpected = (
        [k for k in unexpected if not k.startswith(allowed_unexpected)] if allowed_unexpected else unexpected
    )
    if bad_missing or bad_unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing {len(bad_missing)} key(s): {_short(bad_missing)}")
        if bad_unexpected:
            parts.append(f"unexpected {len(bad_unexpected)} key(s): {_short(bad_unexpected)}")
        raise CheckpointError(
            f"{source}: checkpoint does not match {type(model).__name__} ({'; '.join(parts)}); "
            "a foreign layout can be brought in with `vmae convert`"
        )
    for k in unexpected:
        state.pop(k)
    if missing:
        log.warning(
            "%s: some weights of %s were not in the checkpoint and are newly initialised: %s; train it "
            "(vmae pretrain, vmae finetune) before trusting its outputs",
            source, type(model).__name__, _grouped(missing),
        )  # fmt: skip
    if dropped:
        log.info("%s: kept the encoder, ignored %d head key(s)", source, len(dropped))
    info = {"missing_keys": missing, "unexpected_keys": unexpected + dropped, "mismatched_keys": replaced}
    return state, {**info, "error_msgs": []}


def _grouped(keys: list[str]) -> str:
    """Keys by module, for a message: `decoder.* (26 keys), encoder_to_decoder.weight, mask_token`."""
    groups: dict[str, list[str]] = {}
    for k in sorted(keys):
        groups.setdefault(k.split(".")[0], []).append(k)
    return ", ".join(
        ", ".join(ks) if len(ks) <= 2 else f"{head}.* ({len(ks)} keys)" for head, ks in groups.items()
    )


# ---- the mixin the models inherit -----------------------------------------------------------------------
class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` in the Hugging Face layout."""

    preprocessor_config: dict | None = None
    resolved: ResolvedModel | None = None  # the files from_pretrained read (provenance names them)
    has_classifier = False  # True for VideoMAEForVideoClassification
    has_decoder = False  # True for VideoMAEForPreTraining

    @classmethod
    def from_pretrained(
        cls,
        ref: str | os.PathLike,
        revision: str | None = None,
        *,
        config: VideoMAEConfig | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        attn_implementation: str = "sdpa",
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        model_kwargs: dict | None = None,
        **config_changes: Any,
    ):
        """Load a model from a folder, a weight file, or a Hub id (`MCG-NJU/videomae-base-finetuned-kinetics`).

        `config_changes` replace config fields (e.g. `id2label=...` or `num_labels=N` for a new head, with
        `ignore_mismatched_sizes=True` when a classifier's label count changes). `dtype` defaults to float32.
        `output_loading_info=True` returns (model, info) as transformers does: `missing_keys` (newly initialised,
        e.g. the decoder of a pre-training model loaded from an encoder), `unexpected_keys`, `mismatched_keys`.
        """
        import torch

        found = resolve(ref, revision)
        from_file = config is None
        if config is None:
            config = VideoMAEConfig.from_json_file(found.config_path)
        if config_changes:
            config = config.replace(**config_changes)
        dtype = _as_dtype(dtype)
        infos, state = read_tensor_infos(found.weights)
        check_config_fits_weights(
            config, infos, found.config_path if from_file else None, decoder=cls.has_decoder,
            labels=cls.has_classifier and not ignore_mismatched_sizes,
            skip=frozenset(config_changes) | ({"id2label"} if "num_labels" in config_changes else set()),
        )  # fmt: skip
        if state is None:
            state = load_weights(found.weights)
        if cls.has_classifier and config.id2label is None:
            # A config.json without labels or architectures (transformers then builds two outputs): a
            # classifier in the file says how many, named as transformers names them.
            head = state.get("classifier.weight")
            if head is not None and head.ndim == 2:
                config = config.replace(id2label={i: f"LABEL_{i}" for i in range(head.shape[0])})
        if cls.has_classifier:
            warn_about_label_gaps(config, found.config_path)
        with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
            model = cls(config, **(model_kwargs or {}))
        state, info = match_state_dict(model, state, found.source, ignore_mismatched_sizes)
        state = cast_weights(state, dtype)
        model.load_state_dict(state, strict=False, assign=True)
        for module in model.modules():  # heads the checkpoint lacked: materialise and initialise them
            if any(p.is_meta for p in module.parameters(recurse=False)):
                module.to_empty(device="cpu", recurse=False)
                model._init_module(module)
                module.to(dtype)
        model._init_buffers()
        if found.preprocessor_path is not None:
            from ..video.preprocess import read_config

            model.preprocessor_config = read_config(found.preprocessor_path, config)
        model.resolved = found
        model.set_attn_implementation(attn_implementation)
        model.eval()
        model = model.to(device) if device is not None else model
        return (model, info) if output_loading_info else model

    def save_pretrained(self, folder: str | os.PathLike, preprocessor: Any = None) -> Path:
        """Write config.json, model.safetensors and (when known) preprocessor_config.json, each atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / SAFE_WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        dtype = next(iter(state.values())).dtype
        config = self.config.replace(
            architectures=[type(self).__name__], dtype=str(dtype).removeprefix("torch.")
        )
        if self.has_classifier and config.id2label is None:  # no head: an explicit empty map, else
            config = config.replace(id2label={})  # transformers would build its default two outputs
        config.save_pretrained(folder)
        pre = preprocessor if preprocessor is not None else self.preprocessor_config
        if pre is not None:
            pre = pre.to_dict() if hasattr(pre, "to_dict") else pre
            from ..jsonfile import dumps  # strict JSON: a NaN or infinity is refused, naming the field

            text = dumps(pre, name=PREPROCESSOR_NAME, indent=2, sort_keys=True, ensure_ascii=True)
            atomic_write_text(folder / PREPROCESSOR_NAME, text + "\n")
        return folder


def _as_dtype(dtype) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
    return names[dtype]
