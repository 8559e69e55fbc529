"""Probes of frozen features: how well an encoder's embeddings separate labelled videos, without training it.

Two standard probes on one set of vectors (self-supervised learning's usual yardsticks, cheap enough to
compare checkpoints before paying for a fine-tune):

- k-nearest neighbours: cosine similarity to the training vectors, the k nearest vote with weights
  exp(similarity / temperature) (the weighted kNN of InstDisc/DINO);
- linear: ridge regression of one-hot labels on standardised features (an unpenalised intercept), its
  strength chosen by exact leave-one-out accuracy on the training set over a log-spaced grid.

Without a validation set both probes are scored leave-one-out on the training set itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError, option
from .evaluate import Accuracy

KNN_K = 20
KNN_TEMPERATURE = 0.07
RIDGE_GRID = np.logspace(-6, 3, 19)  # ridge strengths, relative to the largest squared singular value


@dataclass
class ProbeResult:
    """One probe's accuracy and the setting it used (k, or the chosen ridge strength)."""

    name: str
    accuracy: Accuracy
    params: dict

    def to_dict(self) -> dict:
        return {**self.params, **self.accuracy.to_dict()}


def neighbours(k: int, train_size: int, leave_one_out: bool) -> int:
    """The k a kNN probe can use: at most the training vectors (less the one left out)."""
    return max(1, min(k, train_size - int(leave_one_out)))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray | None, num_classes: int,
               k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> np.ndarray:  # fmt: skip
    """Class scores (Q, L) of the query vectors; `query_x=None` scores each training vector leave-one-out.

    The scores of a row sum to 1: the share of the neighbours' weight that each class holds.
    """
    train = _unit_rows(train_x.astype(np.float64))
    loo = query_x is None
    query = train if loo else _unit_rows(query_x.astype(np.float64))
    sims = query @ train.T  # (Q, N)
    if loo:
        np.fill_diagonal(sims, -np.inf)
    k = neighbours(k, train.shape[0], loo)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (Q, k): the k nearest, unordered
    # exp((s - 1) / T): shifted by the largest possible similarity, so nothing overflows
    weights = np.exp((np.take_along_axis(sims, top, 1) - 1.0) / temperature)
    scores = np.zeros((query.shape[0], num_classes))
    np.add.at(scores, (np.arange(query.shape[0])[:, None], train_y[top]), weights)
    return scores / scores.sum(1, keepdims=True)


def ridge_scores(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray | None,
                 num_classes: int) -> tuple[np.ndarray, float]:  # fmt: skip
    """(class scores (Q, L), the chosen strength) of a ridge probe; `query_x=None`: leave-one-out scores.

    One SVD of the centred training matrix gives every strength's fit and its exact leave-one-out
    predictions, (fitted_i - h_ii y_i) / (1 - h_ii) with h the hat matrix; the strength with the best
    leave-one-out accuracy wins (ties: the stronger one).
    """
    x = train_x.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-12] = 1.0
    x = (x - mean) / std
    onehot = np.eye(num_classes)[train_y]
    y_mean = onehot.mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ (onehot - y_mean)
    n = x.shape[0]
    best = None
    for lam in RIDGE_GRID[::-1] * max(float(s.max()) ** 2, 1e-12):
        shrink = s**2 / (s**2 + lam)
        fitted = u @ (shrink[:, None] * uty) + y_mean
        hat = (u**2 * shrink).sum(1) + 1.0 / n
        loo = (fitted - hat[:, None] * onehot) / np.maximum(1.0 - hat[:, None], 1e-9)
        hits = int((loo.argmax(1) == train_y).sum())
        if best is None or hits > best[0]:
            best = (hits, lam, loo)
    _, lam, loo = best
    if query_x is None:
        return loo, float(lam)
    weights = vt.T @ ((s / (s**2 + lam))[:, None] * uty)  # (D, L)
    return ((query_x.astype(np.float64) - mean) / std) @ weights + y_mean, float(lam)


def run_probes(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None, val_y: np.ndarray | None,
               id2label: dict[int, str], k: int = KNN_K) -> list[ProbeResult]:  # fmt: skip
    """kNN and ridge probes trained on (train_x, train_y) and scored on the validation set, or leave-one-out
    on the training set when `val_x` is None."""
    if len(train_x) < 2:
        raise UsageError(f"a probe needs at least two training videos with features; got {len(train_x)}")
    num_classes = len(id2label)
    truth = train_y if val_x is None else val_y
    knn = knn_scores(train_x, train_y, val_x, num_classes, k)
    ridge, lam = ridge_scores(train_x, train_y, val_x, num_classes)
    results = []
    for name, scores, params in (
        (
            "knn",
            knn,
            {"k": neighbours(k, len(train_x), val_x is None), "temperature": KNN_TEMPERATURE},
        ),
        ("linear", ridge, {"ridge_lambda": float(f"{lam:.4g}")}),
    ):
        acc = Accuracy.empty(id2label)
        for row, label in zip(scores, truth, strict=True):
            acc.add(row, int(label))
        acc.views = 1
        results.append(ProbeResult(name, acc, params))
    return results


# ---- features written by `vmae embed` ------------------------------------------------------------------------
def read_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Vectors of a `vmae embed` output (npy + .paths.txt, npz, safetensors or jsonl), keyed by real path."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    try:
        if fmt == "npy":
            stem = path.with_suffix("")
            names = stem.with_name(stem.name + ".paths.txt").read_text(encoding="utf-8").splitlines()
            vectors = np.load(path, allow_pickle=False)
        elif fmt == "npz":
            with np.load(path, allow_pickle=False) as data:
                names, vectors = [str(p) for p in data["paths"]], data["embeddings"]
        elif fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "np") as f:
                names, vectors = json.loads(f.metadata()["paths"]), f.get_tensor("embeddings")
        elif fmt == "jsonl":
            records = [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
            records = [r for r in records if r.get("ok") and "embedding" in r]
            names = [r["path"] for r in records]
            vectors = np.array([r["embedding"] for r in records], dtype=np.float32)
        else:
            raise UsageError(
                f"{path}: features must be a `vmae embed` output (.npy, .npz, .safetensors, .jsonl)"
            )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{path}: cannot read the features ({e}); give a file written by `vmae embed`"
        ) from None
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise UsageError(f"{path}: {len(names)} paths for an array of shape {tuple(vectors.shape)}; "
                         f"give a file written by `vmae embed` with {option('pool')} mean, token0 or auto",
                         param="features", value=path, path=path)  # fmt: skip
    return {os.path.realpath(p): v for p, v in zip(names, vectors, strict=True)}


def embed_paths(engine, paths: list[str], writer=None, advance=None) -> tuple[dict[str, np.ndarray], list]:
    """One embedding pass: ({real path: vector}, [(path, error message)...]); `writer`: an EmbeddingWriter
    that keeps the vectors as `vmae embed` would (its caller closes it)."""
    from .tasks import embedding

    vectors, failed = {}, []
    for result in engine.run(paths):
        vector = embedding(result) if result.ok else None
        if writer is not None:
            writer.write(result.path, vector, result.error)
        if result.ok:
            vectors[os.path.realpath(result.path)] = vector
        else:
            failed.append((result.path, str(result.error)))
        if advance is not None:
            advance()
    return vectors, failed
