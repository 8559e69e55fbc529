"""VideoMAE pre-training as a library: resolve a recipe, build model, data and loop, train into a run folder.

`vmae pretrain` (cli/pretrain.py) parses options and calls `resolve_recipe` and `run_pretraining`.
Reconstruction previews (original | masked | reconstruction) are written as PNG strips without extra packages.
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .recipe import PretrainRecipe

log = logging.getLogger(__name__)
PREVIEW_MIN_SIZE = 128  # pixels per frame in a preview, at least
PREVIEW_FRAMES = 8  # rows of a preview strip


# ---- the recipe -----------------------------------------------------------------------------------------------
def resolve_recipe(
    out: Path, config: str | None, sets: list[str], flags: dict, resume: bool
) -> PretrainRecipe:
    """Defaults < recipe file (or RUN/config.toml when resuming) < `sets` overrides < explicit `flags`."""
    from .recipe import PretrainRecipe, resolve_run_recipe

    return resolve_run_recipe(PretrainRecipe, "pretrain", out, config, sets, flags, resume)


# ---- the run ------------------------------------------------------------------------------------------------
def run_pretraining(recipe: PretrainRecipe, data: str, out: Path, resume: bool = False, progress=None):
    """Build model, data and loop from `recipe`, train into the run folder `out`, return the TrainState.

    `progress`: a progress display for rank 0 (LoopSettings.progress); None, none."""
    import torch

    from ..models.config import VideoMAEConfig
    from ..models.modeling import VideoMAEForPreTraining
    from ..video.discover import list_videos
    from .data import ClipSpec, EpochSampler, PretrainDataset, make_loader, run_preprocessor_config
    from .distributed import setup_distributed, teardown_distributed
    from .loop import Hooks, LoopSettings, Trainer, fit_run
    from .parts import plan_steps, ready_to_train
    from .recipe import to_toml
    from .run_folder import RunFolder

    r, o = recipe, recipe.optim
    dist = setup_distributed(r.run.device)
    try:
        config = VideoMAEConfig.from_pretrained(r.init or r.model)
        spec = ClipSpec.for_model(r.data, config, r.mask.ratio, "pre-training", r.mask.decoder_ratio)
        paths = list_videos(data)
        sampler = EpochSampler(len(paths), o.batch_size, r.run.seed, dist.rank, dist.world)
        plan = plan_steps(o, len(paths), sampler.batches_per_epoch, spec.num_sample, dist.world)

        torch.manual_seed(r.run.seed)
        if r.init:
            model = VideoMAEForPreTraining.from_pretrained(
                r.init, model_kwargs={"drop_path_rate": r.drop_path}
            )
        else:
            model = VideoMAEForPreTraining(config, drop_path_rate=r.drop_path)
        precision, optimizer = ready_to_train(model, r, plan.peak, dist.device)

        dataset = PretrainDataset(paths, spec, config, r.run.seed)
        loader = make_loader(dataset, sampler, r.run.workers, pin_memory=dist.device.type == "cuda")
        run = RunFolder(out)
        settings = LoopSettings.of(r, plan, progress, "pretrain", r.run.preview_every)
        model.preprocessor_config = run_preprocessor_config(spec)  # RUN/model's and every checkpoint's
        hooks = Hooks(
            save_model=lambda m, folder: m.save_pretrained(folder),
            preview=lambda m, batch, step, folder: write_preview(m, batch, folder / f"step-{step}.png"),
        )
        trainer = Trainer(model, mae_loss, optimizer, plan.schedule, loader, sampler, run, settings, dist, precision,
                          hooks, compile=r.run.compile)  # fmt: skip
        header = (f"vmae pretrain: resolved recipe (global batch {plan.global_batch} clips = {o.batch_size} videos x "
                  f"{spec.num_sample} samples x {o.accum} accum x {dist.world} process(es); peak lr {plan.peak:.4g}; "
                  f"{plan.total} steps, {plan.schedule.warmup_steps} warmup)")  # fmt: skip
        return fit_run(trainer, run, dist, to_toml(r, header), resume)
    finally:
        teardown_distributed()


def mae_loss(net, batch: dict) -> tuple[torch.Tensor, int]:
    """The pre-training objective: MSE on the (normalised) pixels of the masked tokens."""
    from .data import normalize

    x = normalize(batch["pixel_values"])  # uint8 -> float32 on the device
    out = net(
        x,
        batch["bool_masked_pos"],
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
        decoder_mask=batch.get("decoder_mask"),
    )  # whatever the config says: the loss alone
    return out.loss, x.shape[0]


# ---- previews -----------------------------------------------------------------------------------------------
def reconstruction_strip(
    model, clip: torch.Tensor, mask: torch.Tensor, rows: int = PREVIEW_FRAMES
) -> np.ndarray:
    """original | masked | reconstruction for up to `rows` frames of one clip, as uint8 (H, W, 3).

    clip: uint8 (T, 3, S, S); mask: bool (N,). With norm_pix_loss the predicted patches are un-normalised with
    the mean and std of the true patch, as the original visualisation does.
    """
    import torch

    from ..models.targets import patchify, unpatchify
    from .data import IMAGENET_MEAN, IMAGENET_STD, normalize

    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = normalize(clip.to(model.device)[None])  # (1, T, 3, S, S)
            m = mask.to(model.device)[None]
            pred = model(x, m, return_dict=True).logits.float()  # (1, M, P*C)
    finally:
        model.train(was_training)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    frames = (x * std + mean).clamp(0, 1)
    patches = patchify(frames, cfg.tubelet_size, cfg.patch_hw)  # (1, N, P, C)
    target = patches[m]  # (M, P, C)
    pred = pred.reshape(target.shape)
    if cfg.norm_pix_loss:
        pred = pred * (target.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6) + target.mean(
            dim=-2, keepdim=True
        )
    recon, hidden = patches.clone(), patches.clone()
    recon[m] = pred.clamp(0, 1)
    hidden[m] = 0.5  # masked tokens shown grey
    views = [unpatchify(v.flatten(2), cfg)[0] for v in (patches, hidden, recon)]  # each (T, C, S, S)
    T = views[0].shape[0]
    picks = torch.linspace(0, T - 1, min(rows, T)).round().long().tolist()
    gap = 2
    grid = torch.ones(3, len(picks) * (frames.shape[-2] + gap) - gap, 3 * (frames.shape[-1] + gap) - gap)
    S_h, S_w = frames.shape[-2:]
    for i, t in enumerate(picks):
        for j, v in enumerate(views):
            grid[:, i * (S_h + gap) : i * (S_h + gap) + S_h, j * (S_w + gap) : j * (S_w + gap) + S_w] = v[
                t
            ].cpu()
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def write_preview(model, batch: dict, path: Path) -> Path:
    """Reconstruct the first clip of a batch and write the strip as a PNG."""
    if batch is None or batch.get("pixel_values") is None:
        return path
    strip = reconstruction_strip(model, batch["pixel_values"][0], batch["bool_masked_pos"][0])
    scale = -(-PREVIEW_MIN_SIZE // model.config.image_hw[0])  # small inputs: pixels enlarged, not blurred
    if scale > 1:
        strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    write_png(path, strip)
    return path


def write_png(path: Path, rgb: np.ndarray) -> None:
    """A minimal RGB PNG (8-bit, no filter), written atomically; no imaging library needed."""
    from ..files import atomic_write_bytes

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))  # fmt: skip
    atomic_write_bytes(path, png)
