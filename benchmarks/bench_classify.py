"""End-to-end `vmae classify` and `vmae embed` against transformers, as ratios measured in one run.

    python benchmarks/bench_classify.py [--cache DIR] [--repeats 3] [--embed-preset small] [--device cpu]

1. classify: `vmae classify clip.mp4` as a whole process against a whole process running the transformers
   `video-classification` pipeline, both on the same ViT-B checkpoint (random weights, saved as an HF folder)
   and the same 10 s 1080p clip. Target: vmae <= 0.35x the pipeline's time.
2. embed: `vmae embed` over 50 clips (videos/s) against the model alone on pre-made tensors of the same
   shape and batch size. Target: >= 95% of model-only throughput (decoding and I/O hidden). On a CPU, with
   the decoding CPU time per video and the bound it puts on that share where decoders and model share cores.
3. forward: the ViT-B 16x224 forward alone, in the default dtype (`--dtype auto`: bf16 where native) and in
   fp32, as a share of this machine's matmul peak in that dtype (measured between rounds), with the share its
   attention kernel alone reaches and the ceiling that puts on the whole forward. Target: >= 75% (default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

HF_PIPELINE = """
import sys
import av, numpy as np, torch
from transformers import pipeline
device = sys.argv[3] if len(sys.argv) > 3 else None
try:
    pipe = pipeline("video-classification", model=sys.argv[1], device=device)
    print(pipe(sys.argv[2], top_k=5)[0])
except ImportError:  # the pipeline's video-processor path needs torchcodec: run its PyAV image-processor path
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessor
    model = VideoMAEForVideoClassification.from_pretrained(sys.argv[1]).to(device or "cpu").eval()
    processor = VideoMAEImageProcessor.from_pretrained(sys.argv[1])
    n = model.config.num_frames
    indices = np.linspace(0, n - 1, num=n, dtype=np.int64)
    container = av.open(sys.argv[2])
    frames = []
    for i, frame in enumerate(container.decode(video=0)):
        if i > indices[-1]:
            break
        if i in indices:
            frames.append(frame.to_ndarray(format="rgb24"))
    inputs = processor(list(np.stack(frames)), return_tensors="pt").to(device or "cpu")
    with torch.no_grad():
        print(model(**inputs).logits.softmax(-1)[0].topk(5))
"""


def write_clip(path: Path, seconds: int, size: tuple[int, int], rate: int = 25, gop: int = 50) -> Path:
    """A moving-gradient clip (compressible like real footage, not noise)."""
    if path.exists():
        return path
    w, h = size
    tmp = path.with_suffix(".tmp.mp4")
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        for f in range(seconds * rate):
            img = np.stack([(xx + 3 * f) % 256, (yy + 2 * f) % 256, (xx + yy + f) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def build_model(folder: Path, preset: str, labels: int = 400) -> Path:
    from vmae_cli import VideoMAEConfig, VideoMAEForVideoClassification
    from vmae_cli.video.preprocess import Preprocessor

    if (folder / "model.safetensors").exists():
        return folder
    config = VideoMAEConfig.from_preset(preset).replace(
        use_mean_pooling=True, id2label={i: f"class {i}" for i in range(labels)}
    )
    size = config.image_hw[0]
    pre = Preprocessor.from_dict({"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size},
                                  "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})  # fmt: skip
    VideoMAEForVideoClassification(config).save_pretrained(folder, preprocessor=pre)
    return folder


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    """(wall seconds, stdout) of one whole process."""
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0,):
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


# What no `vmae classify` of one clip can avoid, each part timed in one fresh process as classify runs it:
# importing torch, reading the weights into the default dtype, the first forward (oneDNN sets itself up on
# it), and, apart, decoding the clip's 16 frames (classify decodes while torch imports, so it hides).
FLOOR = """
import sys, time
start = time.perf_counter()
import torch
imported = time.perf_counter()
from vmae_cli.inference.tasks import RunOptions, load_model
from vmae_cli.video.reader import VideoReader
t = time.perf_counter()
net, engine = load_model(sys.argv[1], None, "classify", RunOptions(device=sys.argv[3]))
loaded = time.perf_counter() - t
t = time.perf_counter()
with VideoReader(sys.argv[2]) as reader:
    frames = reader.get_frames(sorted(set(engine.spec.indices(reader.count_frames()).reshape(-1).tolist())))
decoded = time.perf_counter() - t
x = engine.preprocessor.resize_crop(frames)  # uint8 (1, T, 3, S, S)
t = time.perf_counter()
engine.forward(x)
print(imported - start, loaded, time.perf_counter() - t, decoded)
"""


def bench_classify(cache: Path, repeats: int, device: str) -> None:
    """Whole processes in turn (vmae, the pipeline, the floor's parts), so that a machine whose speed drifts
    moves each pair alike: the ratio is the median of the pairs' ratios."""
    from bench_video import cpu_name

    clip = write_clip(cache / "clip_1080p_10s.mp4", 10, (1920, 1080))
    model = build_model(cache / "vit-b-random", "base")
    vmae = [sys.executable, "-m", "vmae_cli", "classify", str(clip), "--model", str(model), "--json",
            "--device", device]  # fmt: skip
    hf = [sys.executable, "-c", HF_PIPELINE, str(model), str(clip)] + ([device] if device != "cpu" else [])
    bare = [sys.executable, "-c", "pass"]
    floor = [sys.executable, "-c", FLOOR, str(model), str(clip), device]
    as_vmae = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}  # what `vmae classify` sets (cli/batch.py)
    timed(vmae), timed(hf)  # warm the page cache and imports once
    rows: dict[str, list[float]] = {"vmae": [], "pipeline": [], "python": [], "torch": [], "load": [],
                                    "forward": [], "decode": []}  # fmt: skip
    loads = []
    for _ in range(repeats):
        rows["vmae"].append(timed(vmae)[0])
        rows["pipeline"].append(timed(hf)[0])
        rows["python"].append(timed(bare)[0])
        parts = [float(v) for v in timed(floor, as_vmae)[1].split()]
        for name, value in zip(("torch", "load", "forward", "decode"), parts, strict=True):
            rows[name].append(value)
        loads.append(_load())
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratios = [a / b for a, b in zip(rows["vmae"], rows["pipeline"], strict=True)]
    floors = [
        sum(parts) for parts in zip(*(rows[k] for k in ("python", "torch", "load", "forward")), strict=True)
    ]
    floor_ratio = statistics.median(f / b for f, b in zip(floors, rows["pipeline"], strict=True))
    print(f"classify, whole process, ViT-B, 10 s 1080p clip, {repeats} runs in turn ({device}; {cpu_name()}; "
          f"load {', '.join(loads)}):")  # fmt: skip
    print(f"  vmae {med['vmae']:.2f} s ({min(rows['vmae']):.2f}-{max(rows['vmae']):.2f}), transformers pipeline "
          f"{med['pipeline']:.2f} s ({min(rows['pipeline']):.2f}-{max(rows['pipeline']):.2f}): ratio "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) (target <= 0.35x)")  # fmt: skip
    print(f"  floor: python {med['python']:.2f} s + import torch {med['torch']:.2f} + weights {med['load']:.2f} "
          f"+ first forward {med['forward']:.2f} = {statistics.median(floors):.2f} s = {floor_ratio:.2f}x the "
          f"pipeline (decoding alone {med['decode']:.2f} s, hidden behind the import); vmae reaches "
          f"{statistics.median(f / v for f, v in zip(floors, rows['vmae'], strict=True)):.0%} of the floor's speed")  # fmt: skip


def bench_embed(cache: Path, preset: str, n: int, batch: int, device: str, workers: int) -> None:
    """Steady-state `vmae embed` throughput against the model alone, and what bounds the share on a CPU.

    On a CPU the decoding workers and the model share the cores: per video the cores must give the model
    its forward (all cores for m seconds) and the decoder its d CPU-seconds, so no schedule beats
    m + d / cores per video, and the share of model-only throughput is at most m / (m + d / cores).
    """
    import torch
    from bench_video import cpu_name

    from vmae_cli import VideoMAEForVideoClassification
    from vmae_cli.inference.engine import ClipLoader
    from vmae_cli.runtime import resolve_device

    base = write_clip(cache / "clip_360p_4s.mp4", 4, (640, 360))
    model_dir = build_model(cache / f"vit-{preset}-random", preset)

    def corpus(count: int) -> Path:  # hard links: the decoder still does all the work for each input
        folder = cache / f"clips_360p_{count}"
        folder.mkdir(exist_ok=True)
        for k in range(count):
            target = folder / f"c{k:04d}.mp4"
            if not target.exists():
                target.hardlink_to(base)
        return folder

    from vmae_cli.inference.tasks import RunOptions, embedding, load_model

    dev = resolve_device(device)
    net = VideoMAEForVideoClassification.from_pretrained(model_dir, device=dev)
    h, w = net.config.image_hw
    x = torch.randn(batch, net.config.num_frames, 3, h, w, device=dev)
    threads = torch.get_num_threads()

    def model_alone(steps: int, num_threads: int) -> float:
        """Seconds per video of the model alone on pre-made tensors, batch `batch`, on `num_threads`."""
        torch.set_num_threads(num_threads)
        with torch.inference_mode():
            net.features(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                net.features(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        torch.set_num_threads(threads)
        return (time.perf_counter() - start) / (steps * batch)

    steps = max(3, n // batch)
    before = model_alone(steps, threads)

    # The engine `vmae embed` runs, in this process, so start-up and warm-up can be left out: inputs are
    # timed from the n-th result on (worker processes started, CUDA kernels chosen), over 2n more inputs.
    opts = RunOptions(batch_size=batch, device=device, dtype="fp32", workers=workers)
    _, engine = load_model(str(model_dir), None, "auto", opts)
    launch, launches = engine._launch, []  # (start, end, views) of each batch

    def timed_launch(chunks):  # host time spent starting batches (copy in, normalise, queue the model)
        start = time.perf_counter()
        out = launch(chunks)
        launches.append((start, time.perf_counter(), sum(len(c) for c in chunks)))
        return out

    engine._launch = timed_launch
    paths = sorted(str(p) for p in corpus(3 * n).iterdir())
    for result in engine.run(paths):
        embedding(result)
    end = time.perf_counter()
    # From the end of the batch that holds video n to the end of the run, the videos of every later batch. (A
    # video's result is handed out when the next batch has been launched: on a CPU, when its forward is done;
    # counting results instead counts one batch too many.)
    first = next(k for k, (_, _, size) in enumerate(launches) if sum(s for *_, s in launches[: k + 1]) >= n)
    span = end - launches[first][1]
    per_video = span / sum(size for *_, size in launches[first + 1 :])
    launch_share = sum(b - a for a, b, _ in launches[first + 1 :]) / span
    after = model_alone(steps, threads)
    model_only = (before + after) / 2

    # What one video costs a decoding worker (one torch thread, as init_decode_worker sets): CPU seconds,
    # FFmpeg's own threads included, for the views the engine makes of it.
    loader = ClipLoader(engine.spec, engine.preprocessor, engine.reader_kwargs, engine.batch_size)
    torch.set_num_threads(1)
    cpu = time.process_time()
    sample = paths[: min(len(paths), 12)]
    for k, path in enumerate(sample):
        for _ in loader.items(k, path):
            pass
    decode = (time.process_time() - cpu) / len(sample)
    torch.set_num_threads(threads)
    cores = os.cpu_count() or 1
    fewer = model_alone(steps, threads - 1) if dev.type == "cpu" and threads > 1 else None
    bound = model_only / (model_only + decode / cores) if dev.type == "cpu" else 1.0
    print(f"embed, clips {n + 1}-{3 * n} of {3 * n} (640x360), ViT-{preset}, batch {batch}, "
          f"workers {engine.workers}, fp32 ({device}; {cpu_name()}; OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; load {_load()}):")  # fmt: skip
    print(f"  vmae {1 / per_video:.2f} videos/s, model alone {1 / model_only:.2f} videos/s "
          f"({1 / before:.2f} before, {1 / after:.2f} after) -> {model_only / per_video:.0%} of model-only "
          f"throughput (target >= 95%); the model's batches (launch and, on a CPU, forward) took {launch_share:.0%} of the time")  # fmt: skip
    if dev.type == "cpu":
        print(f"  per video: model {model_only:.3f} s on {threads} threads"
              + (f" ({fewer:.3f} s on {threads - 1})" if fewer else "")
              + f", decoding + preprocessing {decode:.3f} CPU-s; sharing {cores} cores, the most any schedule "
              f"gives is {bound:.0%} of model-only (m / (m + d / cores)); measured {model_only / per_video / bound:.0%} "
              "of that bound")  # fmt: skip


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other work on a shared machine moves every figure)."""
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def bench_forward(rounds: int) -> None:
    import torch
    import torch.nn.functional as F
    from bench_pretrain import _count_cpu_attention, gemm_peak_gflops
    from bench_video import cpu_name
    from torch.utils.flop_counter import FlopCounterMode

    from vmae_cli import VideoMAEConfig, VideoMAEForVideoClassification
    from vmae_cli.runtime import resolve_dtype

    config = VideoMAEConfig.from_preset("base").replace(
        use_mean_pooling=True, id2label={i: f"class {i}" for i in range(400)}
    )
    torch.manual_seed(0)
    model = VideoMAEForVideoClassification(config).eval()
    h, w = config.image_hw
    x = torch.randn(1, config.num_frames, 3, h, w)
    _count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    flops = counter.get_total_flops()
    n, heads, hd = (
        config.num_patches,
        config.num_attention_heads,
        config.hidden_size // config.num_attention_heads,
    )
    attn_flops = config.num_hidden_layers * 4 * n * n * config.hidden_size  # q @ k^T and probs @ v
    print(f"forward, ViT-B 16x224, batch 1 ({cpu_name()}, {torch.get_num_threads()} threads): "
          f"{flops / 1e9:.0f} GFLOP, {attn_flops / flops:.0%} of it in attention")  # fmt: skip
    default = resolve_dtype("auto", torch.device("cpu"), cpu_bf16=True)  # classify's default
    for dtype in dict.fromkeys([default, torch.float32]):
        net, xx = model.to(dtype), x.to(dtype)
        q = torch.randn(1, heads, n, hd, dtype=dtype)
        times, attn, peaks = [], [], []
        with torch.inference_mode():
            net(xx)
            for _ in range(rounds):
                start = time.perf_counter()
                net(xx)
                times.append(time.perf_counter() - start)
                start = time.perf_counter()
                F.scaled_dot_product_attention(q, q, q)
                attn.append(time.perf_counter() - start)
                peaks.append(gemm_peak_gflops(dtype, reps=3))
        t, peak = statistics.median(times), max(peaks)
        attn_share = 4 * n * n * config.hidden_size / statistics.median(attn) / 1e9 / peak
        # the whole forward if everything but attention ran at the peak and attention as measured
        ceiling = flops / (flops - attn_flops + attn_flops / attn_share)
        name = str(dtype).removeprefix("torch.")
        print(f"  {name}: {t:.2f} s ({min(times):.2f}-{max(times):.2f}), {flops / t / 1e9:.0f} GFLOP/s = "
              f"{flops / t / 1e9 / peak:.0%} of the {name} matmul peak ({peak:.0f} GFLOP/s, lowest {min(peaks):.0f}); "
              f"attention alone {attn_share:.0%} of it, so at most {ceiling:.0%} for the forward "
              f"(target >= 75% in the default dtype)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embed-preset", default="small")
    parser.add_argument("--embed-clips", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="0: vmae's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["classify", "embed", "forward"])
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "classify"):
        bench_classify(args.cache, args.repeats, args.device)
    if args.only in (None, "embed"):
        bench_embed(
            args.cache, args.embed_preset, args.embed_clips, args.batch_size, args.device, args.workers
        )
    if args.only in (None, "forward") and args.device == "cpu":
        bench_forward(args.repeats)


if __name__ == "__main__":
    main()
