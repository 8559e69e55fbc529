"""Write a labelled synthetic video data set whose classes differ only by motion (PyAV, no network).

    python scripts/make_synthetic.py OUT [--unlabelled 40] [--train 4] [--val 20] [--samples 1] [--seed 0]

Every clip shows one bar with a dot at one end (so that rotation is visible) on a smooth background, with a
random colour, size, position, angle and scale. The class is the motion only: moving right/left/up/down,
rotating clockwise/counter-clockwise, zooming in/out. The first frame of a clip is drawn from the same
distribution whatever the class, so no single frame tells the classes apart.

Layout (what `vmae pretrain` and `vmae finetune` read):
    OUT/unlabelled/*.mp4        for self-supervised pre-training (labels not used)
    OUT/train/<label>/*.mp4     few labels per class
    OUT/val/<label>/*.mp4       held-out clips for validation and `vmae evaluate`
    OUT/samples/<label>.mp4     one held-out clip per class for `vmae classify`
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import av
import numpy as np

# (dx, dy) pixels per frame, degrees per frame, scale factor per frame
MOTIONS = {
    "right": ((1.75, 0.0), 0.0, 1.0),
    "left": ((-1.75, 0.0), 0.0, 1.0),
    "down": ((0.0, 1.75), 0.0, 1.0),
    "up": ((0.0, -1.75), 0.0, 1.0),
    "clockwise": ((0.0, 0.0), 11.0, 1.0),
    "counterclockwise": ((0.0, 0.0), -11.0, 1.0),
    "zoom_in": ((0.0, 0.0), 0.0, 1.055),
    "zoom_out": ((0.0, 0.0), 0.0, 1 / 1.055),
}
SIZE = 40  # pixels (square); vmae's tiny recipes decode at a short side of 40 and crop 32
FRAMES = 16
FPS = 25


def render_clip(label: str, rng: np.random.Generator, size: int = SIZE, frames: int = FRAMES) -> np.ndarray:
    """uint8 (frames, size, size, 3): one clip of class `label`."""
    (dx, dy), dtheta, zoom = MOTIONS[label]
    # the clip's appearance, drawn independently of the class
    length, width = rng.uniform(10, 15), rng.uniform(3.5, 5.5)
    color = rng.uniform(140, 255, size=3)
    theta0 = rng.uniform(0, 2 * math.pi)
    scale0 = rng.uniform(0.85, 1.15)
    # a smooth background (a two-colour gradient in a random direction): static texture under a
    # masked tube could not be predicted, and would drown the motion in pre-training's loss
    c0, c1 = rng.uniform(0, 90, size=3), rng.uniform(0, 90, size=3)
    phi = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    ramp = ((xx - size / 2) * math.cos(phi) + (yy - size / 2) * math.sin(phi)) / size + 0.5
    background = c0 + (c1 - c0) * np.clip(ramp, 0, 1)[..., None]
    # start so that the whole motion stays inside the frame
    margin = 12
    cx0 = rng.uniform(margin, size - margin) - dx * (frames - 1) / 2
    cy0 = rng.uniform(margin, size - margin) - dy * (frames - 1) / 2
    scale0 = scale0 / zoom ** ((frames - 1) / 2)  # the middle frame has the drawn scale
    out = np.empty((frames, size, size, 3), np.uint8)
    for f in range(frames):
        cx, cy = cx0 + dx * f, cy0 + dy * f
        theta = theta0 + math.radians(dtheta * f)
        s = scale0 * zoom**f
        # pixel -> object coordinates (u along the bar, v across)
        px, py = (xx - cx) / s, (yy - cy) / s
        u = px * math.cos(theta) + py * math.sin(theta)
        v = -px * math.sin(theta) + py * math.cos(theta)
        bar = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
        dot = (u - length / 2 - 2.5) ** 2 + v**2 <= (width * 0.8) ** 2
        img = np.where(bar[..., None], color, background)
        img = np.where(dot[..., None], 255 - color * 0.5, img)
        out[f] = np.clip(img + rng.normal(0, 2, size=img.shape), 0, 255).astype(np.uint8)
    return out


def write_clip(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_dataset(out: Path, unlabelled: int, train: int, val: int, samples: int, seed: int = 0) -> None:
    # one generator per (split, class): adding clips to one split never changes another
    for split_id, (split, count) in enumerate(
        (("unlabelled", unlabelled), ("train", train), ("val", val), ("samples", samples))
    ):
        for class_id, label in enumerate(MOTIONS):
            rng = np.random.default_rng([seed, split_id, class_id])
            for k in range(count):
                clip = render_clip(label, rng)
                if split == "unlabelled":
                    path = out / split / f"{class_id * count + k:05d}.mp4"
                elif split == "samples":
                    path = out / split / (f"{label}.mp4" if count == 1 else f"{label}_{k}.mp4")
                else:
                    path = out / split / label / f"{k:03d}.mp4"
                write_clip(path, clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--unlabelled", type=int, default=40, help="clips per class for pre-training")
    parser.add_argument("--train", type=int, default=4, help="labelled clips per class")
    parser.add_argument("--val", type=int, default=20, help="held-out clips per class")
    parser.add_argument("--samples", type=int, default=1, help="demo clips per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_dataset(args.out, args.unlabelled, args.train, args.val, args.samples, args.seed)


if __name__ == "__main__":
    main()
