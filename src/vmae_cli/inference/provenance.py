"""Where a result comes from: the model and its exact weights, vmae, torch and the decoder, the precision.

`run_provenance` is built once per run and every classify/embed record carries it, so that a JSON line read
on its own names what made it. The weights are named by content: a Hub model by its commit and a local
folder by the sha256 of its weight files (streamed once, then cached by path, size and mtime in
`$XDG_CACHE_HOME/vmae/sha256.json`, so a later run over the same files reads nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "vmae" / "sha256.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks; cached by (real path, size, mtime)."""
    real = os.path.realpath(path)
    if _HEX64.match(os.path.basename(real)):  # a Hub cache blob is named by the sha256 of its content
        return os.path.basename(real)
    stat = os.stat(real)
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = _read_cache()
    if isinstance(cache.get(key), str):
        return cache[key]
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        atomic_write_text(cache_file(), json.dumps(cache, indent=0) + "\n")
    except OSError as e:  # a read-only home costs a re-read next time, nothing else
        log.info("cannot cache weight digests in %s: %s", cache_file(), e)
    return cache[key]


def hub_commit(folder: Path) -> str | None:
    """The commit a Hub model was downloaded at: its cache folder is `.../snapshots/<commit>`."""
    if folder.parent.name == "snapshots" and _HEX40.match(folder.name):
        return folder.name
    return None


def decoder_versions() -> dict[str, str]:
    import av

    return {"pyav": av.__version__, "ffmpeg": str(getattr(av, "ffmpeg_version_info", "unknown"))}


def run_provenance(model, ref: str, dtype, device) -> dict[str, Any]:
    """What every record of a run names: model (as given), revision (Hub commit) or none, weights_sha256
    (one digest, or one per shard), vmae, torch, pyav and ffmpeg versions, dtype and device."""
    import torch

    from .._version import __version__

    found = model.resolved  # set by from_pretrained
    digests = [file_sha256(p) for p in found.weights]
    return {
        "model": str(ref),
        "revision": hub_commit(found.folder),
        "weights_sha256": digests[0] if len(digests) == 1 else digests,
        "vmae": __version__,
        "torch": torch.__version__,
        **decoder_versions(),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
    }


@dataclass
class RunProvenance:
    """A run's provenance (built once) and what it adds to each record."""

    run: dict[str, Any]
    preprocessor: Any  # the run's Preprocessor: where its crops lie

    @classmethod
    def of(cls, engine, ref: str) -> RunProvenance:
        return cls(run_provenance(engine.model, ref, engine.dtype, engine.device), engine.preprocessor)

    def record_fields(self, clips) -> dict[str, Any]:
        """`frames`: each clip's frame indices; `times`: their seconds; `crop`: the resized frame size and each
        crop's [top, left, height, width] in it (view v = clip v // crops, crop v % crops); `provenance`: the
        run's."""
        fields: dict[str, Any] = {
            "frames": clips.indices[:: clips.crops].tolist(),
            "times": np.round(clips.timestamps[:: clips.crops], 6).tolist(),
        }
        if clips.frame_size is not None:
            resize, boxes = self.preprocessor.crop_boxes(*clips.frame_size, clips.crops)
            fields["crop"] = {"resize": list(resize), "boxes": boxes}
        return {**fields, "provenance": self.run}
