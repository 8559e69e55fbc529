"""The training loop shared by `vmae pretrain` and `vmae finetune`.

What a command supplies: a model, a `loss_fn(model, batch) -> (loss, n)` (n = samples in the batch), an
optimizer (parts.py: `param_groups`, `make_optimizer`), a `Schedule`, an `EpochSampler` + DataLoader, a `RunFolder`
(run_folder.py) and `LoopSettings`. The loop does the rest: lr per step, bf16/fp16 autocast, gradient accumulation, clipping,
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
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import Interrupted, VmaeError, option
from ..jsonfile import dumps
from .distributed import Dist
from .parts import Precision, Schedule, StepPlan, step_seed, to_device
from .run_folder import TRAINER_STATE, RunFolder, checkpoint_bytes

log = logging.getLogger(__name__)


class TrainingError(VmaeError):
    """The run cannot go on (non-finite loss, nothing readable to train on, an unusable run folder)."""


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
    # rank 0's progress display: progress(total=, label=, completed=) -> a context manager that yields
    # advance(done, info); the command line passes its bar (cli/ui.py). None: none
    progress: Callable[..., contextlib.AbstractContextManager] | None = None
    label: str = "train"

    @classmethod
    def of(cls, recipe, plan: StepPlan, progress, label: str, preview_every: int = 0) -> LoopSettings:
        """The settings a recipe (its optim and run tables) and its step plan give."""
        o, run = recipe.optim, recipe.run
        return cls(plan.total, plan.steps_per_epoch, o.accum, o.clip_grad, run.seed, run.log_every, run.save_every,
                   run.keep, preview_every, progress, label)  # fmt: skip


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
            # also an HF model folder: RUN/checkpoints/step-N initialises another run
            self.model.save_pretrained(folder)
            torch.save(state, folder / TRAINER_STATE)

        return self.run.save_checkpoint(
            self.state.step, write, self.settings.keep, checkpoint_bytes(state, self.model)
        )

    def _save_model(self) -> None:
        """The final model (RUN/model); no room for it is one line, as for a checkpoint."""
        from ..files import no_space_reported

        good = self.run.latest_checkpoint()
        advice = f"use {good}: the last checkpoint holds these weights, as a model folder"
        with no_space_reported(self.run.model, checkpoint_bytes({}, self.model), advice):
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
                        f"is {good if good else '(none yet)'}: resume from it with a lower {option('lr')}, longer "
                        f"warmup, gradient clipping ({option('optim.clip_grad')}=1.0) or {option('dtype')} bf16 "
                        "instead of fp16"
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
                        f"Continue with the same command and {option('resume')}"
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
    """Rank 0's progress (step, loss, lr, samples/s) through `s.progress`; otherwise nothing."""
    if not (s.progress and is_main):
        yield lambda *a: None
        return
    with s.progress(total=s.total_steps, label=s.label, completed=start) as advance:

        def update(step: int, loss: float, lr: float, rate: float) -> None:
            advance(step, f"loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} clips/s")

        yield update


def fit_run(trainer: Trainer, run: RunFolder, dist: Dist, recipe_toml: str, resume: bool) -> TrainState:
    """Start or continue a run: write RUN/config.toml, resume from the latest checkpoint when asked, train,
    and list the unreadable inputs in RUN/skipped.txt. Shared by pre-training and fine-tuning."""
    from .run_folder import run_lock

    with run_lock(run.root, dist.is_main):
        latest = run.latest_checkpoint() if resume else None
        if dist.is_main:
            run.start(recipe_toml)
        if latest is not None:
            trainer.resume(latest)
            log.info("resumed from %s", latest)
        state = trainer.fit()
    if dist.is_main:
        run.write_skipped(state.skipped)
    # the other ranks wait for rank 0's last writes (the final model): a process group torn down under it can
    # abort gloo ("terminate called without an active exception")
    if dist.enabled:
        torch.distributed.barrier()
    return state
