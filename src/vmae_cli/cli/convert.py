"""`vmae convert SRC DST`: an original VideoMAE / VideoMAEv2 / transformers checkpoint -> an HF model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import JsonFlag

SrcArg = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint: .pth/.pt/.bin/.safetensors file, or a folder holding one.", show_default=False
    ),
]
DstArg = Annotated[Path, typer.Argument(help="Model folder to write (HF layout).", show_default=False)]


def convert(
    src: SrcArg,
    dst: DstArg,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Force the source layout: original, v2 or hf.", show_default=False),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Class names: k400, ssv2, or a file (one per line, or JSON).",
            show_default=False,
            metavar="k400|ssv2|FILE",
        ),
    ] = None,
    heads: Annotated[
        int | None,
        typer.Option("--heads", min=1, help="Attention heads (default: by width).", show_default=False),
    ] = None,
    decoder_heads: Annotated[
        int | None,
        typer.Option(
            "--decoder-heads", min=1, help="Decoder attention heads (default: by width).", show_default=False
        ),
    ] = None,
    num_frames: Annotated[
        int | None,
        typer.Option(
            "--num-frames", min=1, help="Frames per clip (default: args, else 16).", show_default=False
        ),
    ] = None,  # fmt: skip
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size", min=1, help="Input size in pixels (default: args, else 224).", show_default=False
        ),
    ] = None,  # fmt: skip
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare with the original forward pass; fail above 1e-4.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it is a non-empty folder.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Convert a checkpoint into a model folder that vmae and transformers load (config.json + model.safetensors).

    Pickles are read with weights_only (tensors and argparse.Namespace only): a file that would run code is refused.
    """
    from ..convert.build import convert_checkpoint, given_by
    from .ui import print_json

    result = convert_checkpoint(
        src, dst, source=from_, labels=labels, heads=heads, decoder_heads=decoder_heads, num_frames=num_frames,
        image_size=image_size, check=verify, force=force,
    )  # fmt: skip
    if json_:
        print_json(result.to_dict())
        return
    c = result.config
    names = {"original": "original VideoMAE", "v2": "VideoMAEv2", "hf": "transformers"}
    shape = (f"{c['num_hidden_layers']} layers x {c['hidden_size']} wide, {c['num_attention_heads']} heads, "
             f"patch {c['patch_size']}, tubelet {c['tubelet_size']}, {c['num_frames']} frames at {c['image_size']} px")  # fmt: skip
    what = {"pretraining": "pre-training model (encoder + decoder)", "encoder": "encoder",
            "classifier": f"classifier with {c['num_labels']} labels"}[result.layout]  # fmt: skip
    typer.echo(f"detected: {names[result.source]} {what}; {shape}", err=True)
    given = {given_by("heads"), given_by("decoder_heads"), given_by("num_frames", "image_size")}
    guessed = [f"{k} from {v}" for k, v in result.origins.items() if v not in given]
    if guessed:
        typer.echo("inferred: " + "; ".join(guessed), err=True)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if result.max_abs_diff is not None:
        typer.echo(
            f"verified: max |difference| {result.max_abs_diff:.2e} (tolerance {result.tolerance:g})", err=True
        )
    typer.echo(
        f"wrote {result.dst} ({result.architecture}, {result.parameters / 1e6:.1f}M parameters)", err=True
    )
