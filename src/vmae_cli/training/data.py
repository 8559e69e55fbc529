"""Training data: a deterministic epoch sampler, the pre-training and fine-tuning datasets (augmented clips),
the preprocessor config of a run's models, loader workers.
(Which videos a run reads: video/discover.py `list_videos`.)

Every random choice a sample needs (window start, crop, flip, mask) comes from a generator seeded by
(seed, epoch, position in the epoch), never from a worker's global state. So the data of step N is a
pure function of the seed, and a resumed run sees exactly the clips the interrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError, option, spell
from ..models.config import VideoMAEConfig
from ..models.masking import decoder_mask, tube_mask
from ..models.targets import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # the pre-training targets un-normalise
from ..models.targets import IMAGENET_DEFAULT_STD as IMAGENET_STD  # with these, so inputs use them
from ..runtime import init_decode_worker
from ..video.sampling import random_window_indices

log = logging.getLogger(__name__)


# ---- data order ------------------------------------------------------------------------------------------
def item_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator for the sample at `position` of `epoch`: independent of workers, ranks and resumes."""
    return np.random.default_rng([seed, epoch, position])


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles the videos as a pure function of (seed, epoch), shards them by rank, and can start mid-epoch.

    Yields (video index, epoch, position) for this rank; `position` is the index in the epoch's permutation,
    which seeds the sample's augmentation. The epoch keeps `batches_per_epoch x batch_size x world` videos
    (the remainder is dropped, as the original's drop_last), so every rank sees the same number of batches.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True):  # fmt: skip
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise UsageError(
                f"{num_items} video(s) are fewer than one batch ({batch_size} per device x {world} device(s)); "
                f"lower {option('batch_size')} or add videos",
                param="batch_size",
                value=batch_size,
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch, 0xDA7A]).permutation(self.num_items)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        used = self.batches_per_epoch * self.batch_size * self.world
        order = self.order(self.epoch)[:used]
        positions = np.arange(used)[self.rank :: self.world]  # interleaved shards, as DistributedSampler
        for pos in positions[self.start_batch * self.batch_size :]:
            yield int(order[pos]), self.epoch, int(pos)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


# ---- augmentation (torch, uint8) --------------------------------------------------------------------------
def multi_scale_crop_box(rng: np.random.Generator, height: int, width: int, size: int,
                         scales=(1.0, 0.875, 0.75, 0.66), max_distort: int = 1) -> tuple[int, int, int, int]:  # fmt: skip
    """GroupMultiScaleCrop (TSN / VideoMAE): (top, left, crop_h, crop_w) of a random crop to resize to `size`.

    Crop sides are scales of the short side (sides within 3 px of `size` snap to it), height and width at most
    `max_distort` scale steps apart; the corner is one of 13 fixed positions (more_fix_crop).
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    ch, cw = min(ch, height), min(cw, width)
    hs, ws = (height - ch) // 4, (width - cw) // 4
    grid = [
        (0, 0),
        (0, 4),
        (4, 0),
        (4, 4),
        (2, 2),
        (2, 0),
        (2, 4),
        (4, 2),
        (0, 2),
        (1, 1),
        (1, 3),
        (3, 1),
        (3, 3),
    ]
    gy, gx = grid[int(rng.integers(len(grid)))]
    return gy * hs, gx * ws, ch, cw


def augment_clip(
    frames: torch.Tensor, rng: np.random.Generator, size: int, scales, flip: bool
) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, size, size): multi-scale crop, resize, random horizontal flip."""
    top, left, ch, cw = multi_scale_crop_box(rng, frames.shape[-2], frames.shape[-1], size, scales)
    x = frames[..., top : top + ch, left : left + cw]
    if (ch, cw) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if flip and rng.random() < 0.5:
        x = x.flip(-1)
    return x.contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 ImageNet-normalized; done on the device, so workers ship 4x fewer bytes."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1) * 255
    return (x.float() - mean) / std


# ---- the pre-training dataset -----------------------------------------------------------------------------
@dataclass
class ClipSpec:
    """How a pre-training sample is cut from a video."""

    frames: int
    stride: int
    size: int  # crop fed to the model (its image_size)
    short_side: int  # decode with this shortest edge; 0 = as stored
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    flip: bool = True
    num_sample: int = 1  # augmented clips per decoded window (VideoMAEv2 repeated sampling)
    mask_ratio: float = 0.9
    decode_threads: int = 1
    decoder_ratio: float = 0.0  # VideoMAEv2 dual masking; 0 = the decoder reconstructs every masked token
    cache_bytes: int = 0  # decoded videos kept in memory per loader process (FrameCache); 0 = none

    @classmethod
    def for_model(cls, data, config, mask_ratio: float, task: str, decoder_ratio: float = 0.0) -> ClipSpec:
        """The clip spec of a recipe's `data` section for a model config; frames/input_size 0 follow the model."""
        from ..errors import UsageError

        h, w = config.image_hw
        if h != w:
            raise UsageError(f"{task} needs a square image_size; the model has {h}x{w}")
        frames = data.frames or config.num_frames
        size = data.input_size or h
        if frames != config.num_frames or size != h:
            raise UsageError(
                f"data.frames={frames} and data.input_size={size} must match the model ({config.num_frames} frames of "
                f"{h}x{h}); set them to 0 to follow the model, or choose another model"
            )
        if data.num_sample < 1:
            raise UsageError("data.num_sample must be >= 1")
        if not 0.0 <= mask_ratio < 1.0:
            raise UsageError(f"mask.ratio must be in [0, 1), got {mask_ratio}; e.g. {option('mask.ratio')}=0.9",
                             param="mask.ratio", value=mask_ratio, allowed="[0, 1)")  # fmt: skip
        if decoder_ratio:
            try:  # the mask sizes depend on the model only: check once here, not in every worker
                decoder_mask(tube_mask(config, 1, mask_ratio), decoder_ratio)
            except ValueError as e:
                raise UsageError(f"mask.decoder_ratio: {e}") from None
        short = data.short_side or round(size * 320 / 224)  # the original decoded K400 at 320 for 224 crops
        if data.cache_mb < 0:
            raise UsageError(f"data.cache_mb must be >= 0 (0 = no cache), got {data.cache_mb}",
                             param="data.cache_mb", value=data.cache_mb, allowed=">= 0")  # fmt: skip
        return cls(frames, data.stride, size, short, tuple(data.scales), data.flip, data.num_sample, mask_ratio,
                   data.decode_threads, decoder_ratio, data.cache_mb << 20)  # fmt: skip


class PretrainDataset(torch.utils.data.Dataset):
    """Indexed by (video index, epoch, position) from EpochSampler; returns `num_sample` masked clips.

    A video that cannot be read gives {"failed": (path, message)}: the collate drops it and the loop
    counts and reports it. It is never replaced by another video.
    """

    def __init__(self, paths: list[str], spec: ClipSpec, config: VideoMAEConfig, seed: int = 0):
        self.paths, self.spec, self.config, self.seed = paths, spec, config, seed
        self.cache = FrameCache(spec.cache_bytes)  # filled in each loader process as it decodes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:

        index, epoch, position = key
        path, spec = self.paths[index], self.spec
        rng = item_rng(self.seed, epoch, position)
        clips = augmented_clips(path, spec, rng, self.cache)
        if isinstance(clips, dict):
            return clips
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        masks = tube_mask(self.config, spec.num_sample, spec.mask_ratio, generator=g)
        item = {"pixel_values": clips, "bool_masked_pos": masks}  # uint8 (S, T, 3, size, size), bool (S, N)
        if spec.decoder_ratio > 0:
            item["decoder_mask"] = decoder_mask(masks, spec.decoder_ratio, generator=g)
        return item


# ---- the fine-tuning dataset ----------------------------------------------------------------------------
class FinetuneDataset:
    """Indexed by (video index, epoch, position) from EpochSampler; returns `num_sample` augmented clips."""

    def __init__(self, data, spec: ClipSpec, seed: int = 0):
        self.data, self.spec, self.seed = data, spec, seed
        self.cache = FrameCache(spec.cache_bytes)  # filled in each loader process as it decodes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, epoch, position = key
        path, spec = self.data.paths[index], self.spec
        clips = augmented_clips(path, spec, item_rng(self.seed, epoch, position), self.cache)
        if isinstance(clips, dict):
            return clips
        labels = torch.full((spec.num_sample,), self.data.labels[index], dtype=torch.long)
        return {"pixel_values": clips, "labels": labels}  # uint8 (S, T, 3, size, size), int64 (S,)


def collate_labelled(items: list[dict]) -> dict:
    """Concatenate the clips and labels of the readable videos; list the unreadable ones under "failed"."""
    good = [it for it in items if "failed" not in it]
    failed = [it["failed"] for it in items if "failed" in it]
    if not good:
        return {"pixel_values": None, "labels": None, "failed": failed}
    return {"pixel_values": torch.cat([it["pixel_values"] for it in good]),  # uint8 (B*S, T, 3, H, W)
            "labels": torch.cat([it["labels"] for it in good]), "failed": failed}  # fmt: skip


def run_preprocessor_config(spec) -> dict:
    """preprocessor_config.json for RUN/model: the pre-training input, and its frame sampling for finetune."""
    from ..video.preprocess import Preprocessor
    from ..video.sampling import SamplingSpec

    sampling = SamplingSpec(mode="window", frames=spec.frames, stride=spec.stride)
    return Preprocessor(size={"shortest_edge": spec.size}, crop_size={"height": spec.size, "width": spec.size},
                        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                        extra={"frame_sampling": sampling.to_dict()}).to_dict()  # fmt: skip


class FrameCache:
    """Whole decoded videos kept in this process's memory, up to `budget` bytes: a small data set is decoded
    once per loader process instead of once per epoch (on a few hundred short clips, decoding costs a CPU about
    as much as the model's step). A video that would not fit in what is left is decoded per sample, as without
    a cache. The window cut from a cached video is the one decoding it would have given, so a run learns the
    same with or without the cache (and a resumed run with another budget too).
    """

    def __init__(self, budget: int):
        self.budget, self.used, self.videos, self.full = budget, 0, {}, False

    def window(self, path: str, spec, rng: np.random.Generator) -> np.ndarray:
        """uint8 (T, H, W, 3): the random window of `spec` (frames, stride) from `path`, at the decode size."""
        from ..video.reader import VideoReader

        whole = self.videos.get(path)
        if whole is not None:
            return whole[random_window_indices(rng, len(whole), spec.frames, spec.stride)]
        with VideoReader(path, threads=spec.decode_threads) as reader:
            count = reader.count_frames()
            idx = random_window_indices(rng, count, spec.frames, spec.stride)
            size = _decode_size(reader.width, reader.height, spec.short_side)
            width, height = size or (reader.width, reader.height)
            if count == 0 or self.used + count * width * height * 3 > self.budget:
                if count and self.budget and not self.full:  # once per process: slower than it could be
                    self.full = True
                    log.warning(
                        "%s: the frame cache is full (%d MB hold %d video(s)); videos past it are decoded each "
                        "time they are drawn: raise %s to keep them all, or decode in workers (%s)",
                        path, self.budget >> 20, len(self.videos), spell(option("data.cache_mb")),
                        spell(option("workers")),
                    )  # fmt: skip
                return reader.get_frames(idx, size=size)
            whole = reader.get_frames(np.arange(count), size=size)
        self.videos[path] = whole
        self.used += whole.nbytes
        return whole[idx]


def augmented_clips(
    path: str, spec, rng: np.random.Generator, cache: FrameCache | None = None
) -> torch.Tensor | dict:
    """`spec.num_sample` augmented clips of one random window: uint8 (S, T, 3, size, size), or
    {"failed": (path, reason)} for a file that cannot be read (counted by the loop, never replaced)."""
    from ..video.errors import VideoError

    try:
        frames = (cache or FrameCache(0)).window(path, spec, rng)
    except (VideoError, OSError, MemoryError) as e:
        return {"failed": (path, str(e))}
    except Exception as e:  # PyAV raises many types for damaged files: all mean "this file"
        return {"failed": (path, f"{path}: {type(e).__name__}: {e}")}
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W), a channels-last view
    return torch.stack(
        [augment_clip(x, rng, spec.size, spec.scales, spec.flip) for _ in range(spec.num_sample)]
    )


def _decode_size(width: int, height: int, short_side: int) -> tuple[int, int] | None:
    if short_side <= 0 or min(width, height) == short_side:
        return None
    scale = short_side / min(width, height)
    return max(round(width * scale), short_side), max(round(height * scale), short_side)


def collate_clips(items: list[dict]) -> dict:
    """Concatenate the clips of the readable videos; list the unreadable ones under "failed"."""
    good = [it for it in items if "failed" not in it]
    failed = [it["failed"] for it in items if "failed" in it]
    if not good:
        return {"pixel_values": None, "bool_masked_pos": None, "failed": failed}
    batch = {key: torch.cat([it[key] for it in good]) for key in good[0]}  # (B*S, T, 3, H, W), (B*S, N)...
    batch["failed"] = failed
    return batch


def make_loader(dataset, sampler: EpochSampler, workers: int, pin_memory: bool = False, collate_fn=collate_clips,
                prefetch: int = 2) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader over `sampler` in batches of its batch size, decoding in `workers` processes."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=False,  # the sampler already yields whole batches only
        worker_init_fn=init_decode_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers > 0 else None,
    )
