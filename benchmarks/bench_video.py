"""vmae's video input against the seed recipe (transformers' pipeline reader) and VideoMAEImageProcessor.

    python benchmarks/bench_video.py [--cache DIR]

A last column gives the decoder floor (FFmpeg alone decoding only the reference frames it must, on all
cores) and so the best speed-up any exact reader could show on the machine. A "sparse frames" line gives
the cost of `--clips 5` on a 10-minute video as a fraction of decoding it from the start.

The test videos are generated once into the cache folder (default ~/.cache/vmae-bench). Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vmae_cli.video.preprocess import Preprocessor  # noqa: E402
from vmae_cli.video.reader import VideoReader  # noqa: E402
from vmae_cli.video.sampling import window_indices  # noqa: E402


def make_video(path: Path, seconds: int, width: int, height: int, rate: int = 25, gop: int = 250) -> Path:
    """A moving gradient with a frame counter bar; x264 ultrafast (P-frames only) so generation stays quick."""
    if path.exists():
        return path
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for f in range(seconds * rate):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = (base + 3 * f) % 256
            img[..., 1] = (base[:, ::-1] + f) % 256
            img[..., 2] = f % 256
            img[: height // 8, : (f * 7) % width] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return path


def make_video_from(path: Path, source: Path, width: int, height: int) -> Path:
    """A real clip scaled to width x height, encoded as ffmpeg does by default (x264 medium, keyint 250) but
    without scene-cut keyframes, so that the 10 s are one GOP: nothing to seek to. On real footage x264
    picks B-frames, most of them non-reference, as in most clips it writes."""
    if path.exists():
        return path
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(source)) as src, av.open(str(tmp), "w") as out:
        rate = src.streams.video[0].average_rate
        stream = out.add_stream(
            "libx264", rate=rate, options={"preset": "medium", "crf": "23", "x264-params": "scenecut=0"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in src.decode(video=0):
            # a new frame: no timestamps or picture type carried over (the source's I-frames would be forced)
            frame = av.VideoFrame.from_ndarray(frame.to_ndarray(width=width, height=height, format="rgb24"))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return path


def seed_recipe(path, indices) -> np.ndarray:
    """transformers' video-classification pipeline reader: decode from frame 0, keep the wanted ones."""
    container = av.open(str(path))
    container.seek(0)
    frames = []
    for i, frame in enumerate(container.decode(video=0)):
        if i > indices[-1]:
            break
        if i >= indices[0] and i in indices:
            frames.append(frame)
    container.close()
    return np.stack([x.to_ndarray(format="rgb24") for x in frames])


def vmae_window_at_end(path) -> np.ndarray:
    with VideoReader(path) as r:
        n = r.count_frames()
        return r.get_frames(np.arange(n - 64, n, 4))


def vmae_frames(path, indices) -> np.ndarray:
    with VideoReader(path) as r:
        return r.get_frames(indices)


def cpu_name() -> str:
    """The CPU model and whether it has native bf16 (avx512_bf16), from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or "unknown CPU"
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?"
    )
    return f"{model}, {os.cpu_count()} cores, avx512_bf16: {'yes' if 'avx512_bf16' in info else 'no'}"


def presentation_pts(path) -> list[int]:
    """Every frame's pts, in presentation order (from the packets; setup, not timed)."""
    with av.open(str(path)) as c:
        return sorted(p.pts for p in c.demux(video=0) if p.pts is not None)


def decoder_floor(path, first_pts: int, last_pts: int) -> int:
    """A lower bound for any exact reader of the window [first_pts, last_pts]: FFmpeg alone, all cores
    (frame threads), seeking to the keyframe before the window and decoding only the reference frames
    up to its end (every non-reference frame skipped, even wanted ones), converting nothing."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type, s.codec_context.thread_count = "AUTO", 0
        s.codec_context.skip_frame = "NONREF"
        c.seek(first_pts, stream=s, backward=True)
        n = 0
        for packet in c.demux(s):
            for _frame in s.decode(packet):
                n += 1
            if packet.pts is not None and packet.pts >= last_pts:
                break
        return n


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb(path: Path) -> float:
    """Peak RSS of a fresh process that reads a 16x4 window at the end of `path`.

    VmHWM rather than getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so the
    child would report this (torch-importing) parent's peak; VmHWM is per address space."""
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[2]); import numpy as np;"
        "from vmae_cli.video.reader import VideoReader\n"
        "with VideoReader(sys.argv[1]) as r:\n"
        "    n = r.count_frames(); r.get_frames(np.arange(n - 64, n, 4))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "print(int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), src], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vmae-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(4, os.cpu_count() or 1))

    t0 = time.perf_counter()
    long_low = make_video(args.cache / "long_160x90_10min.mp4", 600, 160, 90)
    clip_hd = make_video(args.cache / "clip_1080p_10s.mp4", 10, 1920, 1080)  # one GOP: nothing to skip
    clip_hd2 = make_video(args.cache / "clip_1080p_10s_gop50.mp4", 10, 1920, 1080, gop=50)  # 2 s GOPs
    # real footage (tests/data/bikes.mp4, 10 s) at 1080p, x264 medium: B-frames, one 250-frame GOP
    bikes = Path(__file__).resolve().parents[1] / "tests" / "data" / "bikes.mp4"
    clip_hd3 = make_video_from(args.cache / "bikes_1080p_10s_one_gop.mp4", bikes, 1920, 1080)
    long_hd = make_video(args.cache / "long_1080p_60s.mp4", 60, 1920, 1080)
    print(f"videos ready in {time.perf_counter() - t0:.1f} s ({args.cache})", file=sys.stderr)

    rows = []
    for name, path, repeat in [("16x4 window at the end, 10 min 160x90", long_low, 1),
                               ("16x4 window at the end, 10 s 1080p, GOP 250", clip_hd, 3),
                               ("16x4 window at the end, 10 s 1080p, GOP 50", clip_hd2, 3),
                               ("16x4 window at the end, 10 s 1080p camera clip, x264 medium (B-frames), GOP 250", clip_hd3, 3)]:  # fmt: skip
        with VideoReader(path) as r:
            n = r.count_frames()
        idx = np.arange(n - 64, n, 4)
        assert np.array_equal(seed_recipe(path, idx), vmae_window_at_end(path)), "frames differ from the seed"
        pts = presentation_pts(path)
        seed = timed(lambda p=path, i=idx: seed_recipe(p, i), repeat)
        ours = timed(lambda p=path: vmae_window_at_end(p), max(repeat, 3))
        floor = timed(lambda p=path, a=pts[idx[0]], b=pts[idx[-1]]: decoder_floor(p, a, b), max(repeat, 3))
        rows.append((name, seed, ours, floor))

    from transformers import VideoMAEImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = VideoMAEImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    ours_proc = Preprocessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    frames = np.random.default_rng(0).integers(0, 256, (16, 1080, 1920, 3), dtype=np.uint8)
    hf(list(frames), return_tensors="pt"), ours_proc(frames)  # warm up
    rows.append(("preprocess 16 frames of 1080p vs " + type(hf).__name__,
                 timed(lambda: hf(list(frames), return_tensors="pt"), 5), timed(lambda: ours_proc(frames), 9), None))  # fmt: skip

    # sparse frames: --clips 5 reads 5 windows far apart; each should cost about one GOP, not the frames between
    with VideoReader(long_low) as r:
        clips5 = window_indices(r.count_frames(), 16, 4, 5).reshape(-1)  # as classify spreads them; sorted
    assert np.array_equal(vmae_frames(long_low, clips5), seed_recipe(long_low, clips5)), "frames differ"
    sparse_seed = timed(lambda: seed_recipe(long_low, clips5), 1)  # decodes from frame 0 to the last window
    sparse_ours = timed(lambda: vmae_frames(long_low, clips5), 3)

    print(f"CPU: {cpu_name()}")
    # the floor: what FFmpeg alone needs (see decoder_floor); baseline / floor is the best speed-up any
    # exact reader could show for that row on this machine
    print("| benchmark | baseline (s) | vmae (s) | speed-up | decoder floor (s) | best possible |")
    print("|---|---|---|---|---|---|")
    for name, base, ours, floor in rows:
        tail = f" {floor:.4f} | {base / floor:.1f}x |" if floor else " | |"
        print(f"| {name} | {base:.3f} | {ours:.4f} | {base / ours:.1f}x |" + tail)
    print(
        f"| peak RSS, 16x4 window at the end of a 60 s 1080p video (fresh process) | | {peak_rss_mb(long_hd):.0f} MB | | | |"
    )
    print(
        f"sparse frames: `--clips 5` (5 windows of 16x4) on a 10 min 160x90 video (GOP 250): vmae {sparse_ours:.3f} s, "
        f"decode from the start {sparse_seed:.3f} s: {sparse_ours / sparse_seed:.3f}x (target <= 0.15x)"
    )


if __name__ == "__main__":
    main()
