"""Options shared by several commands, as `Annotated` aliases so every command spells them the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelArg = Annotated[
    str, typer.Argument(help="Model folder, weight file, or Hugging Face Hub id.", show_default=False)
]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Hub revision: branch, tag or commit.", show_default=False)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Write JSON to stdout instead of a table.")]

InputsArg = Annotated[
    list[str],
    typer.Argument(help="Video files, folders (searched recursively), globs, or - to read paths from stdin.",
                   show_default=False),
]  # fmt: skip
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Write to this file (atomically) instead of stdout.",
                              show_default=False, dir_okay=False)
]  # fmt: skip
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="With --out: skip inputs the output already holds; keep what it has.")
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Replace an existing --out file that vmae did not write (never an input)."),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Process shard i of n (e.g. 0/4); default: torchrun's RANK/WORLD_SIZE.",
                 show_default=False),
]  # fmt: skip
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Views per model call.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (bf16 on CUDA; on a CPU: bf16 where native for classify, fp32 for embed), fp32, bf16 or fp16.",
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option("--workers", min=0, help="Decoding processes running ahead of the model (0 = automatic)."),
]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", min=0, help="Torch and decoder threads (0 = automatic).")
]
FramesOpt = Annotated[
    int | None,
    typer.Option("--frames", min=1, help="Frames per clip (must match the model).", show_default=False),
]
StrideOpt = Annotated[
    int | None,
    typer.Option("--stride", min=1, help="Frames between samples in a window.", show_default=False),
]


def _one_of(*choices: str):
    """A callback that accepts None or one of `choices` (a usage error, exit 2, otherwise)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"must be {' or '.join(choices)}, got {value!r}")
        return value

    return check


SamplingOpt = Annotated[
    str | None,
    typer.Option(
        "--sampling",
        help="window (strided clips) or uniform (one frame per segment); default: the model's (vmae info).",
        show_default=False,
        callback=_one_of("window", "uniform"),
    ),
]
ClipsOpt = Annotated[
    int | None, typer.Option("--clips", min=1, help="Clips per video, evenly spaced.", show_default=False)
]


def _crops(value: int | None) -> int | None:
    """--crops names one of the paper's spatial views (a usage error, exit 2, otherwise)."""
    if value is not None:
        from ..errors import ConfigError
        from ..video.sampling import SamplingSpec

        try:
            SamplingSpec(crops=value)  # the one place that knows which crops exist
        except ConfigError as e:
            raise typer.BadParameter(str(e)) from None
    return value


CropsOpt = Annotated[
    int | None,
    typer.Option("--crops", help="1 (center) or 3 crops per clip.", show_default=False, callback=_crops),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]

# Labelled sets (finetune, probe): DATA/val is taken when DATA holds train/ and val/.
ValSetOpt = Annotated[
    str | None,
    typer.Option("--val", help="Validation set (class folders or a list file; default: DATA/val if present).",
                 show_default=False),
]  # fmt: skip
LabelMapOpt = Annotated[
    str | None,
    typer.Option("--labels", help="Label map for integer labels: one name per line (line i names index i).",
                 show_default=False),
]  # fmt: skip
# classify and embed default to MCG-NJU/videomae-base-finetuned-kinetics, which their descriptions name: as a
# [default: ...] the id is wider than the help column at 80 columns, and rich would cut it short.
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Model folder, weight file, or Hub id (default: the Kinetics-400 "
                 "classifier, above).", show_default=False),
]  # fmt: skip

# Training runs (pretrain, finetune): None leaves the recipe's value.
TrainDeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", show_default=False)
]
TrainDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, bf16 or fp16.",
        show_default=False,
    ),
]
TrainWorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=0, help="Decoding processes per device.", show_default=False)
]
SaveEveryOpt = Annotated[
    int | None, typer.Option("--save-every", min=1, help="Steps between checkpoints.", show_default=False)
]
KeepOpt = Annotated[int | None, typer.Option("--keep", min=1, help="Checkpoints kept.", show_default=False)]
NoFlipOpt = Annotated[
    bool,
    typer.Option("--no-flip", help="No horizontal flips (data.flip = false): for classes a mirror swaps, such as "
                 "left/right or clockwise."),
]  # fmt: skip
