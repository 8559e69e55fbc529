"""`vmae probe`: kNN and ridge probes of frozen features, checked against brute force and end to end."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from vmae_cli.inference.probe import knn_scores, read_features, ridge_scores, run_probes

from .conftest import vmae_in_process
from .models import tiny_pretraining
from .videos import write_video


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_knn_leave_one_out_matches_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)), rng.integers(0, 3, 30)
    scores = knn_scores(x, y, None, 3, k=5, temperature=0.1)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(30):
        sims = unit @ unit[i]
        sims[i] = -np.inf
        near = np.argsort(-sims)[:5]
        expect = np.zeros(3)
        for j in near:
            expect[y[j]] += np.exp(sims[j] / 0.1)
        np.testing.assert_allclose(scores[i], expect / expect.sum(), rtol=1e-9)


def test_ridge_leave_one_out_is_exact():
    """The hat-matrix shortcut equals refitting without each video (standardisation fixed, free intercept)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(25, 6)), rng.integers(0, 3, 25)
    loo, lam = ridge_scores(x, y, None, 3)
    z = (x - x.mean(0)) / x.std(0)
    onehot = np.eye(3)[y]
    for i in range(25):
        keep = np.arange(25) != i
        design = np.hstack([z[keep], np.ones((24, 1))])
        penalty = np.diag([lam] * 6 + [0.0])  # the intercept is not penalised
        w = np.linalg.solve(design.T @ design + penalty, design.T @ onehot[keep])
        np.testing.assert_allclose(loo[i], np.append(z[i], 1.0) @ w, atol=1e-8)


def test_probes_separate_clusters_and_score_validation():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 16)) * 3
    train_y, val_y = np.repeat(np.arange(4), 4), np.repeat(np.arange(4), 10)
    train_x = centres[train_y] + rng.normal(size=(16, 16))
    val_x = centres[val_y] + rng.normal(size=(40, 16))
    labels = {i: f"class {i}" for i in range(4)}
    for result in run_probes(train_x, train_y, val_x, val_y, labels, k=3):
        assert result.accuracy.count == 40 and result.accuracy.top1 >= 0.95, result.name
    shuffled = run_probes(train_x, rng.permutation(train_y), val_x, val_y, labels, k=3)
    assert all(r.accuracy.top1 < 0.6 for r in shuffled)  # labels that do not follow the vectors: no signal


def _write_colour(path: Path, rgb, frames: int = 8, size=(40, 32)) -> Path:
    """A clip of one flat colour with a little noise (so every clip differs)."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)

    def picture(_f: int, width: int, height: int) -> np.ndarray:
        noise = rng.normal(0, 12, (height, width, 3))
        return np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)

    return write_video(path, frames, size=size, picture=picture)


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    for split, count in (("train", 3), ("val", 4)):
        for name, rgb in COLOURS.items():
            for i in range(count):
                _write_colour(root / "data" / split / name / f"{name}{i}.mp4", rgb)
    return root


def test_probe_cli_end_to_end(colour_set, tmp_path, capsys):
    """A random tiny encoder's features already tell flat colours apart: both probes near 1 on held-out clips,
    and the vectors kept with --features are `vmae embed`'s and are reused without running the model."""
    model = tiny_pretraining(tmp_path / "enc")
    feats = tmp_path / "feats.npy"
    code, out, err = vmae_in_process(capsys, "probe", colour_set / "data", "--model", model, "--json",
                                     "--features", feats, "--device", "cpu", "--dtype", "fp32")  # fmt: skip
    assert code == 0, err
    summary = _strict(out)
    assert (summary["train"], summary["val"], summary["dim"]) == (9, 12, 64)
    assert summary["protocol"] == "train -> val"
    for name in ("knn", "linear"):
        assert summary[name]["count"] == 12 and summary[name]["top1"] >= 0.9, summary[name]
        assert [c["label"] for c in summary[name]["per_class"]] == sorted(COLOURS)
    assert summary["knn"]["k"] == 9  # --k 20 capped at the training set

    # the kept vectors are exactly `vmae embed`'s, row for row
    code, _, err = vmae_in_process(capsys, "embed", colour_set / "data", "--model", model, "--out",
                                   tmp_path / "embed.npy", "--device", "cpu", "--dtype", "fp32", "-q")  # fmt: skip
    assert code == 0, err
    mine, theirs = read_features(feats), read_features(tmp_path / "embed.npy")
    assert mine.keys() == theirs.keys() and len(mine) == 21
    for path, vector in mine.items():
        np.testing.assert_array_equal(vector, theirs[path])

    # from the kept file: no model needed, the same figures; a leave-one-out run without a validation set
    code, again, err = vmae_in_process(capsys, "probe", colour_set / "data", "--features", feats, "--json")
    assert code == 0, err
    assert _strict(again)["knn"] == summary["knn"] and _strict(again)["linear"] == summary["linear"]
    code, loo, err = vmae_in_process(
        capsys, "probe", colour_set / "data" / "val", "--features", feats, "--json"
    )
    assert code == 0, err
    assert _strict(loo)["val"] is None and _strict(loo)["knn"]["count"] == 12


def test_probe_table_and_errors(colour_set, tmp_path, capsys):
    model = tiny_pretraining(tmp_path / "enc")
    code, out, err = vmae_in_process(capsys, "probe", colour_set / "data", "-m", model, "--k", "3", "-q",
                                     "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert "knn" in out and "linear" in out and "per class" in out and "red" in out
    code, _, err = vmae_in_process(capsys, "probe", colour_set / "data")
    assert code == 2 and "--model" in err
    (tmp_path / "other.npy").write_bytes(b"not an array")
    (tmp_path / "other.paths.txt").write_text("x.mp4\n")
    code, _, err = vmae_in_process(capsys, "probe", colour_set / "data", "--features", tmp_path / "other.npy")
    assert code == 2 and "cannot read the features" in err and len(err.strip().splitlines()) == 1


def test_probe_features_of_inputs_that_all_failed_keep_the_models_width(tmp_path, capsys):
    """As `vmae embed`: a features file without rows is (0, hidden size), not (0, 0)."""
    model = tiny_pretraining(tmp_path / "enc")
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "1.mp4").write_text("not a video")
    code, _, err = vmae_in_process(capsys, "probe", tmp_path / "data", "-m", model, "--features",
                                   tmp_path / "f.npy", "-q", "--device", "cpu")  # fmt: skip
    assert code == 2 and "at least two training videos" in err
    hidden = json.loads((Path(model) / "config.json").read_text())["hidden_size"]
    assert np.load(tmp_path / "f.npy").shape == (0, hidden)
