"""Where and how models run: the device, the precision (and whether the CPU computes bf16 natively), and how
many decoding workers, with what every worker sets up when it starts (inference's and training's loaders)."""

from __future__ import annotations

import os
import signal
import sys

import torch

from .errors import UsageError, option


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"{option('device')} {name!r}: no CUDA GPU is visible to torch; use cpu",
            param="device",
            value=name,
        )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(
            f"{option('device')} mps: Apple MPS is not available here; use cpu", param="device", value=name
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"{option('device')} {name!r}: expected auto, cpu, cuda, cuda:N or mps",
            param="device",
            value=name,
            allowed=("auto", "cpu", "cuda", "cuda:N", "mps"),
        ) from None


CPU_BF16_ENV = (
    "VMAE_CPU_BF16"  # 1 / 0: the CPU has native bf16 / has not, whatever it is (tests run both ways)
)


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slow.

    VMAE_CPU_BF16=1 or 0 forces the answer, so that one machine can behave as either kind of CPU.
    """
    forced = os.environ.get(CPU_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise UsageError(
                f"{CPU_BF16_ENV}={forced!r}: expected 1 (native bf16), 0 (none), or unset (detect)"
            )
        return forced == "1"
    try:
        return (
            bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            and "AVX512" in torch.backends.cpu.get_cpu_capability()
        )
    except (AttributeError, RuntimeError):
        return False


DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}  # fmt: skip


def as_dtype(value: torch.dtype | str | None, default: torch.dtype = torch.float32, *,
             also: tuple[str, ...] = ()) -> torch.dtype:  # fmt: skip
    """A torch dtype from a dtype or its name (fp32, bf16, fp16, or torch's spelling); None: `default`.
    `also`: other names the caller takes, for the message that refuses an unknown one."""
    if value is None:
        return default
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise UsageError(
            f"{option('dtype')} {value!r}: expected {', '.join((*also, 'fp32', 'bf16'))} or fp16",
            param="dtype", value=value, allowed=(*also, *DTYPES),
        )  # fmt: skip
    return DTYPES[value]


def resolve_dtype(name: str, device: torch.device, *, cpu_bf16: bool) -> torch.dtype:
    """The dtype that NAME (auto, fp32, bf16, fp16) names. auto: bf16 on CUDA (where supported); on the CPU bf16 only where the caller
    allows it (cpu_bf16: classify, evaluate and training, whose results bf16 leaves alike) and the CPU computes it
    natively; float32 otherwise (embed: vectors are stored and compared, so every CPU gives the fp32 ones)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_bf16 and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    return as_dtype(name, also=("auto",))


def default_workers() -> int:
    """Decoding processes: all cores but one (which feeds the model), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def init_decode_worker(_worker_id: int) -> None:
    """One torch thread per worker (the parallelism is the workers), and Ctrl-C left to the parent.

    The parent stops its workers when it is interrupted; a worker that took the SIGINT itself, or whose
    parent left in the middle of receiving a tensor from it (multiprocessing's fd-sharing thread then
    fails on the closed connection), would print a traceback under the parent's one-line message.
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_if_parent_left


def _quiet_if_parent_left(kind, value, traceback) -> None:
    if issubclass(kind, (ConnectionError, EOFError)):
        return  # the parent closed its end: it is going away, and says so itself
    sys.__excepthook__(kind, value, traceback)
