"""`vmae export MODEL OUT`: a torch.export program (.pt2) or ONNX file for deployment, checked against eager."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import JsonFlag, ModelArg, RevisionOpt, _one_of

OutArg = Annotated[
    Path,
    typer.Argument(help="File to write: .pt2 (torch.export) or .onnx.", show_default=False, dir_okay=False),
]


def export(
    model: ModelArg,
    out: OutArg,
    revision: RevisionOpt = None,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="pt2 or onnx (default: OUT's suffix).",
            show_default=False,
            callback=_one_of("pt2", "onnx"),
        ),
    ] = None,  # fmt: skip
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="classify (logits), features (vectors as `vmae embed` makes), or auto: "
            "classify if the model has a classifier head.",
            callback=_one_of("auto", "classify", "features"),
        ),
    ] = "auto",  # fmt: skip
    pool: Annotated[
        str,
        typer.Option(
            "--pool",
            help="With --task features: auto, mean, token0 or none, as `vmae embed --pool`.",
            callback=_one_of("auto", "mean", "token0", "none"),
        ),
    ] = "auto",  # fmt: skip
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", help="fp32, bf16 (.pt2 only) or fp16.", callback=_one_of("fp32", "bf16", "fp16")
        ),
    ] = "fp32",
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="The fixed batch size (views per call).")
    ] = 1,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch", help="Any batch size (instead of --batch-size).")
    ] = False,
    opset: Annotated[int, typer.Option("--opset", min=17, help="ONNX opset.")] = 18,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Run the written file against the eager model on a clip; "
            "refuse the export above the tolerance.",
        ),
    ] = True,  # fmt: skip
    verify_clip: Annotated[
        Path | None,
        typer.Option(
            "--verify-clip",
            help="A video to verify on (default: a synthetic clip).",
            show_default=False,
            exists=True,
            dir_okay=False,
        ),
    ] = None,  # fmt: skip
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Largest difference allowed, x max(1, largest output) "
            "(default: fp32 1e-4, fp16 5e-3, bf16 2e-2).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    json_: JsonFlag = False,
) -> None:
    """Export a model for deployment, with a sidecar OUT.json (preprocessing, frame sampling, labels).

    The exported program takes float32 pixel_values (batch, frames, 3, height, width), normalised as the
    sidecar's preprocessor says, and returns float32 logits or features: what `vmae classify` and
    `vmae embed` compute for each view. It runs without vmae (torch.export.load, or onnxruntime).
    """
    from ..inference.export import export_model
    from .ui import print_json

    result = export_model(
        model, out, revision=revision, format=format_, task=task, pool=pool, dtype=dtype, batch_size=batch_size,
        dynamic_batch=dynamic_batch, opset=opset, verify=verify, verify_clip=verify_clip, tolerance=tolerance,
    )  # fmt: skip
    if json_:
        print_json(result.to_dict())
        return
    v = result.verify
    if v is not None:
        line = (f"verified on {v['clip']} (batch {', '.join(map(str, v['batches']))}): max |difference| "
                f"{v['max_abs_diff']:.2e}, largest output {v['max_abs_output']:.3g}, tolerance {v['tolerance']:g}")  # fmt: skip
        if "max_abs_diff_vs_fp32" in v:
            line += f"; {v['max_abs_diff_vs_fp32']:.2e} from the fp32 model"
        typer.echo(line, err=True)
    typer.echo(
        f"wrote {result.out} ({result.format}, {result.dtype}): {_signature(result.input)} -> "
        f"{_signature(result.output)}; sidecar {result.sidecar}",
        err=True,
    )


def _signature(tensor: dict) -> str:
    return f"{tensor['name']} ({', '.join(map(str, tensor['shape']))})"
