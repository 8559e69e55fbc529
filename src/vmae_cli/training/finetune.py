"""VideoMAE fine-tuning as a library: a recipe, a labelled set, a classifier, and the shared training loop.

`vmae finetune` (cli/finetune.py) parses options and calls `resolve_recipe` and `run_finetuning`. The model
starts from a pre-training checkpoint (a new head), a classifier (a new head when the labels differ) or a
preset (from scratch). Each epoch ends with validation (top-1 / top-5 in metrics.jsonl); the best model goes
to RUN/model with `id2label` and the `frame_sampling` that makes `vmae classify` sample as training did.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import option, spell
from .recipe import FinetuneAugment, FinetuneRecipe

if TYPE_CHECKING:
    import torch

    from ..inference.evaluate import Accuracy
    from ..video.labelled import LabelledSet

log = logging.getLogger(__name__)


# ---- the recipe -----------------------------------------------------------------------------------------------
def resolve_recipe(
    out: Path, config: str | None, sets: list[str], flags: dict, resume: bool
) -> FinetuneRecipe:
    """Defaults < recipe file (or RUN/config.toml when resuming) < `sets` overrides < explicit `flags`."""
    from .recipe import resolve_run_recipe

    return resolve_run_recipe(FinetuneRecipe, "finetune", out, config, sets, flags, resume)


# ---- flips and labels ---------------------------------------------------------------------------------------
# Words that a horizontal flip turns into their mirror image: a clip of a class named with one of them, flipped,
# shows the other side or sense of rotation under the same label (SSv2's "Pushing something from left to right").
MIRRORED_WORDS = frozenset({"left", "right", "leftward", "leftwards", "rightward", "rightwards", "clockwise",
                            "counterclockwise", "anticlockwise"})  # fmt: skip


def mirrored_labels(names) -> list[str]:
    """The class names that read as a side or a sense of rotation, which horizontal flips would swap.

    Words are split at anything but letters and at lower-to-upper case changes ("MovingLeft", "to_the_left",
    "counter-clockwise"). Up and down are not among them: a horizontal flip keeps them.
    """

    def words(name: str) -> set[str]:
        return set(re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower()))

    return [name for name in names if MIRRORED_WORDS & words(name)]


def warn_if_flips_swap_labels(flip: bool, names) -> None:
    """One warning line when flips are on and class names read as directions a flip swaps."""
    mirrored = mirrored_labels(names) if flip else []
    if mirrored:
        shown = ", ".join(repr(n) for n in mirrored[:3]) + (
            f" and {len(mirrored) - 3} more" if len(mirrored) > 3 else ""
        )
        log.warning("horizontal flips are on and the class names %s read as directions a flip swaps; add %s "
                    "(data.flip = false) unless a mirrored clip keeps its label", shown, spell(option("data.flip=False")))  # fmt: skip


# ---- the model --------------------------------------------------------------------------------------------
def build_classifier(ref: str, id2label: dict[int, str], drop_path: float = 0.0, head_dropout: float = 0.0):
    """A classifier for `id2label` from a pre-training checkpoint, a classifier or a preset name."""
    from ..models.config import VideoMAEConfig, preset_names
    from ..models.modeling import VideoMAEForVideoClassification

    kwargs = {"drop_path_rate": drop_path, "head_dropout": head_dropout}
    if ref in preset_names() and not Path(ref).exists():  # from scratch, with the paper's mean pooling
        config = VideoMAEConfig.from_preset(ref).replace(id2label=dict(id2label), use_mean_pooling=True)
        return _new_head(VideoMAEForVideoClassification(config, **kwargs))
    config = VideoMAEConfig.from_pretrained(ref)
    if not config.num_labels:  # a pre-training or encoder checkpoint: a new head on mean-pooled tokens
        return _new_head(VideoMAEForVideoClassification.from_pretrained(
            ref, id2label=dict(id2label), use_mean_pooling=True, model_kwargs=kwargs))  # fmt: skip
    model = VideoMAEForVideoClassification.from_pretrained(
        ref, id2label=dict(id2label), ignore_mismatched_sizes=True, model_kwargs=kwargs
    )
    if config.id2label != id2label:
        log.warning("%s: its labels differ from the data's; the classifier head starts anew", ref)
        return _new_head(model)
    return model.train()


def _new_head(model, init_scale: float = 0.001):
    """A freshly initialised head, its weights scaled by 0.001 as the original fine-tuning does."""
    import torch

    with torch.no_grad():
        model._init_module(model.classifier)
        model.classifier.weight.mul_(init_scale)
    return model.train()


def layer_id(name: str, num_layers: int) -> int:
    """The original's layer ids: embeddings 0, encoder block i -> i + 1, everything after the blocks L + 1."""
    if name.startswith("videomae.embeddings."):
        return 0
    if name.startswith("videomae.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return num_layers + 1


def layer_decay_scale(num_layers: int, decay: float):
    """lr_scale(name) = decay ** (L + 1 - layer_id): the head learns at the full rate, the patch embedding least."""
    return lambda name: decay ** (num_layers + 1 - layer_id(name, num_layers))


# ---- the objective ----------------------------------------------------------------------------------------
class ClassificationLoss:
    """Cross-entropy with label smoothing, optionally on mixup / cutmix batches; counts train top-1 hits.

    Mixing draws from torch's global generator, which the loop seeds per step, so a resumed run mixes the same.
    """

    def __init__(self, num_labels: int, augment: FinetuneAugment):
        self.num_labels, self.a = num_labels, augment
        self.correct, self.seen = 0, 0

    def __call__(self, net, batch: dict) -> tuple[torch.Tensor, int]:
        import torch
        import torch.nn.functional as F

        from .data import normalize

        x = normalize(batch["pixel_values"])  # uint8 -> float32 on the device, (B, T, 3, S, S)
        y = batch["labels"]
        target = F.one_hot(y, self.num_labels).float()
        target = target * (1 - self.a.label_smoothing) + self.a.label_smoothing / self.num_labels
        x, target, mixed = self._mix(x, target)
        logits = net(x, output_attentions=False, output_hidden_states=False, return_dict=True).logits
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        if not mixed:
            self.correct += int((logits.argmax(-1) == y).sum())
            self.seen += len(y)
        return loss, x.shape[0]

    def _mix(self, x, target):
        import torch

        a = self.a
        if (a.mixup <= 0 and a.cutmix <= 0) or float(torch.rand(())) >= a.mix_prob:
            return x, target, False
        use_cutmix = a.cutmix > 0 and (a.mixup <= 0 or float(torch.rand(())) < a.switch_prob)
        alpha = a.cutmix if use_cutmix else a.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        if use_cutmix:  # one box, the same in every frame (timm's cutmix applied to whole clips)
            S_h, S_w = x.shape[-2:]
            cut = (1 - lam) ** 0.5
            ch, cw = int(S_h * cut), int(S_w * cut)
            cy, cx = int(torch.randint(S_h, ())), int(torch.randint(S_w, ()))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, S_h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, S_w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (S_h * S_w)
        else:
            x = x * lam + x.flip(0) * (1 - lam)
        return x, target * lam + target.flip(0) * (1 - lam), True

    def take_accuracy(self) -> tuple[int, int]:
        out = (self.correct, self.seen)
        self.correct, self.seen = 0, 0
        return out


# ---- validation -------------------------------------------------------------------------------------------
def validate(model, data: LabelledSet, preprocessor, sampling, device, workers: int, batch_size: int,
             dist=None) -> Accuracy:  # fmt: skip
    """Accuracy of `model` on `data` (one view per video unless `sampling` says more); under DDP each rank
    takes a shard and the counts are summed."""
    import torch

    from ..inference.engine import Engine
    from ..inference.evaluate import Accuracy, evaluate_set
    from ..inference.tasks import view_scores

    was_training = model.training
    model.eval()
    try:
        shard = data.shard(dist.rank, dist.world) if dist is not None and dist.enabled else data
        engine = Engine(model, lambda x: model(x, return_dict=True).logits, preprocessor, sampling,
                        batch_size=batch_size, device=device, workers=max(workers, 1),
                        per_view=view_scores(model.config.problem_type))  # fmt: skip
        acc = Accuracy.empty(data.id2label)
        if len(shard):  # workers=0 (as for training data): decode here, without worker processes
            acc = evaluate_set(engine, shard, in_process=workers == 0)
    finally:
        model.train(was_training)
    if dist is not None and dist.enabled:
        counts = torch.tensor([*acc.confusion.reshape(-1).tolist(), acc.top5_hits], dtype=torch.float64,
                              device=dist.device)  # fmt: skip
        torch.distributed.all_reduce(counts)
        values = counts.round().long().cpu().numpy()
        acc.confusion, acc.top5_hits = values[:-1].reshape(acc.confusion.shape), int(values[-1])
    return acc


# ---- the run ----------------------------------------------------------------------------------------------
def run_finetuning(recipe: FinetuneRecipe, data: str, out: Path, val: str | None = None,
                   label_map: str | None = None, resume: bool = False, progress=None):  # fmt: skip
    """Build model, data and loop from `recipe`, train into the run folder `out`, return the TrainState.

    `progress`: a progress display for rank 0 (LoopSettings.progress); None, none."""
    import torch

    from ..video.labelled import finetune_splits
    from ..video.sampling import SamplingSpec
    from .data import (
        ClipSpec,
        EpochSampler,
        FinetuneDataset,
        collate_labelled,
        make_loader,
        run_preprocessor_config,
    )
    from .distributed import setup_distributed, teardown_distributed
    from .loop import LoopSettings, Trainer, fit_run
    from .parts import plan_steps, ready_to_train
    from .recipe import to_toml
    from .run_folder import RunFolder

    r, o = recipe, recipe.optim
    train_set, val_set = finetune_splits(data, val, label_map)
    dist = setup_distributed(r.run.device)
    try:
        torch.manual_seed(r.run.seed)
        model = build_classifier(r.model, train_set.id2label, r.drop_path, r.head_dropout)
        config = model.config
        spec = ClipSpec.for_model(r.data, config, 0.0, "fine-tuning")
        if dist.is_main:
            warn_if_flips_swap_labels(spec.flip, train_set.id2label.values())
        sampler = EpochSampler(len(train_set), o.batch_size, r.run.seed, dist.rank, dist.world)
        plan = plan_steps(o, len(train_set), sampler.batches_per_epoch, spec.num_sample, dist.world)

        scale = layer_decay_scale(config.num_hidden_layers, o.layer_decay) if o.layer_decay < 1 else None
        precision, optimizer = ready_to_train(model, r, plan.peak, dist.device, lr_scale=scale)

        dataset = FinetuneDataset(train_set, spec, r.run.seed)
        loader = make_loader(dataset, sampler, r.run.workers, pin_memory=dist.device.type == "cuda",
                             collate_fn=collate_labelled)  # fmt: skip
        run = RunFolder(out)
        settings = LoopSettings.of(r, plan, progress, "finetune")
        preprocessor = run_preprocessor_config(spec)  # frame_sampling: the training window, one central view
        model.preprocessor_config = preprocessor  # RUN/model's and every checkpoint's
        sampling = SamplingSpec(mode="window", frames=spec.frames, stride=spec.stride)
        loss_fn = ClassificationLoss(config.num_labels, r.augment)
        epoch_end = EpochEnd(model, loss_fn, val_set, preprocessor, sampling, run, dist, r)
        hooks = epoch_end.hooks()
        trainer = Trainer(model, loss_fn, optimizer, plan.schedule, loader, sampler, run, settings, dist, precision,
                          hooks, compile=r.run.compile)  # fmt: skip
        epoch_end.trainer = trainer
        header = (f"vmae finetune: resolved recipe ({len(train_set)} training videos, {config.num_labels} labels, "
                  f"{len(val_set) if val_set else 0} validation; global batch {plan.global_batch} clips; peak lr "
                  f"{plan.peak:.4g}; {plan.total} steps, {plan.schedule.warmup_steps} warmup)")  # fmt: skip
        return fit_run(trainer, run, dist, to_toml(r, header), resume)
    finally:
        teardown_distributed()


class EpochEnd:
    """The loop's hooks for fine-tuning: train accuracy and validation each epoch; the best model to RUN/model.

    Without a validation set the last model is the one saved. `trainer` is set once the Trainer exists.
    """

    def __init__(self, model, loss_fn: ClassificationLoss, val_set, preprocessor: dict, sampling, run, dist,
                 recipe: FinetuneRecipe):  # fmt: skip
        from ..video.preprocess import Preprocessor

        self.model, self.loss_fn, self.val_set, self.run, self.dist = model, loss_fn, val_set, run, dist
        self.recipe, self.sampling = recipe, sampling
        self.proc = Preprocessor.from_dict(preprocessor)
        self.trainer = None

    def hooks(self):
        from .loop import Hooks

        return Hooks(save_model=self.save_model, end_of_epoch=self.end_of_epoch)

    def save(self, model, folder: Path) -> None:
        model.save_pretrained(folder)  # with model.preprocessor_config: the run's, frame_sampling included

    def check(self, state, shard: bool) -> dict:
        """Validate; a new best top-1 is saved to RUN/model (rank 0) and remembered in the checkpoint."""
        r = self.recipe
        acc = validate(self.model, self.val_set, self.proc, self.sampling, self.dist.device, r.run.workers,
                       r.optim.batch_size, self.dist if shard else None)  # fmt: skip
        record = {"val_top1": round(acc.top1, 6), "val_top5": round(acc.top5, 6), "val_count": acc.count}
        state.extra["validated_step"] = state.step
        if acc.top1 > state.extra.get("best_val_top1", -1.0):
            state.extra.update(best_val_top1=acc.top1, best_step=state.step)
            if self.dist.is_main:
                self.save(self.model, self.run.model)
            record["best"] = True
        return record

    def end_of_epoch(self, epoch: int, step: int, state) -> dict:
        import torch

        correct, seen = self.loss_fn.take_accuracy()
        counts = torch.tensor([correct, seen], dtype=torch.float64, device=self.dist.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(counts)
        record: dict = {"epoch": epoch}
        if counts[1] > 0:
            record["train_top1"] = round(float(counts[0] / counts[1]), 6)
        if self.val_set is not None and (epoch + 1) % max(self.recipe.val_every, 1) == 0:
            record.update(self.check(state, shard=True))  # the summed counts: every rank decides alike
        return record

    def save_model(self, model, folder: Path) -> None:
        """After the last step (rank 0): the last model without validation, else the best one stays."""
        state = self.trainer.state
        if self.val_set is None:
            self.save(model, folder)
        elif state.extra.get("validated_step") != state.step:  # the last steps were not validated yet
            self.run.append_metrics({"step": state.step, **self.check(state, shard=False)})
        elif not (folder / "model.safetensors").is_file():
            self.save(model, folder)
