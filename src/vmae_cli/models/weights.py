"""Reading a model's weight files safely, and checking a config against them before a model is built.

Pickled weights are only ever read with `torch.load(weights_only=True)`; safetensors files are memory-mapped,
and their headers alone say every tensor's shape and dtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, FieldError
from .config import VideoMAEConfig

if TYPE_CHECKING:
    import torch


# ---- reading weights -------------------------------------------------------------------------------------
def load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint (safetensors, or pickled .bin through weights_only) onto the CPU."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_load_safetensors(file) if file.suffix == ".safetensors" else _load_pickle(file))
    return state


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(file, e) from None


def cast_weights(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The floating-point tensors of `state` in `dtype` (the others as they are), converted on one thread.

    Safetensors files are memory-mapped, so each tensor is read once, straight into `dtype`. Converting is
    memory-bound: more threads gain little, and on a busy machine each of the ~200 multi-threaded conversions
    waits for a second core to be free (ViT-B fp32 -> bf16 on 2 loaded cores: 0.75 s on 2 threads, 0.06 s on 1).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    finally:
        torch.set_num_threads(threads)


def _damaged(file: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{file}: damaged or truncated safetensors file ({e}); download or save the model again"
    )


# ---- the config against the weights ------------------------------------------------------------------------
@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors' names: F32, BF16, I32...
    file: Path


def read_tensor_infos(files: list[Path]) -> tuple[dict[str, TensorInfo], dict[str, torch.Tensor] | None]:
    """Shape and dtype of every tensor: from the safetensors headers alone (no tensor data is read), or
    from the loaded tensors of pickled files (which have no header to read apart; returned too, to reuse)."""
    if all(f.suffix == ".safetensors" for f in files):
        from safetensors import SafetensorError, safe_open

        infos = {}
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                        part = f.get_slice(name)
                        infos[name] = TensorInfo(tuple(part.get_shape()), part.get_dtype(), file)
            except (SafetensorError, OSError, ValueError) as e:
                raise _damaged(file, e) from None
        return infos, None
    state: dict[str, torch.Tensor] = {}
    infos = {}
    for file in files:
        part = load_weights([file])
        infos.update({k: TensorInfo(tuple(v.shape), _dtype_name(v), file) for k, v in part.items()})
        state.update(part)
    return infos, state


def _dtype_name(tensor: torch.Tensor) -> str:
    """safetensors' name for a floating-point dtype (F32, BF16...), torch's for the others (int32...)."""
    name = str(tensor.dtype).removeprefix("torch.")
    if not tensor.is_floating_point():
        return name
    return "BF16" if name == "bfloat16" else f"F{tensor.element_size() * 8}"


_LAYER = re.compile(r"^(?:videomae\.)?encoder\.layer\.(\d+)\.")
_DECODER_LAYER = re.compile(r"^decoder\.decoder_layers\.(\d+)\.")


def check_config_fits_weights(
    config: VideoMAEConfig,
    infos: dict[str, TensorInfo],
    config_path: Path | None,
    *,
    decoder: bool,
    labels: bool,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Compare a config with what the weights' shapes say, field by field, before the model is built:
    a config.json that claims a million layers is refused at once, not after building them.

    `config_path`: the config.json the config was read from (None: the caller built it); `decoder`: the
    model has the pre-training decoder; `labels`: its classifier must fit the file's; `skip`: fields the
    caller replaced on purpose.
    """
    for name, info in infos.items():
        if not info.dtype.startswith(("F", "BF")):
            raise FieldError(
                f"tensor {name} is {info.dtype}, but VideoMAE weights are floating point (F32, F16 or BF16); "
                "save the model again from its original",
                field=name, value=info.dtype, allowed="F32, F16, BF16", path=info.file,
            )  # fmt: skip

    def tensor(key: str, *, prefixed: bool = True) -> tuple[str, TensorInfo] | tuple[None, None]:
        for k in (key, f"videomae.{key}") if prefixed else (key,):
            if k in infos:
                return k, infos[k]
        return None, None

    facts = []  # (field, the config's value, the weights' value, what says so)
    key, proj = tensor("embeddings.patch_embeddings.projection.weight")
    if proj is not None and len(proj.shape) == 5:
        d, c, ts, ph, pw = proj.shape
        why = f"{key} has shape {proj.shape}"
        facts += [("hidden_size", config.hidden_size, d, why), ("num_channels", config.num_channels, c, why),
                  ("tubelet_size", config.tubelet_size, ts, why), ("patch_size", config.patch_hw, (ph, pw), why)]  # fmt: skip
    facts += _depth("num_hidden_layers", config.num_hidden_layers, _LAYER, infos, "encoder.layer")
    key, mlp = tensor("encoder.layer.0.intermediate.dense.weight")
    if mlp is not None:
        facts.append(
            ("intermediate_size", config.intermediate_size, mlp.shape[0], f"{key} has shape {mlp.shape}")
        )
    key, head = tensor("classifier.weight", prefixed=False)
    if labels and head is not None and config.id2label is not None:
        facts.append(("id2label", config.num_labels, head.shape[0], f"{key} has shape {head.shape}"))
    if decoder:
        key, bridge = tensor("encoder_to_decoder.weight", prefixed=False)
        if bridge is not None:
            facts.append(("decoder_hidden_size", config.decoder_hidden_size, bridge.shape[0],
                          f"{key} has shape {bridge.shape}"))  # fmt: skip
        facts += _depth("decoder_num_hidden_layers", config.decoder_num_hidden_layers, _DECODER_LAYER, infos,
                        "decoder.decoder_layers")  # fmt: skip
        key, mlp = tensor("decoder.decoder_layers.0.intermediate.dense.weight", prefixed=False)
        if mlp is not None:
            facts.append(("decoder_intermediate_size", config.decoder_intermediate_size, mlp.shape[0],
                          f"{key} has shape {mlp.shape}"))  # fmt: skip
    weights = next(iter(infos.values())).file.name if infos else "the weights"
    for field_name, ours, theirs, why in facts:
        if ours != theirs and field_name not in skip:
            shown = f"{len(config.id2label)} labels" if field_name == "id2label" else ours
            hint = (
                "is config.json from this model?" if config_path else "the config does not fit these weights"
            )
            raise FieldError(
                f"{field_name} is {shown}, but {weights} holds {theirs} ({why}); {hint}",
                field=field_name, value=ours, allowed=theirs, path=config_path,
            )  # fmt: skip


def _depth(field_name: str, ours: int, pattern: re.Pattern, infos: dict, what: str) -> list[tuple]:
    found = {int(m.group(1)) for k in infos if (m := pattern.match(k))}
    if not found:
        return []
    return [(field_name, ours, max(found) + 1, f"{what}.0 .. {what}.{max(found)}")]


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file}: holds pickled Python objects besides tensors, which vmae never unpickles; "
            f"run `vmae convert {file} OUT_DIR` to bring it in safely"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{file}: damaged or not a PyTorch checkpoint ({e})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{file}: not a flat state dict of tensors; for an original VideoMAE checkpoint run `vmae convert`"
        )
    return obj
