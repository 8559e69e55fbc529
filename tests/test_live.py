"""`vmae classify --live`: real MPEG-TS streams on loopback, served at real-time pace by a PyAV writer in a
subprocess, through a pipe and over FFmpeg's tcp listen mode, into `vmae` in a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vmae_cli.inference.live import live_classify
from vmae_cli.inference.tasks import RunOptions, load_model
from vmae_cli.models.modeling import VideoMAEForVideoClassification

from .conftest import REPO
from .models import TINY_PREPROCESSOR, build, tiny_config
from .videos import stream_mpegts, write_audio

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's socket table")

FPS = 25
T, STRIDE = 4, 2  # the test model's clip: 4 frames at stride 2, 0.32 s of stream
CLIP = T * STRIDE / FPS


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    sampling = {"mode": "window", "frames": T, "stride": STRIDE, "clips": 1, "crops": 1, "pad": "repeat_last"}
    config = tiny_config(use_mean_pooling=True, id2label={0: "walking", 1: "running", 2: "jumping"})
    return build(VideoMAEForVideoClassification, config, tmp_path_factory.mktemp("live"),
                 preprocessor={**TINY_PREPROCESSOR, "frame_sampling": sampling})  # fmt: skip


def _writer(target: str, frames: int, **popen) -> subprocess.Popen:
    """A PyAV writer serving `frames` frames as MPEG-TS at FPS frames a second (tests/videos.stream_mpegts)."""
    code = f"from tests.videos import stream_mpegts; stream_mpegts({target!r}, {frames}, rate={FPS})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, **popen)


def _vmae(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vmae_cli", "classify", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_writer(frames: int) -> tuple[subprocess.Popen, str]:
    """A writer in FFmpeg's tcp listen mode, and the URL to read it from once it listens (a probe connection
    would be taken for its one client, so the kernel's socket table says when)."""
    port = _free_port()
    writer = _writer(f"tcp://127.0.0.1:{port}?listen=1", frames)
    listening = f"0100007F:{port:04X} 00000000:0000 0A"  # 127.0.0.1:port, state LISTEN
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if listening in Path("/proc/net/tcp").read_text():
            return writer, f"tcp://127.0.0.1:{port}"
        time.sleep(0.05)
    writer.kill()
    pytest.fail("the writer never listened")


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def _check_timeline(records: list[dict], window: float, hop: float) -> None:
    """Windows in order and advancing on the hop grid, each clip inside its window, latency fields sane."""
    assert records
    numbers = [r["window"] for r in records]
    assert numbers == sorted(set(numbers))
    for r in records:
        assert r["start"] == pytest.approx(r["window"] * hop, abs=1e-3)
        assert r["end"] - r["start"] == pytest.approx(window, abs=1e-3)
        times = [t for clip in r["clips"] for t in clip["times"]]
        assert r["start"] - 1e-6 <= min(times) and max(times) < r["end"]
        assert np.all(np.diff(r["clips"][0]["frames"]) == STRIDE)
        assert r["predictions"][0]["label"] in ("walking", "running", "jumping")
        assert 0 <= r["model_time"] <= r["latency"] < window + 3.0  # generous: a shared 2-core CPU
    for key in ("frames_received", "frames_dropped", "windows_skipped"):
        values = [r[key] for r in records]
        assert values == sorted(values)
    if hop == window:  # windows tile the stream: the frames dropped are those of the windows skipped
        assert records[-1]["frames_dropped"] == records[-1]["windows_skipped"] * round(window * FPS)


def test_pipe_gives_json_lines_per_window(model):
    """A stream piped on stdin: one JSON line per window, in order, then the summary and exit 0 at its end."""
    writer = _writer("-", 3 * FPS, stdout=subprocess.PIPE)
    proc = _vmae("--live", "-", "-m", str(model), "-k", "2", stdin=writer.stdout)
    writer.stdout.close()
    out, err = proc.communicate(timeout=120)
    writer.wait(timeout=30)
    assert proc.returncode == 0, err
    records = _records(out)
    _check_timeline(records, CLIP, CLIP)
    assert len(records[0]["predictions"]) == 2
    assert records[-1]["end"] > 2.0  # windows reach the stream's end (3 s)
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("live: the stream ended; ") and f"{3 * FPS} frames received" in summary
    assert "Traceback" not in err


def test_tcp_listen_window_and_hop(model):
    """A writer in tcp listen mode; --window and --hop place overlapping windows on the hop grid."""
    writer, url = _listening_writer(3 * FPS)
    proc = _vmae("--live", url, "-m", str(model), "--window", "0.5", "--hop", "0.25", "--json")
    out, err = proc.communicate(timeout=120)
    writer.wait(timeout=30)
    assert proc.returncode == 0, err
    records = _records(out)
    _check_timeline(records, 0.5, 0.25)
    assert len(records) >= 4


def test_slow_model_drops_frames_instead_of_lagging(model):
    """A model slower than the stream (each call takes 0.4 s, windows come every 0.32 s): windows are skipped
    and their frames dropped, and the latency stays about one window plus one call, however long it runs."""
    net, engine = load_model(str(model), None, "classify", RunOptions(device="cpu", dtype="fp32"))
    head = engine.head

    def slow_head(x):
        time.sleep(0.4)
        return head(x)

    engine.head = slow_head
    writer, url = _listening_writer(5 * FPS)
    records = list(live_classify(url, loaded=(net, engine)))
    writer.wait(timeout=30)
    _check_timeline(records, CLIP, CLIP)
    last = records[-1]
    assert last["windows_skipped"] > 0 and last["frames_dropped"] > 0
    assert last["frames_received"] > 4 * FPS
    latencies = [r["latency"] for r in records]
    assert max(latencies) < CLIP + 2 * 0.4 + 1.0
    half = len(latencies) // 2
    assert np.mean(latencies[half:]) < np.mean(latencies[:half]) + 0.3  # no growing lag


def test_unreachable_source_is_one_line(model):
    port = _free_port()  # nothing listens there
    proc = _vmae("--live", f"tcp://127.0.0.1:{port}", "-m", str(model))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert out == ""
    assert err.strip().splitlines() == [f"error: tcp://127.0.0.1:{port}: connection refused; check that the "
                                        "stream is running"]  # fmt: skip


@pytest.mark.parametrize("kind", ["audio", "text", "short"])
def test_not_a_video_stream(model, tmp_path, kind):
    """Audio only, not media at all, or a stream that ends before one window: one line, exit 1."""
    if kind == "audio":
        data = write_audio(tmp_path / "a.ts").read_bytes()
    elif kind == "text":
        data = b"hello, this is not a video\n" * 100
    else:
        writer = _writer("-", 6, stdout=subprocess.PIPE)  # a window is 8 frames
        data = writer.communicate(timeout=60)[0]
    proc = subprocess.run([sys.executable, "-m", "vmae_cli", "classify", "--live", "-", "-m", str(model)],
                          input=data, capture_output=True, cwd=REPO, timeout=120)  # fmt: skip
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    expected = {"audio": "no video stream", "text": "cannot open", "short": "ended before one window"}[kind]
    assert expected in lines[0]


def test_ctrl_c_ends_with_a_summary(model):
    writer, url = _listening_writer(30 * FPS)
    proc = _vmae("--live", url, "-m", str(model), start_new_session=True)
    first = proc.stdout.readline()  # the first window is out: the stream runs
    assert json.loads(first)["window"] >= 0
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    writer.kill()
    writer.wait()
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted: "), err
    assert "frames received" in lines[0]


def test_live_refuses_file_inputs(model, tmp_path):
    proc = _vmae("x.mp4", "--live", "-", "-m", str(model))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--live reads one stream" in err


def test_a_stalled_stream_ends_with_an_error(model, tmp_path):
    """A source that keeps its connection open and sends nothing more: after `timeout` seconds without data,
    the windows so far are out and LiveSourceError says the stream stalled."""
    import threading

    from vmae_cli.inference.live import LiveSourceError

    data = tmp_path / "s.ts"
    with open(data, "wb") as f:
        stream_mpegts(f, 2 * FPS, rate=FPS)
    server = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        conn.sendall(data.read_bytes())
        release.wait(30)  # the connection stays open, silent
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    loaded = load_model(str(model), None, "classify", RunOptions(device="cpu", dtype="fp32"))
    records = []
    try:
        with pytest.raises(LiveSourceError, match="no data for 1 s; the stream stalled"):
            for record in live_classify(
                f"tcp://127.0.0.1:{server.getsockname()[1]}", loaded=loaded, timeout=1.0
            ):
                records.append(record)
    finally:
        release.set()
        server.close()
    assert records and records[-1]["end"] <= 2.0
