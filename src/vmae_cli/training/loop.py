"""The training loop shared by `vmae pretrain` and `vmae finetune`.

What a command supplies: a model, a `loss_fn(model, batch) -> (loss, n)` (n = samples in the batch), an
optimizer (see `param_groups`, `make_optimizer`), a `Schedule`, an `EpochSampler` + DataLoader, a `RunFolder`
and `LoopSettings`. The loop does the rest: lr per step, bf16/fp16 autocast, gradient accumulation, clipping,
DDP gradient sync, a non-finite loss check, metrics.jsonl, rolling checkpoints, Ctrl-C, progress, and exact
resume: everything random is a pure function of (seed, step, rank) or of (seed, epoch, position) in the
data, so restoring the model, the optimizer and the step restores the whole run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import Interrupted, VmaeError
from ..files import atomic_write_text
from ..jsonfile import dumps

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"


class TrainingError(VmaeError):
    """The run cannot go on (non-finite loss, nothing readable to train on, an unusable run folder)."""


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


# ---- devices, precision, processes ------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device_name: str = "auto") -> Dist:
    """Join the torchrun job (NCCL on CUDA, gloo otherwise) and pick this rank's device."""
    from ..runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        torch.distributed.init_process_group(backend=backend, **kwargs)
    return Dist(rank, world, local_rank, device)


def teardown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
            raise VmaeError("--dtype bf16: this GPU has no bf16; use --dtype fp16 or fp32")
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


# ---- the run folder ------------------------------------------------------------------------------------------
class RunFolder:
    """RUN/: config.toml, metrics.jsonl, checkpoints/step-N/ (rolling, atomic), previews/, model/."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / "config.toml"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.previews = self.root / "previews"
        self.model = self.root / "model"

    def has_run(self) -> bool:
        return self.metrics.exists() or bool(self.list_checkpoints())

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first (a half-written one has a temporary name and is ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and (p / TRAINER_STATE).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1][1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int, size: int = 0) -> Path:
        """`write(folder)` fills a temporary folder, which is then renamed to step-N; older ones beyond `keep` go.

        `size`: about how many bytes a checkpoint takes. A write that fails for lack of room leaves nothing
        behind and says how much room the checkpoint needs (`no_space_error`)."""
        from ..files import no_space_reported

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"step-{step}"
        tmp = self.checkpoints / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        good = self.latest_checkpoint()
        advice = "continue with the same command and --resume" + (f" (from {good.name})" if good else "")
        with no_space_reported(final, size, advice):
            tmp.mkdir()
            try:
                write(tmp)
                for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # first: the room it took is free again
                raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.checkpoints)
        for _, old in self.list_checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def clean_partial(self) -> None:
        """Remove what a killed run left half-written."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.glob(".step-*.tmp"):
                shutil.rmtree(p, ignore_errors=True)

    def append_metrics(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a") as f:
            f.write(dumps(record) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the lines up to `last_step` (a resumed run re-logs what came after its checkpoint)."""
        if not self.metrics.exists():
            return
        keep = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= last_step:
                    keep.append(line)
            except ValueError:  # a line cut short by a kill
                continue
        atomic_write_text(self.metrics, "".join(line + "\n" for line in keep))


def _checkpoint_bytes(state: Any, model: nn.Module) -> int:
    """About the size of a checkpoint: the model's tensors and those of the trainer state (the optimizer's)."""

    def tensor_bytes(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(v) for v in value)
        return 0

    return tensor_bytes(model.state_dict()) + tensor_bytes(state)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- the loop -------------------------------------------------------------------------------------------------
@dataclass
class LoopSettings:
    total_steps: int  # optimizer steps of the whole run
    steps_per_epoch: int  # optimizer steps per pass over the data
    accum: int = 1  # micro-batches per optimizer step
    clip_grad: float = 0.0  # max gradient norm; 0 = none
    seed: int = 0
    log_every: int = 10
    save_every: int = 1000
    keep: int = 3
    preview_every: int = 0
    progress: bool = True  # a rich progress bar when stderr is a terminal (rank 0)
    label: str = "train"


@dataclass
class TrainState:
    """What a checkpoint stores besides the weights."""

    step: int = 0
    samples: int = 0  # samples trained on, all ranks
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> reason
    extra: dict[str, Any] = field(default_factory=dict)  # for the command (e.g. finetune's best accuracy)


@dataclass
class Hooks:
    """Optional per-command callbacks, all run on every rank unless they say otherwise."""

    save_model: Callable[[nn.Module, Path], None] | None = None  # write an HF model folder (rank 0)
    preview: Callable[[nn.Module, Any, int, Path], None] | None = None  # (model, batch, step, folder), rank 0
    # (epoch, step, state) -> metrics to log, e.g. finetune's validation accuracy
    end_of_epoch: Callable[[int, int, TrainState], dict | None] | None = None
    log: Callable[[dict], None] | None = None  # every metrics record (rank 0)


class Trainer:
    """Runs optimizer steps from `state.step` to `settings.total_steps`; see the module docstring."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
                 optimizer: torch.optim.Optimizer, schedule: Schedule, loader, sampler, run: RunFolder,
                 settings: LoopSettings, dist: Dist, precision: Precision, hooks: Hooks | None = None,
                 compile: bool = False):  # fmt: skip
        self.model = model  # the plain module: what checkpoints hold
        self.loss_fn, self.optimizer, self.schedule = loss_fn, optimizer, schedule
        self.loader, self.sampler, self.run, self.settings = loader, sampler, run, settings
        self.dist, self.precision, self.hooks = dist, precision, hooks or Hooks()
        self.state = TrainState()
        net: nn.Module = model
        if dist.enabled:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if compile:
            net = torch.compile(net)
        self.net = net  # what forward runs through (DDP-wrapped and/or compiled)
        self._ddp = (
            net if isinstance(net, nn.parallel.DistributedDataParallel) else getattr(net, "_orig_mod", None)
        )
        self._stop_signal: int | None = None
        # last good batch: stands in, with zero weight, for an all-unreadable one under DDP
        self._filler = None

    # -- checkpoints ------------------------------------------------------------------------------------------
    def resume(self, checkpoint: Path) -> None:
        """Load weights, optimizer, scaler and step from a checkpoint folder (the loop re-derives the rest)."""
        from safetensors.torch import load_file

        state = torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)
        weights = load_file(checkpoint / "model.safetensors", device=str(self.dist.device))
        self.model.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(state["step"], state.get("samples", 0), dict(state.get("skipped", {})),
                                json.loads(state.get("extra", "{}")))  # fmt: skip
        if state.get("world", self.dist.world) != self.dist.world:
            log.warning("resuming a %d-process run on %d processes: the data order differs from here on",
                        state["world"], self.dist.world)  # fmt: skip
        if self.dist.is_main:
            self.run.truncate_metrics(self.state.step)

    def save_checkpoint(self) -> Path | None:
        self._gather_skipped()
        if not self.dist.is_main:
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else {},
            "step": self.state.step,
            "samples": self.state.samples,
            "skipped": self.state.skipped,
            "extra": dumps(self.state.extra),
            "world": self.dist.world,
        }

        def write(folder: Path) -> None:
            # also an HF model folder: `--init RUN/checkpoints/step-N` works
            self.model.save_pretrained(folder)
            torch.save(state, folder / TRAINER_STATE)

        return self.run.save_checkpoint(
            self.state.step, write, self.settings.keep, _checkpoint_bytes(state, self.model)
        )

    def _save_model(self) -> None:
        """The final model (RUN/model); no room for it is one line, as for a checkpoint."""
        from ..files import no_space_reported

        good = self.run.latest_checkpoint()
        advice = f"use {good}: the last checkpoint holds these weights, as a model folder"
        with no_space_reported(self.run.model, _checkpoint_bytes({}, self.model), advice):
            self.hooks.save_model(self.model, self.run.model)

    def _gather_skipped(self) -> None:
        if self.dist.enabled:
            parts: list[Any] = [None] * self.dist.world
            torch.distributed.all_gather_object(parts, self.state.skipped)
            for part in parts:
                self.state.skipped.update(part)

    # -- signals ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _catch_signals(self) -> Iterator[None]:
        def handler(signum, _frame):
            if self._stop_signal is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    # -- data -------------------------------------------------------------------------------------------------
    def _micro_batches(self, first: int) -> Iterator[tuple[int, Any]]:
        """(epoch, batch) from micro-batch number `first` on; each epoch gives steps_per_epoch x accum of them."""
        per_epoch = self.settings.steps_per_epoch * self.settings.accum
        epoch, start = divmod(first, per_epoch)
        while True:
            self.sampler.set_epoch(epoch, start)
            taken = start
            for batch in self.loader:
                if taken >= per_epoch:
                    break
                yield epoch, batch
                taken += 1
            epoch, start = epoch + 1, 0

    # -- one step ---------------------------------------------------------------------------------------------
    def _forward_backward(self, batch: Any, last: bool) -> tuple[float, int]:
        """One micro-batch: returns (sum of loss x samples, samples); unreadable videos are counted, not used."""
        for path, reason in batch.get("failed", []) if isinstance(batch, dict) else []:
            if path not in self.state.skipped:
                log.warning("skipped unreadable video: %s", reason)
            self.state.skipped.setdefault(path, reason)
        empty = isinstance(batch, dict) and batch.get("pixel_values") is None
        weight = 1.0
        if empty:
            if not self.dist.enabled:
                return 0.0, 0
            if self._filler is None:  # every rank must run backward for DDP's gradient all-reduce
                raise TrainingError("the first batch of a rank held only unreadable videos; check the data")
            batch, weight = self._filler, 0.0
        else:
            batch = to_device(batch, self.dist.device)
            self._filler = batch
        sync = contextlib.nullcontext() if last or not self.dist.enabled else self._ddp.no_sync()
        with sync:
            with self.precision.autocast():
                loss, n = self.loss_fn(self.net, batch)
            scaled = loss.float() * (weight / self.settings.accum)
            if self.precision.scaler is not None:
                scaled = self.precision.scaler.scale(scaled)
            scaled.backward()
        n = 0 if weight == 0 else n
        return loss.detach().float() * n, n

    def _optimizer_step(self) -> float | None:
        grad_norm = None
        scaler = self.precision.scaler
        if self.settings.clip_grad > 0:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad))
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _set_lr(self, step: int) -> float:
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    # -- the loop ---------------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        s, dist = self.settings, self.dist
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.state.step >= s.total_steps:
            return self.state
        batches = self._micro_batches(self.state.step * s.accum)
        window = _Window()
        last_batch = None
        # VMAE_STEP_DELAY (seconds): a debugging aid that slows a run down, e.g. to interrupt it in a test
        delay = float(os.environ.get("VMAE_STEP_DELAY", "0") or 0)
        with self._catch_signals(), _progress(s, self.state.step, dist.is_main) as bar:
            while self.state.step < s.total_steps:
                step = self.state.step
                # dropout and drop path draw from a generator seeded by the step: resuming needs no RNG state
                torch.manual_seed(step_seed(s.seed, step, dist.rank))
                lr = self._set_lr(step)
                loss_sum = torch.zeros((), device=dist.device)
                count = 0
                for i in range(s.accum):
                    epoch, batch = next(batches)
                    part, n = self._forward_backward(batch, last=i == s.accum - 1)
                    loss_sum, count = loss_sum + part, count + n
                    last_batch = batch
                stats = torch.stack([loss_sum, torch.tensor(float(count), device=dist.device),
                                     torch.tensor(float(self._stop_signal is not None), device=dist.device)])  # fmt: skip
                if dist.enabled:
                    torch.distributed.all_reduce(stats)
                total_loss, total_n, stop = stats.tolist()
                if total_n == 0:
                    self.optimizer.zero_grad(set_to_none=True)
                    raise TrainingError(
                        f"step {step}: every video of the batch was unreadable; check the data"
                    )
                loss = total_loss / total_n
                if not math.isfinite(loss):
                    good = self.run.latest_checkpoint()
                    raise TrainingError(
                        f"the loss became {loss} at step {step}; stopped without saving. The last good checkpoint "
                        f"is {good if good else '(none yet)'}: resume from it with a lower --lr, longer warmup, "
                        "gradient clipping (--set optim.clip_grad=1.0) or --dtype bf16 instead of fp16"
                    )
                grad_norm = self._optimizer_step()
                self.state.step += 1
                self.state.samples += int(total_n)
                window.add(loss, int(total_n), grad_norm)
                bar(self.state.step, loss, lr, window.rate())
                if delay:
                    time.sleep(delay)
                done = self.state.step >= s.total_steps
                if self.state.step % max(s.log_every, 1) == 0 or done:
                    self._log(window, lr, epoch)
                if (
                    s.preview_every
                    and self.state.step % s.preview_every == 0
                    and dist.is_main
                    and self.hooks.preview
                ):
                    self.hooks.preview(self.model, last_batch, self.state.step, self.run.previews)
                if self.hooks.end_of_epoch and self.state.step % s.steps_per_epoch == 0:
                    extra = self.hooks.end_of_epoch(
                        self.state.step // s.steps_per_epoch - 1, self.state.step, self.state
                    )
                    if extra and dist.is_main:
                        self.run.append_metrics({"step": self.state.step, **extra})
                if stop:
                    self.save_checkpoint()
                    raise Interrupted(
                        f"interrupted at step {self.state.step}; saved a checkpoint in {self.run.checkpoints}. "
                        f"Continue with the same command and --resume"
                    )
                if self.state.step % s.save_every == 0 and not done:
                    self.save_checkpoint()
        self.save_checkpoint()
        if s.preview_every and dist.is_main and self.hooks.preview and self.state.step % s.preview_every:
            self.hooks.preview(self.model, last_batch, self.state.step, self.run.previews)
        if dist.is_main and self.hooks.save_model is not None:
            self._save_model()
        return self.state

    def _log(self, window: _Window, lr: float, epoch: int) -> None:
        record = {"step": self.state.step, "epoch": epoch, **window.flush(), "lr": lr,
                  "samples": self.state.samples, "skipped": len(self.state.skipped)}  # fmt: skip
        if self.dist.is_main:
            self.run.append_metrics(record)
            if self.hooks.log:
                self.hooks.log(record)
            log.info(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            )


class _Window:
    """Averages between two metrics lines, and the recent throughput."""

    def __init__(self):
        self.loss, self.n, self.steps, self.norms, self.nonfinite = 0.0, 0, 0, [], 0
        self.t0, self.samples = time.perf_counter(), 0
        self.recent: list[tuple[float, int]] = []

    def add(self, loss: float, n: int, grad_norm: float | None) -> None:
        self.loss, self.n, self.steps = self.loss + loss, self.n + n, self.steps + 1
        if grad_norm is not None and math.isfinite(grad_norm):
            self.norms.append(grad_norm)
        elif grad_norm is not None:  # an fp16 step the gradient scaler skips: counted (NaN is not JSON)
            self.nonfinite += 1
        self.recent = (self.recent + [(time.perf_counter(), n)])[-20:]

    def rate(self) -> float:
        if len(self.recent) < 2:
            return 0.0
        dt = self.recent[-1][0] - self.recent[0][0]
        return sum(n for _, n in self.recent[1:]) / dt if dt > 0 else 0.0

    def flush(self) -> dict:
        now = time.perf_counter()
        out = {
            "loss": self.loss / max(self.steps, 1),
            "samples_per_s": round(self.n / max(now - self.t0, 1e-9), 3),
        }
        if self.norms:
            out["grad_norm"] = sum(self.norms) / len(self.norms)
        if self.nonfinite:
            out["nonfinite_grad_norms"] = self.nonfinite
        self.loss, self.n, self.steps, self.norms, self.nonfinite, self.t0 = 0.0, 0, 0, [], 0, now
        return out


@contextlib.contextmanager
def _progress(s: LoopSettings, start: int, is_main: bool):
    """A rich bar on stderr (step, loss, lr, samples/s, ETA) for rank 0 at a terminal; otherwise nothing."""
    if not (s.progress and is_main and sys.stderr.isatty()):
        yield lambda *a: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(s.label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(s.label, total=s.total_steps, completed=start, info="")

        def update(step: int, loss: float, lr: float, rate: float) -> None:
            bar.update(task, completed=step, info=f"loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} clips/s")

        yield update


def run_lock(root: Path, main: bool | None = None) -> contextlib.AbstractContextManager:
    """The lock of a run folder (`exclusive_lock`), taken by the process that writes it: rank 0 (by default
    from torchrun's RANK); the other ranks take none."""
    from ..files import exclusive_lock

    main = int(os.environ.get("RANK", "0")) == 0 if main is None else main
    return exclusive_lock(root) if main else contextlib.nullcontext()


def fit_run(trainer: Trainer, run: RunFolder, dist: Dist, recipe_toml: str, resume: bool) -> TrainState:
    """Start or continue a run: write RUN/config.toml, resume from the latest checkpoint when asked, train,
    and list the unreadable inputs in RUN/skipped.txt. Shared by pre-training and fine-tuning."""
    from ..files import atomic_write_text

    with run_lock(run.root, dist.is_main):
        latest = run.latest_checkpoint() if resume else None
        if dist.is_main:
            run.root.mkdir(parents=True, exist_ok=True)
            run.clean_partial()
            atomic_write_text(run.config, recipe_toml)
        if latest is not None:
            trainer.resume(latest)
            log.info("resumed from %s", latest)
        state = trainer.fit()
    if dist.is_main and state.skipped:
        lines = "".join(f"{p}\t{reason}\n" for p, reason in sorted(state.skipped.items()))
        atomic_write_text(run.root / "skipped.txt", lines)
    # the other ranks wait for rank 0's last writes (the final model): a process group torn down under it can
    # abort gloo ("terminate called without an active exception")
    if dist.enabled:
        torch.distributed.barrier()
    return state


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
    from ..errors import UsageError

    steps_per_epoch = batches_per_epoch // optim.accum
    if steps_per_epoch == 0:
        raise UsageError(f"one epoch of {num_videos} video(s) holds fewer than --accum {optim.accum} batches; "
                         "lower --accum or --batch-size")  # fmt: skip
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
