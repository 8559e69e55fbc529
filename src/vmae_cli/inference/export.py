"""Export a model for deployment: a `torch.export` program (.pt2) or ONNX, checked against the eager model.

The exported program is the function `vmae classify` / `vmae embed` run on each batch of views:

    pixel_values float32 (B, T, 3, H, W), normalised as the preprocessor says
        -> the model in its dtype (fp32, bf16 or fp16) -> float32 logits (B, L) or features (B, D)

Float32 at both ends, so that a client needs no bf16 type (numpy has none). A JSON sidecar, OUT.json beside the
file (also stored inside it), holds what a deployment needs to feed it: the preprocessor config, the frame sampling,
the labels, the input and output names and shapes.

Verification decodes a clip (a real video with `verify_clip`, else a synthetic one), runs the saved file and
the eager model on the same views and refuses the export (nothing written) when they differ by more than
`tolerance x max(1, largest |eager output|)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import UsageError, VmaeError, option
from ..files import atomic_files, atomic_write_text
from ..jsonfile import dumps

log = logging.getLogger(__name__)

FORMATS = {".pt2": "pt2", ".onnx": "onnx"}
TASKS = ("auto", "classify", "features")
DTYPES = ("fp32", "bf16", "fp16")
# Largest |exported - eager| allowed, relative to max(1, largest |eager output|). The exported program runs
# the eager model's operations (pt2: the same kernels, so 0 on the CPU; ONNX: other kernels, ~1e-7 in fp32);
# half precision leaves room for a few roundings of its 8 (bf16) or 11 (fp16) significant bits.
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 5e-3}
DEFAULT_OPSET = 18
MIN_OPSET = 17
DYNAMIC_BATCHES = (1, 3)  # a dynamic-batch export is checked at sizes it was not traced at (2)
ONNX_HINT = "pip install 'vmae[onnx]'"


class ExportError(VmaeError):
    """An export that failed or did not verify; nothing was written."""


@dataclass
class ExportResult:
    out: str
    sidecar: str
    format: str  # pt2 | onnx
    task: str  # classify | features
    pool: str | None  # features only: embed's pooling, auto resolved (mean+fc_norm, mean, token0, none)
    dtype: str
    batch: int | str  # a fixed batch size, or "dynamic"
    opset: int | None
    input: dict[str, Any]
    output: dict[str, Any]
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Exported(torch.nn.Module):
    """float32 pixel_values -> float32 outputs through `head` (the engine's own function) in the model's dtype."""

    def __init__(self, model: torch.nn.Module, head, dtype: torch.dtype):
        super().__init__()
        self.model = model  # registered, so that export finds the parameters `head` uses
        self.head, self.dtype = head, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(pixel_values.to(self.dtype)).float()


def export_model(
    ref: str,
    out: str | os.PathLike,
    *,
    revision: str | None = None,
    format: str | None = None,
    task: str = "auto",
    pool: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    verify_clip: str | os.PathLike | None = None,
    tolerance: float | None = None,
) -> ExportResult:
    """Export `ref` to `out` (.pt2 or .onnx) and its sidecar `out`.json; see the module's doc."""
    from .tasks import POOLING, RunOptions, embed_pooling, load_model

    out = Path(out)
    fmt = _format(out, format)
    if task not in TASKS:
        raise UsageError(f"{option('task')} {task!r}: choose one of {', '.join(TASKS)}", param="task", value=task,
                         allowed=TASKS)  # fmt: skip
    if pool not in POOLING:
        raise UsageError(f"{option('pool')} {pool!r}: choose one of {', '.join(POOLING)}", param="pool", value=pool,
                         allowed=POOLING)  # fmt: skip
    if dtype not in DTYPES:
        raise UsageError(f"{option('dtype')} {dtype!r}: choose one of {', '.join(DTYPES)}", param="dtype", value=dtype,
                         allowed=DTYPES)  # fmt: skip
    if fmt == "onnx":
        if dtype == "bf16":
            raise UsageError(
                f"{option('dtype')} bf16: ONNX has no bfloat16 convolution (the patch embedding); export ONNX in "
                "fp32 or fp16, or bf16 as .pt2",
                param="dtype", value=dtype, allowed=("fp32", "fp16"),
            )  # fmt: skip
        if opset < MIN_OPSET:
            raise UsageError(f"{option('opset')} {opset}: vmae exports ONNX opset {MIN_OPSET} or later",
                             param="opset", value=opset, allowed=f"{MIN_OPSET} or later")  # fmt: skip
        _import_onnx(verify)
    sidecar = out.with_name(out.name + ".json")
    tolerance = TOLERANCE[dtype] if tolerance is None else tolerance

    if task == "auto":
        task = "classify" if _config(ref, revision).num_labels > 0 else "features"
    head = "classify" if task == "classify" else pool  # what load_model calls the task

    def engine_in(dtype: str):
        return load_model(ref, revision, head, RunOptions(device="cpu", dtype=dtype))

    model, engine = engine_in(dtype)
    wrapped = _Exported(model, engine.head, engine.dtype).eval()
    cfg = model.config
    h, w = cfg.image_hw
    batch = "batch" if dynamic_batch else batch_size
    example = torch.zeros(2 if dynamic_batch else batch_size, cfg.num_frames, cfg.num_channels, h, w)
    with torch.no_grad():
        out_dim = tuple(wrapped(example[:1]).shape[1:])
    output_name = "logits" if task == "classify" else "features"
    pooled = None if task == "classify" else embed_pooling(cfg) if pool == "auto" else pool
    result = ExportResult(
        out=str(out), sidecar=str(sidecar), format=fmt, task=task, pool=pooled,
        dtype=dtype, batch="dynamic" if dynamic_batch else batch_size, opset=opset if fmt == "onnx" else None,
        input={"name": "pixel_values", "shape": [batch, *example.shape[1:]], "dtype": "float32",
               "layout": "(batch, frames, channels, height, width), normalised by `preprocessor`"},
        output={"name": output_name, "shape": [batch, *out_dim], "dtype": "float32"},
    )  # fmt: skip
    info = {
        **{k: v for k, v in result.to_dict().items() if k not in ("out", "sidecar", "verify")},
        "model": str(ref), "revision": revision, "vmae_version": __version__, "torch_version": torch.__version__,
        "preprocessor": engine.preprocessor.to_dict(), "frame_sampling": engine.spec.to_dict(),
        "id2label": {str(k): v for k, v in (cfg.id2label or {}).items()} if task == "classify" else None,
        "problem_type": cfg.problem_type if task == "classify" else None,
    }  # fmt: skip
    # What travels inside the file; strict JSON, so a NaN or infinity (say in a preprocessor_config.json
    # field) is refused here, before the export, rather than written where strict parsers choke on it.
    described = dumps(info, name=sidecar.name, ensure_ascii=True)

    with atomic_files(out) as work:  # the model file and ONNX's external data, each whole, the model last
        staged = work / out.name
        dynamic = (
            {"pixel_values": {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic_batch else None
        )
        with _quiet_exporters():
            if fmt == "pt2":
                program = torch.export.export(wrapped, (example,), dynamic_shapes=dynamic)
                extra = {"vmae.json": described}
                torch.export.save(program, staged, extra_files=extra)
            else:
                program = torch.onnx.export(
                    wrapped, (example,), dynamo=True, opset_version=opset, input_names=["pixel_values"],
                    output_names=[output_name], dynamic_shapes=dynamic, verbose=False,
                )  # fmt: skip
                program.model.metadata_props["vmae"] = described
                program.save(staged)
        if verify:
            batches = DYNAMIC_BATCHES if dynamic_batch else (batch_size,)
            fp32 = (lambda: engine_in("fp32")[1]) if dtype != "fp32" else None
            result.verify = _verify(staged, fmt, engine, verify_clip, batches, tolerance, fp32)
            info["verify"] = result.verify
        atomic_write_text(sidecar, dumps(info, name=sidecar.name, indent=2, ensure_ascii=True) + "\n")
    return result


def _format(out: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS.values():
            raise UsageError(f"{option('format')} {format!r}: choose pt2 or onnx", param="format", value=format,
                             allowed=("pt2", "onnx"))  # fmt: skip
        return format
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"{out}: name it .pt2 (torch.export) or .onnx, or pass {option('format')} pt2|onnx",
                         param="out", value=out, allowed=(".pt2", ".onnx"))  # fmt: skip
    return FORMATS[out.suffix.lower()]


def _config(ref: str, revision: str | None):
    from ..hub import resolve
    from ..models.config import VideoMAEConfig

    return VideoMAEConfig.from_json_file(resolve(ref, revision, weights=False).config_path)


def _import_onnx(verify: bool) -> None:
    needed = ("onnx", "onnxscript") + (("onnxruntime",) if verify else ())
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"{option('format')} onnx needs {' and '.join(missing)}: {ONNX_HINT}", param="format",
                         value="onnx")  # fmt: skip


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters' chatter (missing torchvision ops, deprecations, progress) is not for vmae's users; any
    line they print goes to stderr, so that stdout keeps only data."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")
    ]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ---- verification ----------------------------------------------------------------------------------------
def verification_views(engine, clip: str | os.PathLike | None, count: int) -> torch.Tensor:
    """`count` float32 views (count, T, 3, H, W) sampled and preprocessed as the engine does: evenly spaced
    clips of `clip` (a video file), or of a synthetic clip (a moving pattern) without one."""
    from ..video.clips import load_clips

    spec = engine.spec
    spec = replace(spec, clips=count if spec.mode == "window" else min(count, 2), crops=1)
    if clip is not None:
        try:
            views = load_clips(clip, spec, engine.preprocessor).pixel_values
        except VmaeError as e:
            raise UsageError(f"{option('verify_clip')} {clip}: {e.render(option)}", param="verify_clip", value=clip,
                             path=clip) from None  # fmt: skip
    else:
        ch, cw = engine.preprocessor.crop
        frames = synthetic_frames(max(64, spec.frames * spec.stride), ch * 5 // 4, cw * 5 // 4)
        indices = spec.indices(len(frames))
        views = engine.preprocessor.normalize(
            torch.cat([engine.preprocessor.resize_crop(frames[i]) for i in indices])
        )
    return views[torch.arange(count) % len(views)]


def synthetic_frames(n: int, height: int, width: int) -> np.ndarray:
    """uint8 (n, height, width, 3): a smooth colour field with a bright square moving across it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        phase = 2 * np.pi * t / n
        img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 7 + y / 11 + phase)], axis=-1) * 200
        side = max(2, min(height, width) // 4)
        top, left = (t * 3) % (height - side), (t * 5) % (width - side)
        img[top : top + side, left : left + side] = 255
        frames[t] = img.astype(np.uint8)
    return frames


def _run_saved(path: Path, fmt: str):
    """A function float32 (B, ...) -> float32 numpy, running the saved file (not the program in memory)."""
    if fmt == "pt2":
        module = torch.export.load(path).module()

        def run(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return module(x).numpy()

        return run
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _verify(
    path: Path, fmt: str, engine, clip, batches, tolerance: float, fp32_engine=None
) -> dict[str, Any]:
    """Run the saved file and the eager engine on the same views; `fp32_engine()`, if given, builds the
    fp32 model to report what a half-precision export costs against it."""
    views = verification_views(engine, clip, max(batches))
    run = _run_saved(path, fmt)
    diff = scale = 0.0
    exported = []
    for b in batches:
        got = run(views[:b])
        want = engine.forward(views[:b]).numpy()
        if got.shape != want.shape:
            raise ExportError(
                f"the exported program gave shape {got.shape} for {want.shape}; nothing was written"
            )
        diff = max(diff, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        exported.append(got)
    report = {
        "clip": str(clip) if clip is not None else "synthetic", "batches": list(batches),
        "max_abs_diff": diff, "max_abs_output": scale, "tolerance": tolerance,
    }  # fmt: skip
    if not np.isfinite(diff) or diff > tolerance * max(1.0, scale):
        raise ExportError(
            f"verification failed: the exported program differs from the eager model by up to {diff:.3g} "
            f"(allowed {tolerance:g} x max(1, largest output {scale:.3g})); nothing was written "
            f"({option('tolerance')} sets the limit, {option('verify=False')} skips the check)"
        )
    if fp32_engine is not None:
        fp32 = fp32_engine()
        report["max_abs_diff_vs_fp32"] = max(
            float(np.abs(got - fp32.forward(views[:b]).numpy()).max())
            for b, got in zip(batches, exported, strict=True)
        )
    return report
