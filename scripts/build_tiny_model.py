"""Build a small random-weight VideoMAE classifier folder (HF layout) to try vmae without a download.

    python scripts/build_tiny_model.py models/tiny-random [--preset tiny] [--labels walk,run,jump]

The weights are random: predictions mean nothing, but every command runs on it.
"""

from __future__ import annotations

import argparse

import torch

from vmae_cli import VideoMAEConfig, VideoMAEForVideoClassification
from vmae_cli.preprocess import Preprocessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--labels", default="walking,running,jumping")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    labels = dict(enumerate(args.labels.split(",")))
    config = VideoMAEConfig.from_preset(args.preset).replace(use_mean_pooling=True, id2label=labels)
    size = config.image_hw[0]
    preprocessor = Preprocessor.from_dict(
        {
            "size": {"shortest_edge": size},
            "crop_size": {"height": size, "width": size},
            "image_mean": [0.485, 0.456, 0.406],  # ImageNet statistics, as every VideoMAE on the Hub
            "image_std": [0.229, 0.224, 0.225],
        }
    )
    VideoMAEForVideoClassification(config).save_pretrained(args.out, preprocessor=preprocessor)
    print(args.out)


if __name__ == "__main__":
    main()
