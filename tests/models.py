"""Tiny model folders for tests, built with vmae itself (random weights, real files)."""

from __future__ import annotations

from pathlib import Path

import torch

from vmae_cli.models.config import VideoMAEConfig
from vmae_cli.models.modeling import VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

TINY_PREPROCESSOR = {
    "crop_size": {"height": 32, "width": 32},
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "VideoMAEImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 32},
}


def tiny_config(**changes) -> VideoMAEConfig:
    return VideoMAEConfig.from_preset("tiny").replace(**changes)


def build(cls, config: VideoMAEConfig, folder: Path, seed: int = 0, preprocessor: dict | None = None) -> Path:
    """Save a randomly initialised model; biases and norms are randomised too, so no parameter is trivial."""
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "q_bias", "v_bias", "mask_token")) or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, preprocessor=preprocessor)
    return folder


def tiny_classifier(folder: Path, labels=("walking", "running", "jumping"), **changes) -> Path:
    config = tiny_config(id2label=dict(enumerate(labels)), **{"use_mean_pooling": True, **changes})
    return build(VideoMAEForVideoClassification, config, folder, preprocessor=TINY_PREPROCESSOR)


def tiny_pretraining(folder: Path, **changes) -> Path:
    return build(VideoMAEForPreTraining, tiny_config(**changes), folder, preprocessor=TINY_PREPROCESSOR)


def tiny_encoder(folder: Path, **changes) -> Path:
    return build(VideoMAEModel, tiny_config(**changes), folder)
