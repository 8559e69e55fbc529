"""Preprocessor: resize the shortest edge, center crop, rescale, normalize, on torch tensors.

Reads and writes `preprocessor_config.json` like transformers' VideoMAEImageProcessor, and gives
the same pixels within one uint8 level: the resize is `F.interpolate(uint8, bilinear, antialias)`,
which is what the torchvision backend does and within one level of Pillow's (reference sec. 3).
All frames of a clip go through each step as one batch. It takes the inputs VideoMAEImageProcessor
takes (frames.py turns them into uint8 (T, H, W, 3)), and `return_tensors` gives its output form.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, FieldError, ModelNotFoundError
from ..hub import PREPROCESSOR_NAME, download, is_hub_id
from ..jsonfile import read_object
from ..limits import LIMITS
from .frames import as_videos

_RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}  # PIL enum -> F.interpolate mode
_KNOWN = {
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std",
}  # fmt: skip
_DROPPED = {"feature_extractor_type", "image_processor_type", "processor_class"}  # rewritten by to_dict


def _size_dict(name: str, value, *, square: bool) -> dict:
    """HF size forms -> dict: an int is a shortest edge for `size`, a square for `crop_size`. Every side is
    a whole number within the image sizes vmae builds (a resize to 0, or to 100000 pixels, is refused)."""
    if _whole(value):
        d = {"height": value, "width": value} if square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        d = {"height": value[0], "width": value[1]}
    elif isinstance(value, dict) and ({"shortest_edge"} <= set(value) or {"height", "width"} <= set(value)):
        d = dict(value)
    else:
        raise FieldError(
            f"{name} {value!r} is not a size; use {{'shortest_edge': N}} or {{'height': H, 'width': W}}",
            field=name, value=value, allowed="{'shortest_edge': N} or {'height': H, 'width': W}",
        )  # fmt: skip
    low, high = LIMITS["image_size"]
    for key, side in d.items():
        if side is not None and not (_whole(side) and low <= side <= high):
            raise FieldError(f"{name} {key} {side!r} is not a whole number of pixels in {low}..{high}",
                             field=name, value=value, allowed=f"{low}..{high}")  # fmt: skip
    return d


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _channel_values(name: str, value) -> list[float]:
    """A number or a list of 3 (one per RGB channel); a list of 1 is broadcast, as a number is and as
    transformers' default (torchvision) backend does."""
    values = [value] if isinstance(value, (int, float)) else value
    if (
        not isinstance(values, (list, tuple))
        or len(values) not in (1, 3)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        raise FieldError(f"{name} {value!r} is not a number or a list of 3 numbers (one per RGB channel)",
                         field=name, value=value, allowed="a number, or a list of 3 numbers")  # fmt: skip
    return [float(v) for v in values] * (3 if len(values) == 1 else 1)


@dataclass
class Preprocessor:
    """Frames (T, H, W, 3) uint8 -> model input (T, 3, S, S) float32. Defaults: transformers' class defaults."""

    do_resize: bool = True
    size: dict = field(default_factory=lambda: {"shortest_edge": 224})
    resample: int = 2  # PIL.Image.BILINEAR
    do_center_crop: bool = True
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])  # IMAGENET_STANDARD; hub files override
    image_std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    extra: dict = field(default_factory=dict)  # other keys of the file (e.g. frame_sampling), kept on save

    def __post_init__(self) -> None:
        self.size = _size_dict("size", self.size, square=False)
        self.crop_size = _size_dict("crop_size", self.crop_size, square=True)
        if self.resample not in _RESAMPLE:
            raise FieldError(
                f"unsupported resample {self.resample}; use 0 (nearest), 2 (bilinear) or 3 (bicubic)",
                field="resample", value=self.resample, allowed="0, 2 or 3",
            )  # fmt: skip
        for name in ("image_mean", "image_std"):
            setattr(self, name, _channel_values(name, getattr(self, name)))
        if isinstance(self.rescale_factor, bool) or not isinstance(self.rescale_factor, (int, float)):
            raise FieldError(f"rescale_factor {self.rescale_factor!r} is not a number",
                             field="rescale_factor", value=self.rescale_factor, allowed="a number")  # fmt: skip

    def check_fits(self, config) -> None:
        """Refuse a crop (or a fixed resize without a crop) that makes frames of another size than the
        model's image_size: the message names the field and what fits, not the model's input shape."""
        h, w = config.image_hw
        name, (ch, cw) = "crop_size", self.crop
        if not self.do_center_crop:
            if "height" not in self.size:
                return  # a shortest-edge resize alone: the size depends on the video, checked per input
            name, (ch, cw) = "size", (self.size["height"], self.size["width"])
        if (ch, cw) != (h, w):
            raise FieldError(
                f"{name} {ch}x{cw} does not fit the model, which takes frames of {h}x{w} (image_size in "
                f"config.json); set {name} to {{'height': {h}, 'width': {w}}}",
                field=name, value={"height": ch, "width": cw}, allowed={"height": h, "width": w},
            )  # fmt: skip

    # -- config file -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        """From a preprocessor_config.json dict, modern or legacy (VideoMAEFeatureExtractor, int sizes)."""
        kwargs = {k: v for k, v in d.items() if k in _KNOWN}
        kwargs.setdefault("crop_size", 224)  # old files omit it; transformers then uses 224 x 224
        extra = {k: v for k, v in d.items() if k not in _KNOWN and k not in _DROPPED}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_pretrained(cls, ref: str | os.PathLike, *, revision: str | None = None) -> Preprocessor:
        """From a folder holding preprocessor_config.json, the file itself, or a Hub model id."""
        path = Path(ref).expanduser()
        if path.is_dir():
            path = path / PREPROCESSOR_NAME
            if not path.is_file():
                raise ModelNotFoundError(
                    f"{ref}: no {PREPROCESSOR_NAME} in this folder; pass a model folder or Hub id"
                )
        elif not path.is_file():
            if not is_hub_id(str(ref)):
                raise ModelNotFoundError(f"{ref}: no such file or folder")
            path = download(str(ref), PREPROCESSOR_NAME, revision)
        return checked(read_object(path), path=path)

    def to_dict(self) -> dict:
        """The transformers 5.x form."""
        d = {
            "crop_size": dict(self.crop_size), "do_center_crop": self.do_center_crop,
            "do_normalize": self.do_normalize, "do_rescale": self.do_rescale, "do_resize": self.do_resize,
            "image_mean": list(self.image_mean), "image_processor_type": "VideoMAEImageProcessor",
            "image_std": list(self.image_std), "resample": self.resample,
            "rescale_factor": self.rescale_factor, "size": dict(self.size),
        }  # fmt: skip
        return {**d, **self.extra}

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write folder/preprocessor_config.json whole (`atomic_write_text`)."""
        from ..files import atomic_write_text
        from ..jsonfile import dumps  # strict JSON: a NaN or infinity is refused, naming the field

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / PREPROCESSOR_NAME
        text = (
            dumps(self.to_dict(), name=PREPROCESSOR_NAME, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
        )
        atomic_write_text(target, text)
        return target

    # -- steps -----------------------------------------------------------------------------------
    @property
    def crop(self) -> tuple[int, int]:
        return self.crop_size["height"], self.crop_size["width"]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step."""
        if not self.do_resize:
            return height, width
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            short, long = min(height, width), max(height, width)
            new_long = int(s * long / short)  # floor, as transformers' get_resize_output_image_size
            return (s, new_long) if height <= width else (new_long, s)
        return self.size["height"], self.size["width"]

    def resize(self, frames) -> torch.Tensor:
        """uint8 (T, H, W, 3) numpy/torch -> uint8 (T, 3, h, w), a channels-last view."""
        x = _as_tensor(frames).permute(
            0, 3, 1, 2
        )  # no .contiguous(): interpolate is ~4x faster channels-last
        h, w = self.output_size(x.shape[-2], x.shape[-1])
        if not self.do_resize or (h, w) == tuple(x.shape[-2:]):
            return x
        mode = _RESAMPLE[self.resample]
        if mode == "nearest-exact":
            return F.interpolate(x, size=(h, w), mode=mode)
        if mode == "bicubic" and x.device.type != "cpu":
            # uint8 bicubic is CPU-only in torch: elsewhere go through float, clamp and round (as torchvision).
            # On the CPU the uint8 kernel below is torchvision's and within a level of Pillow's; the float
            # path is not (Pillow and that kernel clip the overshoot between the two passes: up to 17 levels).
            y = F.interpolate(x.float(), size=(h, w), mode=mode, align_corners=False, antialias=True)
            return y.clamp_(0, 255).round_().to(torch.uint8)
        return F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True)

    def crop_offsets(self, height: int, width: int, crops: int = 1) -> list[tuple[int, int]]:
        """(top, left) of each crop: the center, or `crops` evenly spaced along the long side.

        Three crops follow the original test code: step = (long - S) / (crops - 1),
        start_k = int(k * step), centred on the short side.
        """
        ch, cw = self.crop
        top, left = int((height - ch) / 2.0), int((width - cw) / 2.0)
        if crops == 1:
            return [(top, left)]
        if height > width:
            step = 1.0 * (height - ch) / (crops - 1)
            return [(int(k * step), left) for k in range(crops)]
        step = 1.0 * (width - cw) / (crops - 1)
        return [(top, int(k * step)) for k in range(crops)]

    def crop_boxes(self, height: int, width: int, crops: int = 1) -> tuple[tuple[int, int], list[list[int]]]:
        """Where `resize_crop`'s views of (height, width) frames lie: the resized (and, if smaller than the
        crop, zero-padded) frame size, and each view's [top, left, height, width] in it."""
        h, w = self.output_size(height, width)
        if not self.do_center_crop:
            return (h, w), [[0, 0, h, w]] * crops
        (ch, cw), h, w = self.crop, max(h, self.crop[0]), max(w, self.crop[1])
        return (h, w), [[top, left, ch, cw] for top, left in self.crop_offsets(h, w, crops)]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, h, w) -> float32, rescale and normalize fused in one affine step."""
        x = x.float()
        shape = (3, 1, 1)
        if self.do_normalize:
            scale = 1.0 / self.rescale_factor if self.do_rescale else 1.0
            mean = torch.tensor(self.image_mean, device=x.device).view(shape) * scale
            std = torch.tensor(self.image_std, device=x.device).view(shape) * scale
            return (x - mean) / std
        return x * self.rescale_factor if self.do_rescale else x

    def resize_crop(self, frames, crops: int = 1) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> uint8 (crops, T, 3, ch, cw): the frames before normalisation."""
        return self.crop_views(self.resize(frames), crops)

    def crop_views(self, x: torch.Tensor, crops: int = 1) -> torch.Tensor:
        """uint8 (T, 3, h, w) resized frames -> uint8 (crops, T, 3, ch, cw)."""
        if not self.do_center_crop:
            return x.contiguous().unsqueeze(0).expand(crops, *x.shape).contiguous()
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if h < ch or w < cw:  # transformers pads a too-small image with zeros before cropping
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            h, w = x.shape[-2:]
        views = [x[..., top : top + ch, left : left + cw] for top, left in self.crop_offsets(h, w, crops)]
        return torch.stack(views).contiguous()

    def multi_crop(self, frames, crops: int = 3) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> float32 (crops, T, 3, ch, cw)."""
        return self.normalize(self.resize_crop(frames, crops))

    def __call__(self, videos, return_tensors: Any = ...) -> torch.Tensor | BatchFeature:
        """uint8 (T, H, W, 3) numpy or torch -> float32 (T, 3, ch, cw), center crop.

        Also what transformers' VideoMAEImageProcessor takes: a list of frames (numpy or torch arrays, channels
        last or first, or PIL images), or a batch of videos (a list of such lists, a list of 4-D arrays, or a
        5-D array); 1-channel frames become RGB, 4-channel ones are composited onto white, as its RGB
        conversion does. Without `return_tensors`: (T, 3, ch, cw) for one video, (B, T, 3, ch, cw) for a
        batch. With it, transformers' form: `{"pixel_values": (B, T, 3, ch, cw)}` (also `.pixel_values`), a
        torch tensor for "pt", a numpy array for "np", a list of (T, 3, ch, cw) tensors for None.
        """
        clips, batched = as_videos(videos)
        pixels = [self.multi_crop(clip, crops=1)[0] for clip in clips]
        if return_tensors is ...:
            return _stack(pixels) if batched else pixels[0]
        if return_tensors is None:
            return BatchFeature(pixel_values=pixels)
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        stacked = _stack(pixels)
        return BatchFeature(pixel_values=stacked if return_tensors == "pt" else stacked.cpu().numpy())


class BatchFeature(dict):
    """transformers' processor output: a dict whose keys are also attributes (`out.pixel_values`)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _stack(pixels: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(p.shape) for p in pixels}
    if len(shapes) > 1:
        raise ValueError(f"videos of different sizes after preprocessing cannot be stacked: {sorted(shapes)}")
    return torch.stack(pixels)


def checked(d: dict, model_config=None, path: str | os.PathLike | None = None) -> Preprocessor:
    """The Preprocessor of `d`, a preprocessor_config.json's dict, that (with `model_config`) fits that
    model's image size; errors name the file `path` (and the field)."""
    try:
        proc = Preprocessor.from_dict(d)
        if model_config is not None:
            proc.check_fits(model_config)
    except FieldError as e:
        raise e.at(path) from None
    except (TypeError, ValueError) as e:  # e.g. an unknown value type that the dataclass cannot take
        raise CheckpointError(f"{path or PREPROCESSOR_NAME}: {e}; re-download or fix it") from None
    return proc


def _as_tensor(frames) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return x
