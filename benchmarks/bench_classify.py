"""End-to-end `vmae classify` and `vmae embed` against transformers, as ratios measured in one run.

    python benchmarks/bench_classify.py [--cache DIR] [--repeats 3] [--embed-preset small] [--device cpu]

1. classify: `vmae classify clip.mp4` as a whole process against a whole process running the transformers
   `video-classification` pipeline, both on the same ViT-B checkpoint (random weights, saved as an HF folder)
   and the same 10 s 1080p clip. Target: vmae <= 0.35x the pipeline's time.
2. embed: `vmae embed` over 50 clips (videos/s) against the model alone on pre-made tensors of the same
   shape and batch size. Target: >= 90% of model-only throughput (decoding and I/O hidden).
3. forward: the ViT-B 16x224 forward alone, in the default dtype (`--dtype auto`: bf16 where native) and in
   fp32, as a share of this machine's matmul peak in that dtype (measured between rounds), with the share its
   attention kernel alone reaches and the ceiling that puts on the whole forward. Target: >= 75% (default).
"""

from __future__ import annotations

import argparse
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
    from vmae_cli.preprocess import Preprocessor

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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0,):
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return elapsed


def bench_classify(cache: Path, repeats: int, device: str) -> None:
    clip = write_clip(cache / "clip_1080p_10s.mp4", 10, (1920, 1080))
    model = build_model(cache / "vit-b-random", "base")
    vmae = [sys.executable, "-m", "vmae_cli", "classify", str(clip), "--model", str(model), "--json",
            "--device", device]  # fmt: skip
    hf = [sys.executable, "-c", HF_PIPELINE, str(model), str(clip)] + ([device] if device != "cpu" else [])
    timed(vmae), timed(hf)  # warm the page cache and imports once
    ours = [timed(vmae) for _ in range(repeats)]
    theirs = [timed(hf) for _ in range(repeats)]
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"classify, whole process, ViT-B, 10 s 1080p clip ({device}):")
    print(f"  vmae {o:.2f} s  transformers pipeline {t:.2f} s  ratio {o / t:.2f}x  (target <= 0.35x)")
    print(f"  runs: vmae {[round(x, 2) for x in ours]}  pipeline {[round(x, 2) for x in theirs]}")


def bench_embed(cache: Path, preset: str, n: int, batch: int, device: str, workers: int) -> None:
    import torch

    from vmae_cli import VideoMAEForVideoClassification
    from vmae_cli.inference import resolve_device

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

    from vmae_cli.predict import RunOptions, embedding, load_model

    # The engine `vmae embed` runs, in this process, so start-up and warm-up can be left out: inputs are
    # timed from the n-th result on (worker processes started, CUDA kernels chosen), over 2n more inputs.
    opts = RunOptions(batch_size=batch, device=device, dtype="fp32", workers=workers)
    _, engine = load_model(str(model_dir), None, "auto", opts)
    launch, busy = engine._launch, [0.0]

    def timed_launch(chunks):  # host time spent starting batches (copy in, normalise, queue the model)
        start = time.perf_counter()
        out = launch(chunks)
        busy[0] += time.perf_counter() - start
        return out

    engine._launch = timed_launch
    paths = sorted(str(p) for p in corpus(3 * n).iterdir())
    stamps = []
    for result in engine.run(paths):
        embedding(result)
        stamps.append(time.perf_counter())
        if len(stamps) == n:
            busy[0] = 0.0
    per_video = (stamps[-1] - stamps[n - 1]) / (2 * n)
    model_share = busy[0] / (stamps[-1] - stamps[n - 1])

    dev = resolve_device(device)
    net = VideoMAEForVideoClassification.from_pretrained(model_dir, device=dev)
    h, w = net.config.image_hw
    x = torch.randn(batch, net.config.num_frames, 3, h, w, device=dev)
    with torch.inference_mode():
        net.features(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        steps = max(3, 2 * n // batch)
        for _ in range(steps):
            net.features(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        model_only = (time.perf_counter() - start) / (steps * batch)
    print(
        f"embed, clips {n + 1}-{3 * n} of {3 * n} (640x360), ViT-{preset}, batch {batch}, workers {workers or 'auto'} ({device}):"
    )
    print(f"  vmae {1 / per_video:.2f} videos/s  model alone {1 / model_only:.2f} videos/s  "
          f"-> {model_only / per_video:.0%} of model-only throughput (target >= 90%); "
          f"launching batches took {model_share:.0%} of the host's time")  # fmt: skip


def bench_forward(rounds: int) -> None:
    import torch
    import torch.nn.functional as F
    from bench_pretrain import _count_cpu_attention, gemm_peak_gflops
    from bench_video import cpu_name
    from torch.utils.flop_counter import FlopCounterMode

    from vmae_cli import VideoMAEConfig, VideoMAEForVideoClassification
    from vmae_cli.inference import resolve_dtype

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
