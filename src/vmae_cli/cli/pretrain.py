"""`vmae pretrain DATA --out RUN`: VideoMAE masked-autoencoder pre-training, from a laptop to torchrun.

The recipe is configs/pretrain/<name>.toml (or any TOML file) with `--set section.key=value` and the flags
below on top; RUN/config.toml keeps the resolved recipe, so `--resume` needs nothing but RUN.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    KeepOpt,
    NoFlipOpt,
    QuietOpt,
    SaveEveryOpt,
    TrainDeviceOpt,
    TrainDtypeOpt,
    TrainWorkersOpt,
)


def pretrain(
    data: Annotated[
        str,
        typer.Argument(
            help="Folder of videos (searched recursively), or a list file: one path "
            "per line, or CSV/TSV with a path column.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: config.toml, metrics.jsonl, checkpoints/, previews/, model/.",
            file_okay=False,
            show_default=False,
        ),
    ],
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="Recipe: tiny, small-data, small, base, or a .toml file "
            "(default: the one that fits the model's size, else base).",
            show_default=False,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a recipe key, e.g. --set optim.epochs=100 (repeatable).",
            show_default=False,
        ),
    ] = None,
    model_config: Annotated[
        str | None,
        typer.Option(
            "--model-config",
            help="Architecture: a preset (mini, tiny, small, base, large, huge) or a model folder.",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="Start from these weights (folder or Hub id): a pre-training checkpoint, or an encoder or "
            "classifier, whose encoder gets a new decoder.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", "-b", min=1, help="Videos per device per micro-step.", show_default=False
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Passes over the data.", show_default=False)
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            min=1,
            help="Optimizer steps (overrides --epochs for the length of the run and its schedule).",
            show_default=False,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            min=0.0,
            help="Absolute peak learning rate (default: optim.blr scaled to the global batch).",
            show_default=False,
        ),
    ] = None,
    mask_ratio: Annotated[
        float | None,
        typer.Option("--mask-ratio", min=0.0, max=0.99, help="Tube masking ratio.", show_default=False),
    ] = None,
    accum: Annotated[
        int | None,
        typer.Option(
            "--accum",
            min=1,
            help="Micro-steps per optimizer step (the global batch, and so the lr, grow with it).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the init, the data order, crops and masks.", show_default=False),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue RUN from its latest checkpoint (exactly), or start it if it has none."
        ),
    ] = False,
    no_flip: NoFlipOpt = False,
    device: TrainDeviceOpt = None,
    dtype: TrainDtypeOpt = None,
    workers: TrainWorkersOpt = None,
    save_every: SaveEveryOpt = None,
    keep: KeepOpt = None,
    quiet: QuietOpt = False,
) -> int:
    """Self-supervised VideoMAE pre-training on unlabelled videos (tube masking, pixel reconstruction).

    Under `torchrun --nproc_per_node N` the same command trains with DDP; the lr follows the global batch.
    """
    from ..training.pretrain import resolve_recipe, run_pretraining
    from ..training.run_folder import run_lock
    from .ui import training_progress

    flags = {
        "model": model_config, "init": init, "optim.batch_size": batch_size, "optim.epochs": epochs,
        "optim.max_steps": max_steps, "optim.lr": lr, "mask.ratio": mask_ratio, "optim.accum": accum,
        "run.seed": seed, "data.flip": False if no_flip else None, "run.device": device, "run.dtype": dtype,
        "run.workers": workers, "run.save_every": save_every, "run.keep": keep,
    }  # fmt: skip
    with run_lock(out):  # held from the first look at RUN: a second run with the same --out is refused
        recipe = resolve_recipe(
            out, config, list(set_ or []), {k: v for k, v in flags.items() if v is not None}, resume
        )
        state = run_pretraining(recipe, data, out, resume=resume, progress=training_progress(quiet))
    skipped = state.skipped
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable video(s) (listed in {out / 'skipped.txt'}):", file=sys.stderr
        )
        for path, reason in list(skipped.items())[:10]:
            print(f"  {reason if path in reason else f'{path}: {reason}'}", file=sys.stderr)
    print(f"trained {state.step} step(s); model in {out / 'model'}", file=sys.stderr)
    return 0
