"""Weights converted to bf16 while torch imports: the start-up of `vmae classify clip.mp4`.

Where the model will run in bf16 (the default on a CPU with native bf16), loading it converts every float32
weight: 0.10 s for ViT-B on one thread, after `import torch` and before the forward. inference/ahead.py's
child process converts them while the parent imports torch: `read_as_bf16` reads a safetensors file with numpy
alone (its own reading of the format's header, refusing anything but plain F32 and BF16 tensors laid out end to
end) and rounds each F32 tensor to bf16 as torch does (to nearest, ties to even), bit for bit. The parent
`offer`s them; `from_pretrained` `take`s them for the same files, unchanged since (same device, inode, size and
modification time), in bf16, and reads everything else (another file, another dtype, a tensor with a NaN,
whose bits torch's kernels set their own way) as it always does. Nothing here imports torch at import time.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

MAX_BYTES = 2 << 30  # float32 bytes worth converting ahead (ViT-L: 1.2 GB); larger models load as before
MAX_HEADER = 100 << 20  # the format's own limit on the JSON header
CHUNK = 1 << 20  # float32 values converted per numpy call: 4 MB, which stays in the cache between the steps
_ITEMSIZE = {"F32": 4, "BF16": 2}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (int16), rounded to nearest, ties to even, as torch rounds. NaN is not
    handled (its bits differ between torch's kernels): callers leave tensors with a NaN to torch."""
    out = np.empty(x.size, np.int16)
    _round_into(np.ascontiguousarray(x, dtype=np.float32).reshape(-1), out)
    return out.reshape(x.shape)


def _round_into(x: np.ndarray, out: np.ndarray) -> None:
    """bf16 bits of float32 `x` (1-D) into `out`, CHUNK values per numpy call (torch's rounding: add 0x7FFF plus
    the lowest kept bit, keep the upper 16 bits)."""
    u = x.view(np.uint32)
    r = np.empty(min(CHUNK, len(u)), np.uint32)
    for i in range(0, len(u), CHUNK):
        part, t = u[i : i + CHUNK], r[: len(u[i : i + CHUNK])]
        np.right_shift(part, 16, out=t)
        t &= 1
        t += 0x7FFF
        t += part
        t >>= 16
        np.copyto(out[i : i + len(t)], t, casting="unsafe")


def read_as_bf16(file: Path, identity: tuple[int, int, int, int] | None = None) -> dict[str, np.ndarray]:
    """The F32 tensors of a safetensors file as bf16 bits (int16 arrays of their shapes), those with a NaN
    left out; {} for a file that is anything but well-formed F32/BF16 tensors, past MAX_BYTES, or (`identity`)
    not the file that was asked for (load_weights then reads it, and says what is wrong with it). The tensors
    are views of one array: the data of the file's float32 tensors, converted at once."""
    with open(file, "rb") as f:
        st = os.fstat(f.fileno())
        if identity is not None and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != identity:
            return {}
        layout = _layout(f, st.st_size)
        if layout is None:
            return {}
        # not closed here: the map goes when the last array viewing it does, also on an error midway
        mm = (  # Linux: the pages mapped in one call, not faulted in one by one
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
            if hasattr(mmap, "MAP_POPULATE")
            else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        )
    start, entries = layout
    out = {}
    for lo, hi in _f32_runs(entries):  # runs of consecutive F32 tensors: the whole data in an fp32 file
        x = np.frombuffer(mm, np.float32, (hi - lo) // 4, start + lo)
        bits = np.empty(x.size, np.int16)
        _round_into(x, bits)
        for name, (dtype, shape, begin, end) in entries.items():
            if dtype != "F32" or not lo <= begin < end <= hi:  # another run's, or empty
                continue
            a, b = (begin - lo) // 4, (end - lo) // 4
            if not np.isnan(x[a:b]).any():
                out[name] = bits[a:b].reshape(shape)
    return out


def _f32_runs(entries: dict) -> list[tuple[int, int]]:
    """[begin, end) byte spans of consecutive F32 tensors, in file order."""
    runs: list[list[int]] = []
    for dtype, _, begin, end in sorted(entries.values(), key=lambda e: e[2]):
        if dtype != "F32" or begin == end:
            continue
        if runs and runs[-1][1] == begin:
            runs[-1][1] = end
        else:
            runs.append([begin, end])
    return [(lo, hi) for lo, hi in runs]


def _layout(f, size: int) -> tuple[int, dict[str, tuple[str, tuple[int, ...], int, int]]] | None:
    """(where the data starts, name -> (dtype, shape, begin, end)) from a safetensors header, or None unless
    every tensor is F32 or BF16, sized as its shape says, and the tensors fill the data end to end."""
    try:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(MAX_HEADER, size - 8):
            return None
        header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    entries, spans = {}, []
    for name, e in header.items():
        try:
            dtype, shape, (begin, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
        except (TypeError, KeyError, ValueError):
            return None
        if dtype not in _ITEMSIZE or not all(type(d) is int and d >= 0 for d in (*shape, begin, end)):
            return None
        if end - begin != int(np.prod(shape, dtype=object)) * _ITEMSIZE[dtype]:
            return None
        entries[name] = (dtype, shape, begin, end)
        spans.append((begin, end))
    spans.sort()
    if [b for b, _ in spans] != [0] + [e for _, e in spans[:-1]] or (
        spans[-1][1] if spans else 0
    ) != size - 8 - n:
        return None
    if sum(end - begin for dtype, _, begin, end in entries.values() if dtype == "F32") > MAX_BYTES:
        return None
    return 8 + n, entries


# ---- from whoever prepares to the loader that takes ---------------------------------------------------------
def identity(file: Path) -> tuple[int, int, int, int] | None:
    """What says a file is the same one: device, inode, size, modification time."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


Offer = Callable[[], "tuple[list, dict[str, np.ndarray]] | None"]  # -> (identities of the files, tensors)
_offer: list[Offer] = []  # at most one: the start-up of one command
_lock = threading.Lock()


def offer(get: Offer) -> None:
    """Make tensors converted elsewhere available to the next `take`: `get()` waits for them and returns the
    identities of the files they came from with the tensors (bf16 bits, by name), or None."""
    with _lock:
        _offer[:] = [get]


def withdraw(get: Offer) -> None:
    """Take back an offer nobody took."""
    with _lock:
        if get in _offer:
            _offer.remove(get)


def take(files: list[Path], dtype: torch.dtype, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bf16 tensors to replace those of `state` (read from `files`), if the model loads in bf16 and what is on
    offer came from exactly these files, unchanged since; {} otherwise (the offer is used up either way)."""
    import torch

    with _lock:
        get = _offer.pop() if _offer else None
    if get is None or dtype != torch.bfloat16:
        return {}
    got = get()
    if got is None or got[0] != [identity(f) for f in files] or None in got[0]:
        return {}
    arrays = got[1]
    if any(name not in state or tuple(state[name].shape) != a.shape for name, a in arrays.items()):
        return {}  # not what the loader read: leave it all to the loader
    return {name: torch.from_numpy(a).view(torch.bfloat16) for name, a in arrays.items()}
