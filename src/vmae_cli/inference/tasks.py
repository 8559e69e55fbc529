"""Classification and embedding on top of the batch engine: model loading, sampling choice, records.

This is the library behind `vmae classify` and `vmae embed`; the CLI modules only parse options and render.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import partial

import numpy as np
import torch

from ..errors import CheckpointError, VmaeError, option
from ..runtime import resolve_device, resolve_dtype
from .engine import Engine, VideoResult, preprocessor_for
from .options import RunOptions, sampling_spec  # noqa: F401 - named here first

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = "MCG-NJU/videomae-base-finetuned-kinetics"
POOLING = ("auto", "mean", "token0", "none")


def embed_pooling(config) -> str:
    """What embedding with pool "auto" gives: "mean+fc_norm", what a mean-pooling classifier's head sees, else "mean",
    the encoder's token mean (pre-training and encoder checkpoints, classifiers that read token 0)."""
    return "mean+fc_norm" if config.num_labels > 0 and config.use_mean_pooling else "mean"


def embedding_width(config, pool: str) -> int:
    """The length of one embedding with `pool`: the hidden size, or every token's values for "none"."""
    return config.hidden_size * (config.num_patches if pool == "none" else 1)


def classify_pooling(config) -> str | None:
    """What a classifier's head reads: fc_norm of the token mean, or token 0; None without a head."""
    from ..models.layers import classifier_pooling

    return None if config.num_labels == 0 else classifier_pooling(config)


def task_dtype(task: str, opts: RunOptions, device: torch.device) -> torch.dtype:
    """The dtype `load_model` runs `task` in on `device`: what auto means there (bf16 on a CPU only to classify:
    embeddings stay fp32 on a CPU, so that every CPU gives the same vectors)."""
    return resolve_dtype(opts.dtype, device, cpu_bf16=task == "classify")


def run_dtype(task: str, opts: RunOptions) -> str:
    """`task_dtype` as torch names it (bfloat16, float32, float16). A run's journal keeps it, so that a run
    resumed elsewhere does not mix two precisions."""
    return str(task_dtype(task, opts, resolve_device(opts.device))).removeprefix("torch.")


def load_model(ref: str, revision: str | None, task: str, opts: RunOptions):
    """A model ready for inference: (model, head function, engine). task: 'classify' or an embed pooling."""
    from ..hub import resolve
    from ..models.config import VideoMAEConfig
    from ..models.layers import pool
    from ..models.modeling import VideoMAEForVideoClassification, VideoMAEModel

    device = resolve_device(opts.device)
    dtype = task_dtype(task, opts, device)
    config = VideoMAEConfig.from_json_file(resolve(ref, revision, weights=False).config_path)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if task == "classify":
        model = None
        if config.id2label is None and not config.architectures:  # a bare config: the weights tell
            with contextlib.suppress(VmaeError):
                model = VideoMAEForVideoClassification.from_pretrained(
                    ref, revision, dtype=dtype, device=device
                )
        if (model.config if model is not None else config).num_labels == 0:
            raise CheckpointError(
                f"{ref}: this model has no classifier head (it is a pre-training or feature checkpoint); "
                "fine-tune it first (`vmae finetune`) or use `vmae embed`"
            )
        if model is None:
            model = VideoMAEForVideoClassification.from_pretrained(ref, revision, dtype=dtype, device=device)

        def head(x: torch.Tensor) -> torch.Tensor:
            return model(x, output_attentions=False, output_hidden_states=False, return_dict=True).logits

        per_view = view_scores(model.config.problem_type)
    else:
        per_view = None
        if task == "auto" and embed_pooling(config) == "mean+fc_norm":
            model = VideoMAEForVideoClassification.from_pretrained(ref, revision, dtype=dtype, device=device)
            head = model.features
        else:
            model = VideoMAEModel.from_pretrained(ref, revision, dtype=dtype, device=device)
            how = {"auto": "mean"}.get(task, task)  # mean, token0 or none (every token, (B, N * D))

            def head(x: torch.Tensor) -> torch.Tensor:
                seq = model(x, output_attentions=False, output_hidden_states=False, return_dict=True)
                return pool(seq.last_hidden_state, how)

    pre_cfg = model.preprocessor_config
    engine = Engine(
        model, head, preprocessor_for(model, pre_cfg), sampling_spec(config, pre_cfg, opts),
        batch_size=opts.batch_size, device=device, dtype=dtype, workers=opts.workers,
        reader_kwargs=opts.reader_kwargs, per_view=per_view,
    )  # fmt: skip
    return model, engine


def view_scores(problem_type: str | None):
    """What the engine averages over a classifier's views, from their float32 logits (V, L): softmax
    (sigmoid for multi-label; None, the logits themselves, for regression)."""
    if problem_type == "multi_label_classification":
        return torch.sigmoid
    if problem_type == "regression":
        return None
    return partial(torch.softmax, dim=-1)


def top_predictions(score: torch.Tensor, id2label: dict[int, str], top_k: int) -> list[dict]:
    """The top_k of one (K,) score vector as records: label, index, score (rounded to 6 digits)."""
    values, indices = score.topk(min(top_k, score.numel()))
    return [
        {"label": id2label.get(int(i), f"LABEL_{int(i)}"), "index": int(i), "score": round(float(v), 6)}
        for v, i in zip(values, indices, strict=True)
    ]


def classification_record(result: VideoResult, config, top_k: int, provenance=None) -> dict:
    """The JSON record of DESIGN.md for one input (an error record if it failed); with a RunProvenance, also
    its `times`, `crop` and `provenance` (see provenance.py).

    A timeline adds `timeline` (what was done: window, hop, clips per window, how each clip samples) and
    `segments`, each window with the frames and times (seconds) of each of its clips.
    """
    from .writers import error_record

    if not result.ok:
        record = error_record(result.path, result.error)
        return record if provenance is None else {**record, "provenance": provenance.run}
    id2label = config.id2label or {}
    clips = result.clips
    record = {
        "path": result.path,
        "ok": True,
        "predictions": top_predictions(result.outputs.mean(0), id2label, top_k),  # windows have equal views
        "views": result.views,
        "frames": clips.indices[:: clips.crops].tolist(),  # one row per clip (or segment)
        **(provenance.record_fields(clips) if provenance is not None else {}),
    }
    plan = clips.timeline
    if plan is not None:
        rows = clips.indices[:: clips.crops].reshape(len(plan.windows), plan.clips_per_window, -1)
        times = clips.timestamps[:: clips.crops].reshape(rows.shape)
        record["timeline"] = plan.describe()
        record["segments"] = [
            {"start": round(s, 3), "end": round(e, 3),
             "clips": [{"frames": f, "times": [round(t, 6) for t in ts]}
                       for f, ts in zip(rows[k].tolist(), times[k].tolist(), strict=True)],
             "predictions": top_predictions(result.outputs[k], id2label, top_k)}
            for k, (s, e) in enumerate(plan.windows)
        ]  # fmt: skip
    return record


class NonFiniteOutput(VmaeError):
    """The model gave NaN or infinity for an input (the input fails; JSON has no NaN)."""


def checked_results(results: Iterator[VideoResult], engine: Engine | None) -> Iterator[VideoResult]:
    """`results` with every non-finite output turned into an error that names the likely cause: a score or a
    vector of NaN is no result, and NaN is not JSON. The cause is looked for once, at the first such output."""
    cause = None
    try:
        for result in results:
            if result.ok and not bool(torch.isfinite(result.outputs).all()):
                cause = cause or non_finite_cause(engine)
                result.error = NonFiniteOutput(f"{result.path}: the model produced NaN/inf: {cause}")
            yield result
    finally:
        if hasattr(results, "close"):
            results.close()


def non_finite_cause(engine: Engine) -> str:
    """Why a model gives NaN/inf: non-finite weights, an image_std with a zero, a bad layer_norm_eps, or (when
    none of them) overflow in a low precision."""
    model, pre = engine.model, engine.preprocessor
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        return f"{len(bad)} of its weight tensors hold NaN/inf (first: {bad[0]}); check model.safetensors"
    std, mean = list(pre.image_std), list(pre.image_mean)
    if not all(np.isfinite(std)) or 0 in std or not all(np.isfinite(mean)):
        return f"preprocessor_config.json has image_std {std} and image_mean {mean}; image_std must be finite, non-zero"
    eps = model.config.layer_norm_eps
    if not (np.isfinite(eps) and eps > 0):
        return f"config.json has layer_norm_eps {eps}; it must be a small positive number such as 1e-12"
    return f"an overflow in {str(engine.dtype).replace('torch.', '')}: check its weights, or try {option('dtype')} fp32"


def embedding(result: VideoResult) -> np.ndarray:
    """One float32 vector per input: the views' features averaged."""
    return result.outputs.mean(0).numpy().astype(np.float32)
