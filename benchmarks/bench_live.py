"""`vmae classify --live` on a loopback stream at real-time pace: end-to-end latency, and whether lag grows.

    python benchmarks/bench_live.py [--model models/motion] [--seconds 60 | --minutes 10] [--fps 25]
                                    [--size 320x240] [--window S] [--hop S]

A writer thread in this process encodes H.264 MPEG-TS (x264 zerolatency) at real-time pace into the stdin of a
real `vmae classify --live - --json` process (tests/videos.stream_mpegts); each JSON line is stamped as it
arrives here. Two latencies per window, from the moment the window's last frame:
- left the writer, to its line arriving here: end to end (encoding, the pipe, demuxing, decoding, the model,
  the JSON line);
- came out of vmae's decoder, to the record being written: vmae's own `latency` field.
Target (issue 17): end-to-end latency <= window + one model call, with no growing lag (the slope of latency
over stream time, by least squares, times the run's length, stays well under one window).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/videos.py: the stream writer the tests use
STARTUP = 5.0  # seconds of stream left out of the lag slope


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def run(args) -> dict:
    from tests.videos import stream_mpegts

    width, height = (int(v) for v in args.size.split("x"))
    frames = round(args.seconds * args.fps)
    cmd = [sys.executable, "-m", "vmae_cli", "classify", "--live", "-", "-m", args.model, "--json",
           "--device", args.device]  # fmt: skip
    cmd += [
        *(["--window", str(args.window)] if args.window else []),
        *(["--hop", str(args.hop)] if args.hop else []),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0, env=env)  # fmt: skip
    started: list[float] = []

    def write() -> None:
        try:
            started.append(stream_mpegts(proc.stdin, frames, rate=args.fps, size=(width, height)))
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    records, arrived = [], []
    for line in proc.stdout:
        arrived.append(time.monotonic())
        records.append(json.loads(line))
    err = proc.stderr.read().decode()
    proc.wait()
    writer.join()
    if proc.returncode != 0 or not records:
        sys.exit(f"vmae failed ({proc.returncode}): {err.strip()}")
    t0 = started[0]
    end = np.array([r["end"] for r in records])
    sent = t0 + end - 1.0 / args.fps  # when each window's last frame left the writer
    e2e = np.array(arrived) - sent
    own = np.array([r["latency"] for r in records])
    model = np.array([r["model_time"] for r in records])
    steady = end > STARTUP  # the first seconds come in a burst: FFmpeg's probe holds them (about 1 s)
    slope = float(np.polyfit(end[steady], e2e[steady], 1)[0]) if steady.sum() > 2 else 0.0  # s per stream s
    window = records[0]["end"] - records[0]["start"]
    last = records[-1]
    return {"cpu": cpu_model(), "model": args.model, "stream": f"{width}x{height} H.264 at {args.fps} fps",
            "seconds": args.seconds, "window": window, "windows": len(records),
            "windows_skipped": last["windows_skipped"], "frames_received": last["frames_received"],
            "frames_dropped": last["frames_dropped"], "e2e": e2e, "e2e_steady": e2e[steady], "own": own, "model_time": model,
            "slope_per_minute": slope * 60, "summary": err.strip().splitlines()[-1]}  # fmt: skip


def pct(x: np.ndarray) -> str:
    return f"p50 {np.percentile(x, 50):.3f} s, p95 {np.percentile(x, 95):.3f} s, max {x.max():.3f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "models" / "motion"))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--minutes", type=float, default=None, help="overrides --seconds (the issue's target: 10)")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--size", default="320x240")
    p.add_argument("--window", type=float, default=None)
    p.add_argument("--hop", type=float, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.minutes is not None:
        args.seconds = args.minutes * 60
    r = run(args)
    call = float(np.percentile(r["model_time"], 95))
    target = r["window"] + call
    grown = r["slope_per_minute"] * r["seconds"] / 60
    print(f"cpu: {r['cpu']}")
    print(f"stream: {r['stream']}, {r['seconds']:.0f} s, model {r['model']}, window {r['window']:.3f} s")
    print(f"windows: {r['windows']} classified, {r['windows_skipped']} skipped; frames: {r['frames_received']} "
          f"received, {r['frames_dropped']} dropped")  # fmt: skip
    print(f"model call: {pct(r['model_time'])}")
    print(f"latency end to end (writer -> JSON line): {pct(r['e2e'])}")
    if len(r["e2e_steady"]):
        print(f"  after the first {STARTUP:.0f} s: {pct(r['e2e_steady'])}")
    print(f"latency in vmae (decoded frame -> record): {pct(r['own'])}")
    verdict = "met" if float(np.percentile(r["e2e"], 95)) <= target else "NOT met"
    print(f"target: end-to-end p95 <= window + one model call (p95) = {target:.3f} s: {verdict}")
    growing = "grows" if grown > 0.25 * r["window"] else "does not grow"
    print(f"lag (after the first {STARTUP:.0f} s): slope {r['slope_per_minute'] * 1000:+.2f} ms per minute, {grown * 1000:+.1f} ms over the run: "
          f"{growing}")  # fmt: skip
    print(f"vmae: {r['summary']}")


if __name__ == "__main__":
    main()
