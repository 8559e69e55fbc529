"""Loading and saving a model in the Hugging Face layout: `from_pretrained` / `save_pretrained`.

Keys are matched exactly: a key that is missing or left over is an error that names it, except for the head
swaps transformers also allows (an encoder out of a classifier or a pre-training checkpoint; a new classifier
head on a pre-trained encoder). Where the files are is hub.py's business, reading them weights.py's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, listing
from ..files import atomic_path, atomic_write_text
from ..hub import PREPROCESSOR_NAME, SAFE_WEIGHTS, ResolvedModel, resolve
from ..jsonfile import dumps, read_object
from ..runtime import as_dtype
from . import prepared
from .config import VideoMAEConfig, warn_about_label_gaps
from .weights import cast_weights, check_config_fits_weights, load_weights, read_tensor_infos

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Keys a checkpoint may carry for a head the target model does not have (and may therefore be dropped).
PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")
CLASSIFIER_ONLY = ("fc_norm.", "classifier.")


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
            parts.append(f"missing {len(bad_missing)} key(s): {listing(bad_missing)}")
        if bad_unexpected:
            parts.append(f"unexpected {len(bad_unexpected)} key(s): {listing(bad_unexpected)}")
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
        dtype = as_dtype(dtype)
        infos, state = read_tensor_infos(found.weights)
        check_config_fits_weights(
            config, infos, found.config_path if from_file else None, decoder=cls.has_decoder,
            labels=cls.has_classifier and not ignore_mismatched_sizes,
            skip=frozenset(config_changes) | ({"id2label"} if "num_labels" in config_changes else set()),
        )  # fmt: skip
        if state is None:
            state = load_weights(found.weights)
            state.update(prepared.take(found.weights, dtype, state))  # bf16, converted while torch imported
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
        if found.preprocessor_path is not None:  # carried as it is; video.preprocess checks it before use
            model.preprocessor_config = read_object(found.preprocessor_path)
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
            text = dumps(  # strict JSON: a NaN or infinity is refused, naming the field
                pre, name=PREPROCESSOR_NAME, indent=2, sort_keys=True, ensure_ascii=True
            )
            atomic_write_text(folder / PREPROCESSOR_NAME, text + "\n")
        return folder
