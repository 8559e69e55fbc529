"""Strict JSON, as every vmae file and stream holds it: no NaN or Infinity (not JSON; strict parsers reject them)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError, VmaeError


def dumps(data: Any, *, name: str = "JSON", **kwargs) -> str:
    """JSON as every vmae file and stream holds it: strict (no NaN or Infinity, which are not JSON and which
    strict parsers reject), so non-finite numbers must be handled where they arise. One that slips through
    is refused here, naming where it is (and `name`, the file it was for), instead of being written."""
    try:
        return json.dumps(data, **{"ensure_ascii": False, **kwargs}, allow_nan=False)
    except ValueError as e:
        where = _non_finite_at(data)
        if where is None:
            raise
        raise VmaeError(
            f"cannot write {name}: {where[0] or 'the value'} is {where[1]}, which JSON cannot hold"
        ) from e


def _non_finite_at(data: Any, where: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN or infinity in nested dicts and lists."""
    if isinstance(data, float) and not math.isfinite(data):
        return where, data
    items = (
        data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    )
    for key, value in items:
        found = _non_finite_at(value, f"{where}.{key}" if where and isinstance(key, str) else
                               f"{where}[{key}]" if not isinstance(key, str) else key)  # fmt: skip
        if found is not None:
            return found
    return None


def read_object(path: str | os.PathLike) -> dict:
    """A model file that holds one JSON object (config.json, preprocessor_config.json), as a dict; anything
    else is a CheckpointError that names the file."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{path}: not a valid JSON file ({e}); re-download or fix it") from None
    if not isinstance(d, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object, got {type(d).__name__}; re-download or fix it"
        )
    return d
