"""The parts a training run is made of besides its loop: the step plan and lr schedule, optimizer groups, mixed
precision, moving batches to the device and the per-step seed. Each is a pure function or a small value, so a resumed
run rebuilds them from the recipe and the step alone."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError, VmaeError, option


# ---- schedule ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Linear warmup from `warmup_lr` to `peak_lr`, then a per-step cosine down to `min_lr` at `total_steps`."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    warmup_lr: float = 0.0

    def __call__(self, step: int) -> float:
        return cosine_lr(step, self.peak_lr, self.total_steps, self.warmup_steps, self.min_lr, self.warmup_lr)


def cosine_lr(step: int, peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
              warmup_lr: float = 0.0) -> float:  # fmt: skip
    """The lr of optimizer step `step` (0-based): a pure function, so a resumed run needs only the step."""
    if step < warmup_steps:
        return warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_per_256: float, global_batch: int) -> float:
    """The lr of a global batch from its value per 256 clips: linear from 256 clips up (the rule of VideoMAE/MAE,
    so the paper's batches of 512-2048 get the paper's lr), square root below (AdamW's scaling rule, Malladi et
    al. 2022), so that the small batches of one CPU or GPU keep a workable lr: at 16 clips, base / 4 where the
    linear rule gives base / 16. The two meet at 256 clips."""
    ratio = global_batch / 256
    return base_per_256 * (ratio if ratio >= 1 else math.sqrt(ratio))


# ---- optimizer ---------------------------------------------------------------------------------------------
NO_DECAY_NAMES = ("mask_token", "position_embeddings", "cls_token", "q_bias", "v_bias")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms (1-D parameters) and the mask token are not decayed, as in the original code."""
    return param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES


def param_groups(model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None,
                 skip_decay: Callable[[str, nn.Parameter], bool] = no_weight_decay) -> list[dict]:  # fmt: skip
    """AdamW groups: decay / no decay, times one `lr_scale(name)` group per distinct scale (layer-wise decay).

    Each group carries "lr_scale"; the loop sets group lr = schedule(step) x lr_scale.
    """
    groups: dict[tuple[bool, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not skip_decay(name, p)
        scale = lr_scale(name) if lr_scale is not None else 1.0
        group = groups.setdefault((decay, scale), {"params": [], "names": [], "lr_scale": scale,
                                                    "weight_decay": weight_decay if decay else 0.0})  # fmt: skip
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def make_optimizer(groups: list[dict], lr: float, betas=(0.9, 0.95), device: torch.device | None = None):
    """AdamW, fused into one kernel per step where torch has it (CUDA, and CPU since torch 2.4)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), foreach=True)


# ---- precision, devices, seeds ------------------------------------------------------------------------------
@dataclass
class Precision:
    """Autocast dtype (None = fp32) and, for fp16 only, a gradient scaler."""

    dtype: torch.dtype | None
    device_type: str
    scaler: Any = None

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        from ..runtime import resolve_dtype

        dtype = resolve_dtype(name, device, cpu_bf16=True)  # bf16 autocast where native, as on CUDA
        if dtype == torch.float32:
            return cls(None, device.type)
        if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise VmaeError(
                f"{option('dtype')} bf16: this GPU has no bf16; use {option('dtype')} fp16 or fp32"
            )
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(dtype, device.type, scaler)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch; non_blocking pairs with pinned memory on CUDA."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the model-side randomness (dropout, drop path, mixup) of one optimizer step on one rank."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63)


def ready_to_train(model: nn.Module, recipe, peak_lr: float, device: torch.device,
                   lr_scale: Callable[[str], float] | None = None) -> tuple[Precision, torch.optim.Optimizer]:  # fmt: skip
    """Move `model` to `device` with gradient checkpointing as the recipe says; its precision and optimizer
    (AdamW over `param_groups`, at `peak_lr`, with `lr_scale` per parameter for layer decay)."""
    o = recipe.optim
    model.to(device)
    model.gradient_checkpointing_enable(recipe.run.gradient_checkpointing)
    precision = Precision.create(recipe.run.dtype, device)
    optimizer = make_optimizer(
        param_groups(model, o.weight_decay, lr_scale=lr_scale), peak_lr, o.betas, device
    )
    return precision, optimizer


@dataclass
class StepPlan:
    """How long a run is and how its lr moves, from the recipe's optim section and the data size."""

    steps_per_epoch: int
    total: int
    global_batch: int  # clips per optimizer step, over all processes
    peak: float
    schedule: Schedule


def plan_steps(optim, num_videos: int, batches_per_epoch: int, clips_per_video: int, world: int) -> StepPlan:
    """Steps, warmup and the lr scaled by the global batch (optim: a recipe's OptimRecipe)."""
    steps_per_epoch = batches_per_epoch // optim.accum
    if steps_per_epoch == 0:
        raise UsageError(f"one epoch of {num_videos} video(s) holds fewer than {option('accum')} {optim.accum} "
                         f"batches; lower {option('accum')} or {option('batch_size')}", param="accum",
                         value=optim.accum)  # fmt: skip
    total = optim.max_steps or optim.epochs * steps_per_epoch
    if optim.warmup_steps >= 0:
        warmup = optim.warmup_steps
    elif optim.max_steps:  # the recipe's warmup share of its epochs, applied to the steps asked for
        warmup = round(total * optim.warmup_epochs / max(optim.epochs, 1))
    else:
        warmup = round(optim.warmup_epochs * steps_per_epoch)
    global_batch = optim.batch_size * clips_per_video * optim.accum * world
    # per-256-clip values -> this global batch; with an absolute peak lr, the floor and the warmup start keep
    # their ratio to it instead
    scale = optim.lr / optim.blr if optim.lr > 0 and optim.blr > 0 else scaled_lr(1.0, global_batch)
    peak = optim.lr if optim.lr > 0 else optim.blr * scale
    schedule = Schedule(peak, total, min(warmup, total), optim.min_lr * scale, optim.warmup_lr * scale)
    return StepPlan(steps_per_epoch, total, global_batch, peak, schedule)
