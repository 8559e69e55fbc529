"""A training run's folder: RUN/config.toml, metrics.jsonl, checkpoints/step-N/ (rolling, atomic), previews/,
model/, skipped.txt, and the lock that keeps one run per folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import option
from ..files import atomic_folder, atomic_write_text, exclusive_lock, no_space_reported
from ..jsonfile import dumps

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer_state.pt"


class RunFolder:
    """RUN/: config.toml, metrics.jsonl, checkpoints/step-N/ (rolling, atomic), previews/, model/."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config = self.root / "config.toml"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.previews = self.root / "previews"
        self.model = self.root / "model"

    def has_run(self) -> bool:
        return self.metrics.exists() or bool(self.list_checkpoints())

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first (a half-written one has a temporary name and is ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and (p / TRAINER_STATE).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1][1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int, size: int = 0) -> Path:
        """`write(folder)` fills a temporary folder, which is then renamed to step-N (`atomic_folder`); older
        ones beyond `keep` go.

        `size`: about how many bytes a checkpoint takes. A write that fails for lack of room leaves nothing
        behind and says how much room the checkpoint needs (`no_space_error`)."""
        final = self.checkpoints / f"step-{step}"
        good = self.latest_checkpoint()
        advice = f"continue with the same command and {option('resume')}" + (
            f" (from {good.name})" if good else ""
        )
        with no_space_reported(final, size, advice), atomic_folder(final) as tmp:
            write(tmp)
        for _, old in self.list_checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def clean_partial(self) -> None:
        """Remove what a killed run left half-written (`atomic_folder`'s temporary folders)."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.glob(".step-*.tmp"):
                shutil.rmtree(p, ignore_errors=True)

    def start(self, recipe_toml: str) -> None:
        """Before the first step (rank 0): the folder, without what a killed run left, and its config.toml."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_partial()
        atomic_write_text(self.config, recipe_toml)

    def write_skipped(self, skipped: dict[str, str]) -> None:
        """RUN/skipped.txt: each unreadable input and why, one per line (none: no file)."""
        if skipped:
            lines = "".join(f"{p}\t{reason}\n" for p, reason in sorted(skipped.items()))
            atomic_write_text(self.root / "skipped.txt", lines)

    def append_metrics(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.metrics, "a") as f:
            f.write(dumps(record) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the lines up to `last_step` (a resumed run re-logs what came after its checkpoint)."""
        if not self.metrics.exists():
            return
        keep = []
        for line in self.metrics.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= last_step:
                    keep.append(line)
            except ValueError:  # a line cut short by a kill
                continue
        atomic_write_text(self.metrics, "".join(line + "\n" for line in keep))


def checkpoint_bytes(state: Any, model) -> int:
    """About the size of a checkpoint: the model's tensors and those of the trainer state (the optimizer's)."""
    import torch

    def tensor_bytes(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(v) for v in value)
        return 0

    return tensor_bytes(model.state_dict()) + tensor_bytes(state)


def run_lock(root: Path, main: bool | None = None) -> contextlib.AbstractContextManager:
    """The lock of a run folder (`exclusive_lock`), taken by the process that writes it: rank 0 (by default
    from torchrun's RANK); the other ranks take none."""
    main = int(os.environ.get("RANK", "0")) == 0 if main is None else main
    return exclusive_lock(root) if main else contextlib.nullcontext()
