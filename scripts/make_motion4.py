"""Write a held-out style motion data set: 4 directions of a textured object on a smooth background.

    python scripts/make_motion4.py OUT [--unlabelled 100] [--train 8] [--val 25] [--seed 0]

Not the data of scripts/make_synthetic.py (a bar with a dot, 8 motions, 40x40, 16 frames): here 64x64 clips of
32 frames show one textured patch (stripes or a checkerboard of random period, angle and colours, a square or a
disc) sliding left, right, up or down at 0.6-1.0 pixel per frame over a smooth two-colour gradient that
drifts slowly. Appearance, start and speed are drawn independently of the class, so only the direction of the
motion tells the classes apart. Every clip is seeded by (seed, split, class, index).

Layout (what `vmae pretrain`, `vmae finetune` and `vmae probe` read):
    OUT/unlabelled/*.mp4        --unlabelled clips per class, without labels
    OUT/train/<label>/*.mp4     --train labelled clips per class (the first 4 of them: OUT/train4)
    OUT/train4/<label>/*.mp4    links to the first 4 training clips of every class
    OUT/val/<label>/*.mp4       --val held-out clips per class
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from make_synthetic import write_clip  # noqa: E402  (the same encoder settings as the other data set)

DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}
SIZE = 64
FRAMES = 32


def render_clip(label: str, rng: np.random.Generator, size: int = SIZE, frames: int = FRAMES) -> np.ndarray:
    """uint8 (frames, size, size, 3): one clip of class `label`."""
    ux, uy = DIRECTIONS[label]
    speed = rng.uniform(0.6, 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    # background: a gradient between two dark colours in a random direction, drifting a little
    c0, c1 = rng.uniform(0, 110, size=3), rng.uniform(0, 110, size=3)
    phi = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(-0.003, 0.003)
    # the object: a square or a disc, with stripes or a checkerboard in two bright colours
    half = rng.uniform(7, 11)
    disc = rng.random() < 0.5
    checker = rng.random() < 0.5
    period = rng.uniform(3.0, 6.0)
    alpha = rng.uniform(0, math.pi)
    a, b = rng.uniform(120, 255, size=3), rng.uniform(60, 200, size=3)
    travel = speed * (frames - 1)
    lo, hi = half + 1, size - half - 1
    # start anywhere the whole path stays inside the frame along the motion, anywhere across it
    along = rng.uniform(lo, max(lo, hi - travel))
    across = rng.uniform(lo, hi)
    x0, y0 = (along, across) if ux else (across, along)
    if ux < 0 or uy < 0:  # moving left / up: start at the mirrored place
        x0, y0 = (size - x0, y0) if ux else (x0, size - y0)
    out = np.empty((frames, size, size, 3), np.uint8)
    for f in range(frames):
        ramp = (
            (xx - size / 2) * math.cos(phi + drift * f) + (yy - size / 2) * math.sin(phi + drift * f)
        ) / size
        img = c0 + (c1 - c0) * np.clip(ramp + 0.5, 0, 1)[..., None]
        cx, cy = x0 + ux * speed * f, y0 + uy * speed * f
        px, py = xx - cx, yy - cy
        inside = (px**2 + py**2 <= half**2) if disc else (np.abs(px) <= half) & (np.abs(py) <= half)
        u = px * math.cos(alpha) + py * math.sin(alpha)  # the texture moves with the object
        v = -px * math.sin(alpha) + py * math.cos(alpha)
        on = np.floor(u / period) % 2 == 0
        if checker:
            on = on ^ (np.floor(v / period) % 2 == 0)
        img = np.where((inside & on)[..., None], a, np.where(inside[..., None], b, img))
        out[f] = np.clip(img + rng.normal(0, 2, size=img.shape), 0, 255).astype(np.uint8)
    return out


def make_dataset(out: Path, unlabelled: int, train: int, val: int, seed: int = 0) -> None:
    # one generator per (split, class): adding clips to one split never changes another
    for split_id, (split, count) in enumerate((("unlabelled", unlabelled), ("train", train), ("val", val))):
        for class_id, label in enumerate(DIRECTIONS):
            rng = np.random.default_rng([seed, 7, split_id, class_id])
            for k in range(count):
                path = (out / split / f"{class_id * count + k:05d}.mp4" if split == "unlabelled"
                        else out / split / label / f"{k:03d}.mp4")  # fmt: skip
                write_clip(path, render_clip(label, rng))
    for label in DIRECTIONS:  # the 4-label split: the first 4 training clips of every class
        (out / "train4" / label).mkdir(parents=True, exist_ok=True)
        for k in range(min(4, train)):
            link = out / "train4" / label / f"{k:03d}.mp4"
            if not link.exists():
                os.symlink(os.path.relpath(out / "train" / label / f"{k:03d}.mp4", link.parent), link)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--unlabelled", type=int, default=100, help="unlabelled clips per class")
    parser.add_argument("--train", type=int, default=8, help="labelled clips per class")
    parser.add_argument("--val", type=int, default=25, help="held-out clips per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_dataset(args.out, args.unlabelled, args.train, args.val, args.seed)


if __name__ == "__main__":
    main()
