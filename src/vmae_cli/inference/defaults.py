"""How a model samples frames when the run does not say: from its preprocessor config, else its label set.

Kept apart from video/sampling.py (which frame indices make a clip) because it reads a model's config and
its label set, which video/ must not know. Nothing here imports torch (options.py and ahead.py use it
before torch is imported).
"""

from __future__ import annotations

import logging

from ..errors import option, spell
from ..models.labelsets import recognise
from ..video.sampling import SamplingSpec

log = logging.getLogger(__name__)

SEGMENT_DATASETS = ("Something-Something v2",)  # trained and tested on one frame per segment


def model_sampling(config, preprocessor_config: dict | None) -> tuple[SamplingSpec, str]:
    """How a model's training sampled frames, and the evidence it comes from, first found first:

    1. the `frame_sampling` section of its preprocessor_config.json (what `vmae finetune` writes);
    2. its label set, recognised exactly (labelsets.py): Something-Something v2 takes `frames` segments;
       Kinetics, UCF101 and HMDB51 take one central window at stride 4, the paper's Kinetics protocol;
    3. else that same window.
    """
    section = (preprocessor_config or {}).get("frame_sampling")
    if section:
        return SamplingSpec.from_dict(section), "frame_sampling in preprocessor_config.json"
    dataset = recognise(config.id2label)
    if dataset in SEGMENT_DATASETS:
        return SamplingSpec(mode="uniform", frames=config.num_frames), f"labels: {dataset}"
    if dataset is None and config.num_labels == 174:
        log.warning(
            "174 labels that are not Something-Something v2's: sampling a window; if this is an SSv2 model, "
            "pass %s uniform",
            spell(option("sampling")),
        )
    window = SamplingSpec(mode="window", frames=config.num_frames, stride=4)
    return window, f"labels: {dataset}" if dataset else "default: no frame_sampling, no known label set"


def default_sampling(config, preprocessor_config: dict | None) -> SamplingSpec:
    """The sampling of `model_sampling`, without its evidence."""
    return model_sampling(config, preprocessor_config)[0]
