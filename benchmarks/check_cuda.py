"""CUDA checks for a GPU machine (CI has none): classify and embed on cuda agree with the CPU in fp32.

    python benchmarks/check_cuda.py

Builds a small random-weight classifier, writes clips, runs the real CLI on cpu/fp32, cuda/fp32 and
cuda/bf16, and compares the scores and vectors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_classify import build_model, write_clip  # noqa: E402


def vmae(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vmae_cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"vmae {' '.join(args)} failed:\n{result.stderr}")
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = [str(write_clip(tmp / f"c{k}.mp4", 2 + k, (320 + 64 * k, 180 + 36 * k))) for k in range(3)]
        model = str(build_model(tmp / "small", "small", labels=10))
        runs = {}
        for device, dtype in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
            out = vmae("classify", *clips, "--model", model, "--jsonl", "--device", device, "--dtype", dtype,
                       "--clips", "2", "--crops", "3")  # fmt: skip
            runs[device, dtype] = [json.loads(line) for line in out.stdout.splitlines()]
            vmae("embed", *clips, "--model", model, "--out", str(tmp / f"{device}-{dtype}.npy"), "--device", device,
                 "--dtype", dtype)  # fmt: skip
        ref = runs["cpu", "fp32"]
        for key, records in runs.items():
            top = [r["predictions"][0]["index"] for r in records]
            diff = max(abs(p["score"] - q["score"]) for r, s in zip(records, ref, strict=True)
                       for p, q in zip(r["predictions"], s["predictions"], strict=True))  # fmt: skip
            feats = np.load(tmp / f"{key[0]}-{key[1]}.npy")
            fdiff = float(np.abs(feats - np.load(tmp / "cpu-fp32.npy")).max())
            print(f"{key[0]}/{key[1]}: top-1 {top} (cpu fp32: {[r['predictions'][0]['index'] for r in ref]}), "
                  f"max score diff {diff:.2e}, max embedding diff {fdiff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
