"""The accuracy of a classifier over a labelled set (video/labelled.py), for `vmae evaluate` and fine-tuning.

Accuracy follows the paper's multi-view protocol: each video's views (clips x crops) give softmax scores
that are averaged, then top-1 / top-5 are counted against the true label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..video.labelled import LabelledSet


# ---- accuracy --------------------------------------------------------------------------------------------
@dataclass
class Accuracy:
    """Counts over a labelled set: a confusion matrix (rows: true label, columns: top-1 prediction)."""

    id2label: dict[int, str]
    confusion: np.ndarray  # int64 (L, L)
    top5_hits: int = 0
    views: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def empty(cls, id2label: dict[int, str]) -> Accuracy:
        n = len(id2label)
        return cls(dict(id2label), np.zeros((n, n), dtype=np.int64))

    def add(self, score, label: int) -> None:
        """One video's averaged scores (L,) (a tensor or an array) and its true label."""
        score = np.asarray(score, dtype=np.float64)
        top = np.argsort(-score, kind="stable")[:5]
        self.confusion[label, int(top[0])] += 1
        self.top5_hits += int(label in top)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(np.trace(self.confusion)) / max(self.count, 1)

    @property
    def top5(self) -> float:
        return self.top5_hits / max(self.count, 1)

    def per_class(self) -> list[dict]:
        rows = self.confusion.sum(1)
        return [{"index": i, "label": self.id2label[i], "count": int(rows[i]),
                 "accuracy": float(self.confusion[i, i]) / rows[i] if rows[i] else None}
                for i in range(len(self.id2label))]  # fmt: skip

    def to_dict(self) -> dict:
        """The record of an evaluation (what `vmae evaluate` prints as JSON)."""
        return {
            "top1": round(self.top1, 6),
            "top5": round(self.top5, 6),
            "count": self.count,
            "views": self.views,
            "per_class": [
                {**c, "accuracy": None if c["accuracy"] is None else round(c["accuracy"], 6)}
                for c in self.per_class()
            ],  # fmt: skip
            "labels": [self.id2label[i] for i in range(len(self.id2label))],
            "confusion_matrix": self.confusion.tolist(),
            "failed": [{"path": p, "message": m} for p, m in self.failed],
        }


def evaluate_set(engine, data: LabelledSet, advance=None, in_process: bool = False) -> Accuracy:
    """Run `engine` (an inference.Engine over a classifier's per-view scores, `predict.view_scores`) on every
    video; unreadable ones are listed.

    in_process: decode in this process, one video at a time (no worker processes to start: cheaper for the
    few videos of a small validation set).
    """
    import itertools

    from .tasks import checked_results

    acc = Accuracy.empty(data.id2label)
    if in_process:
        results = itertools.chain.from_iterable(engine.run([p]) for p in data.paths)
    else:
        results = engine.run(data.paths)
    for result, label in zip(checked_results(results, engine), data.labels, strict=True):
        if result.ok:
            acc.add(result.outputs.mean(0).numpy(), label)
            acc.views = result.views
        else:
            acc.failed.append((result.path, str(result.error)))
        if advance is not None:
            advance()
    return acc
