"""Provenance in classify/embed records: the fields, the weights' digest, and re-deriving a record's scores."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import av
import pytest

import vmae_cli
from vmae_cli.inference.provenance import file_sha256

from .conftest import REPO, run_vmae
from .models import tiny_classifier
from .videos import write_video

K400 = json.loads((REPO / "src/vmae_cli/labels/k400.json").read_text())  # {"0": "abseiling", ...}
LABELS = [K400[str(i)] for i in range(400)]


@pytest.fixture(scope="module")
def k400_model(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("k400") / "model", labels=tuple(LABELS))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return [
        write_video(root / "wide.mp4", 60, size=(64, 48)),
        write_video(root / "tall.mp4", 45, size=(48, 64)),
    ]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_classify_records_name_frames_times_crops_and_model_and_rederive(tmp_path, k400_model, videos):
    out = tmp_path / "preds.jsonl"
    missing = tmp_path / "missing.mp4"
    result = run_vmae("classify", *map(str, videos), str(missing), "--model", str(k400_model), "--clips", "2",
                      "--crops", "3", "--dtype", "fp32", "--out", str(out), "-q")  # fmt: skip
    assert result.returncode == 1, result.stderr  # the missing input fails, the others are reported
    wide, tall, failed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {
        "model": str(k400_model), "revision": None, "weights_sha256": sha256(k400_model / "model.safetensors"),
        "vmae": vmae_cli.__version__, "torch": __import__("torch").__version__, "pyav": av.__version__,
        "ffmpeg": str(av.ffmpeg_version_info), "dtype": "float32", "device": "cpu",
    }  # fmt: skip
    assert wide["provenance"] == tall["provenance"] == failed["provenance"] == expected
    assert failed["ok"] is False
    for record, n in ((wide, 60), (tall, 45)):
        # 2 clips of 4 frames 4 apart, evenly spaced (the Kinetics protocol); 25 fps, so frame f is at f / 25 s
        sub = list(range(0, n, 4))
        step = (len(sub) - 4) / 1
        assert record["frames"] == [sub[0:4], sub[int(step) : int(step) + 4]]
        assert record["times"] == [[f / 25 for f in row] for row in record["frames"]]
        assert record["views"] == 6
    # shortest edge to 32, then 3 crops of 32x32 along the long side: (42 - 32) / 2 = 5 pixels apart
    assert wide["crop"] == {"resize": [32, 42], "boxes": [[0, 0, 32, 32], [0, 5, 32, 32], [0, 10, 32, 32]]}
    assert tall["crop"] == {"resize": [42, 32], "boxes": [[0, 0, 32, 32], [5, 0, 32, 32], [10, 0, 32, 32]]}

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (recipe,) = [b for b in blocks if b.startswith("# rederive.py")]
    script = tmp_path / "rederive.py"
    script.write_text(recipe)
    for line in (0, 1):
        done = subprocess.run([sys.executable, str(script), str(out), str(line)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
        assert done.returncode == 0, done.stderr
        pairs = json.loads(done.stdout)
        assert len(pairs) == 5 and set(pairs) <= set(LABELS)
        for recorded, recomputed in pairs.values():
            assert abs(recorded - recomputed) <= 2e-6


def test_embed_jsonl_records_carry_provenance(tmp_path, k400_model, videos):
    out = tmp_path / "feats.jsonl"
    result = run_vmae(
        "embed", str(videos[0]), "--model", str(k400_model), "--out", str(out), "--dtype", "fp32"
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["frames"] == [[20, 24, 28, 32]] and record["times"] == [[0.8, 0.96, 1.12, 1.28]]
    assert record["crop"] == {"resize": [32, 42], "boxes": [[0, 5, 32, 32]]}
    assert record["provenance"]["weights_sha256"] == sha256(k400_model / "model.safetensors")


def test_hub_models_are_named_by_commit_and_blob_digest(tmp_path, isolated_hf_cache, k400_model, videos):
    """A Hub model in the HF cache layout: blobs named by sha256, snapshots/<commit> linking to them."""
    commit = "c" * 40
    repo = isolated_hf_cache / "models--acme--tiny-k400"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in k400_model.iterdir():
        blob = repo / "blobs" / sha256(f)
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, repo / "snapshots" / commit), repo / "snapshots" / commit / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = run_vmae("classify", str(videos[0]), "--model", "acme/tiny-k400", "--jsonl", "--dtype", "fp32")
    assert result.returncode == 0, result.stderr
    provenance = json.loads(result.stdout)["provenance"]
    assert provenance["model"] == "acme/tiny-k400" and provenance["revision"] == commit
    assert provenance["weights_sha256"] == sha256(k400_model / "model.safetensors")


def test_weight_digest_is_cached_by_path_size_and_mtime(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = file_sha256(weights)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size; the same mtime put back: the cached digest is used
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(weights) == first
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new mtime: read again
    assert file_sha256(weights) == hashlib.sha256(b"b" * 1000).hexdigest()
