"""`vmae finetune DATA --model INIT --out RUN`: fine-tune a VideoMAE classifier on labelled videos.

The recipe is configs/finetune/<name>.toml (or any TOML file) with `--set section.key=value` and the flags
below on top; RUN/config.toml keeps the resolved recipe, so `--resume` needs nothing but RUN and the data.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    KeepOpt,
    LabelMapOpt,
    NoFlipOpt,
    QuietOpt,
    SaveEveryOpt,
    TrainDeviceOpt,
    TrainDtypeOpt,
    TrainWorkersOpt,
    ValSetOpt,
)


def finetune(
    data: Annotated[
        str,
        typer.Argument(
            help="Class folders (DATA/train/<label>/*.mp4 and DATA/val/<label>/..., or DATA/<label>/...), or a "
            "list file: CSV/TSV with a `path,label` header, or `path label_index` lines with --labels.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: config.toml, metrics.jsonl, checkpoints/, model/.",
            file_okay=False,
            show_default=False,
        ),
    ],  # fmt: skip
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Start from: a pre-training checkpoint (vmae pretrain RUN/model or a "
            "Hub id), a classifier (new head when the labels differ), or a preset name (from scratch).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    val: ValSetOpt = None,
    labels: LabelMapOpt = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Recipe: tiny, small-data, base, or a .toml file (default: the one that fits the model's size).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a recipe key, e.g. --set augment.mixup=0 (repeatable).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", "-b", min=1, help="Videos per device per micro-step.", show_default=False
        ),
    ] = None,  # fmt: skip
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Passes over the data.", show_default=False)
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", min=1, help="Optimizer steps (overrides --epochs).", show_default=False),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            min=0.0,
            help="Absolute peak learning rate (default: optim.blr scaled to the global batch).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    accum: Annotated[
        int | None, typer.Option("--accum", min=1, help="Micro-steps per optimizer step.", show_default=False)
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the head, the data order and augmentation.", show_default=False),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue RUN from its latest checkpoint (exactly), or start it.")
    ] = False,
    no_flip: NoFlipOpt = False,
    device: TrainDeviceOpt = None,
    dtype: TrainDtypeOpt = None,
    workers: TrainWorkersOpt = None,
    save_every: SaveEveryOpt = None,
    keep: KeepOpt = None,
    quiet: QuietOpt = False,
) -> int:
    """Fine-tune a VideoMAE classifier on labelled videos (the paper's recipe: AdamW, layer-wise lr decay,
    drop path, label smoothing, mixup/cutmix, warmup + cosine).

    Validation runs after each epoch; the best model goes to RUN/model, ready for `vmae classify --model RUN/model`
    and `vmae evaluate`. Under `torchrun --nproc_per_node N` the same command trains with DDP.
    """
    from ..training.finetune import resolve_recipe, run_finetuning
    from ..training.run_folder import run_lock
    from .ui import training_progress

    flags = {
        "model": model, "optim.batch_size": batch_size, "optim.epochs": epochs, "optim.max_steps": max_steps,
        "optim.lr": lr, "optim.accum": accum, "run.seed": seed, "data.flip": False if no_flip else None,
        "run.device": device, "run.dtype": dtype, "run.workers": workers, "run.save_every": save_every,
        "run.keep": keep,
    }  # fmt: skip
    with run_lock(out):  # held from the first look at RUN: a second run with the same --out is refused
        recipe = resolve_recipe(
            out, config, list(set_ or []), {k: v for k, v in flags.items() if v is not None}, resume
        )
        state = run_finetuning(
            recipe, data, out, val=val, label_map=labels, resume=resume, progress=training_progress(quiet)
        )
    if state.skipped:
        print(
            f"skipped {len(state.skipped)} unreadable video(s) (listed in {out / 'skipped.txt'})",
            file=sys.stderr,
        )
    best = state.extra.get("best_val_top1")
    detail = (
        f"; best validation top-1 {best:.4f} at step {state.extra.get('best_step')}"
        if best is not None
        else ""
    )
    print(f"trained {state.step} step(s){detail}; model in {out / 'model'}", file=sys.stderr)
    return 0
