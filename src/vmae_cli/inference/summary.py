"""A model's summary for `vmae info`: read from its config and weight headers, without loading weights."""

from __future__ import annotations

from typing import Any

from ..hub import resolve
from ..jsonfile import read_object
from ..models.config import VideoMAEConfig, preset_names
from ..models.weights import check_config_fits_weights, read_tensor_infos


def size_name(config: VideoMAEConfig) -> str:
    """The preset whose encoder shape this config shares ('base', 'large', ...), else 'custom'."""
    for name in preset_names():
        p = VideoMAEConfig.from_preset(name)
        if (p.hidden_size, p.num_hidden_layers, p.num_attention_heads) == (
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
        ):
            return name
    return "custom"


def architecture(config: VideoMAEConfig) -> str:
    if config.architectures:
        return config.architectures[0]
    return "VideoMAEForVideoClassification" if config.num_labels else "VideoMAEModel"


def model_summary(ref: str, revision: str | None = None) -> dict[str, Any]:
    from ..models.modeling import count_parameters
    from .defaults import model_sampling
    from .tasks import classify_pooling, embed_pooling

    found = resolve(ref, revision)
    config = VideoMAEConfig.from_json_file(found.config_path)
    pre = read_object(found.preprocessor_path) if found.preprocessor_path else None
    arch = architecture(config)
    _check_weights(found, config, arch)
    sampling, evidence = model_sampling(config, pre)
    h, w = config.image_hw
    labels = [config.id2label[i] for i in sorted(config.id2label or {})]
    return {
        "model": found.source,
        "folder": str(found.folder),
        "architecture": arch,
        "size": size_name(config),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "frames": config.num_frames,
        "tubelet_size": config.tubelet_size,
        "image_size": [h, w],
        "patch_size": list(config.patch_hw),
        "tokens": config.num_patches,
        "pooling": {"classify": classify_pooling(config), "embed": embed_pooling(config)},
        "num_labels": config.num_labels,
        "labels": labels[:5] + (["..."] if len(labels) > 5 else []),
        "parameters": count_parameters(config, arch),
        "weights": [p.name for p in found.weights],
        "sampling": sampling.to_dict(),  # what classify and embed sample by default
        "sampling_from": evidence,
    }


def _check_weights(found, config: VideoMAEConfig, arch: str) -> None:
    """Refuse a model that classify or embed would refuse: weights that are damaged or do not fit config.json.

    Only safetensors headers are read (no tensor data), so `vmae info` stays fast; pickled .bin files have
    no header to read apart from their tensors, and are left to the commands that load them.
    """
    if not found.weights or not all(f.suffix == ".safetensors" for f in found.weights):
        return
    infos, _ = read_tensor_infos(found.weights)
    check_config_fits_weights(
        config, infos, found.config_path,
        decoder=arch == "VideoMAEForPreTraining", labels=arch == "VideoMAEForVideoClassification",
    )  # fmt: skip
