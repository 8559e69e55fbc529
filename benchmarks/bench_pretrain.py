"""Pre-training throughput: vmae's model and optimizer step against transformers' VideoMAEForPreTraining.

    python benchmarks/bench_pretrain.py [--presets tiny base] [--batch 8 2] [--steps 20 3] [--compile]

Both sides train on the same random input tensors with the same tube masks (ratio 0.9) and batch, fp32,
model compute only (no data loading). transformers runs a plain loop: `torch.optim.AdamW` with its
defaults, `zero_grad()`. vmae runs what `vmae pretrain` runs: `training.make_optimizer` (fused AdamW)
and `zero_grad(set_to_none=True)`; the same objective, so the same FLOPs but for the patch embedding
(visible tubelets only). A third column adds VideoMAEv2's dual masking (`mask.decoder_ratio = 0.5`): a
different, cheaper objective (the decoder sees about half the tokens), labelled as such.
Sides alternate, and each figure is the median of the rounds. Last, the ceiling: each side's FLOPs per
clip (torch's FlopCounterMode) against this machine's fp32 matmul peak, i.e. the most clips/s any
implementation of the objective could reach here. Not run by CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vmae_cli.config import VideoMAEConfig  # noqa: E402
from vmae_cli.masking import decoder_mask, tube_mask  # noqa: E402
from vmae_cli.model import VideoMAEForPreTraining  # noqa: E402
from vmae_cli.training import make_optimizer, param_groups  # noqa: E402


def build(side: str, config: VideoMAEConfig, compile_: bool, dual: torch.Tensor | None = None):
    torch.manual_seed(0)
    if side == "transformers":
        import transformers

        hf_config = transformers.VideoMAEConfig(**config.to_dict())
        hf_config._attn_implementation = "sdpa"  # its default where available; said explicitly
        model = transformers.VideoMAEForPreTraining(hf_config).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

        def step(x, m):
            loss = model(pixel_values=x, bool_masked_pos=m).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return step
    model = VideoMAEForPreTraining(config).train()
    opt = make_optimizer(param_groups(model, 0.05), 1e-4, (0.9, 0.95))
    net = torch.compile(model) if compile_ else model

    def step(x, m):
        loss = net(x, m, return_dict=True, decoder_mask=dual).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def clips_per_s(step, x, m, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step(x, m)
    return x.shape[0] * steps / (time.perf_counter() - t)


def _count_cpu_attention() -> None:
    """FlopCounterMode knows the CUDA attention kernels only: give it the CPU flash kernel's FLOPs, with
    its own formulas for the CUDA ones (the same matmuls)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def gflop_per_clip(step, x, m) -> float:
    """FLOPs of one training step (forward + backward: matmuls, convolutions, attention), per clip."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with counter:
        step(x, m)
    return counter.get_total_flops() / x.shape[0] / 1e9


def gemm_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 matmul throughput on the current threads: the ceiling for any implementation."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--batch", nargs="+", type=int, default=[8, 2], help="batch per preset")
    p.add_argument("--steps", nargs="+", type=int, default=[30, 2], help="timed steps per round, per preset")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mask-ratio", type=float, default=0.9)
    p.add_argument("--compile", action="store_true", help="also time vmae under torch.compile")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        "| preset | batch | transformers clips/s | vmae clips/s | speed-up | vmae, dual masking 0.5 | speed-up |"
        + (" vmae+compile | speed-up |" if args.compile else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.compile else ""))
    ceilings, peaks = [], []
    for preset, batch, steps in zip(args.presets, args.batch, args.steps, strict=True):
        config = VideoMAEConfig.from_preset(preset)
        g = torch.Generator().manual_seed(0)
        h, w = config.image_hw
        x = torch.randn(batch, config.num_frames, config.num_channels, h, w, generator=g)
        m = tube_mask(config, batch, args.mask_ratio, generator=g)
        dual = decoder_mask(m, 0.5, generator=g)
        sides = ["transformers", "vmae", "vmae+dual"] + (["vmae+compile"] if args.compile else [])
        steppers = {
            s: build(s.split("+")[0], config, s.endswith("compile"), dual if s.endswith("dual") else None)
            for s in sides
        }
        for s in sides:  # warm up (allocator, lazy init, compilation)
            for _ in range(2):
                steppers[s](x, m)
        rates: dict[str, list[float]] = {s: [] for s in sides}
        for _ in range(args.rounds):
            for s in sides:
                rates[s].append(clips_per_s(steppers[s], x, m, steps))
            peaks.append(
                gemm_peak_gflops()
            )  # between rounds: the machine's speed drifts (clocks, neighbours)
        med = {s: statistics.median(r) for s, r in rates.items()}
        row = f"| {preset} | {batch} | {med['transformers']:.2f} | {med['vmae']:.2f} | {med['vmae'] / med['transformers']:.2f}x |"
        row += f" {med['vmae+dual']:.2f} | {med['vmae+dual'] / med['transformers']:.2f}x |"
        if args.compile:
            row += f" {med['vmae+compile']:.2f} | {med['vmae+compile'] / med['transformers']:.2f}x |"
        print(row, flush=True)
        work = {s: gflop_per_clip(steppers[s], x, m) for s in ("transformers", "vmae")}
        ceilings.append((preset, med, work))
    # How close each side runs to the machine's matmul peak, and what 1.5x would need: when transformers
    # already runs near the peak, no implementation of the same objective can be much faster here.
    peak = max(peaks)  # the highest: the shares below are then, if anything, understated
    print(
        f"\nfp32 GEMM peak (2048^3 matmul, best of {len(peaks)}) on {torch.get_num_threads()} threads:"
        f" {peak:.1f} GFLOP/s (lowest {min(peaks):.1f})"
    )
    for preset, med, work in ceilings:
        hf, ours = (med[s] * work[s] / peak for s in ("transformers", "vmae"))
        print(
            f"{preset}: {work['transformers']:.2f} GFLOP per clip in transformers, {work['vmae']:.2f} in vmae;"
            f" share of peak: transformers {hf:.0%}, vmae {ours:.0%};"
            f" 1.5x transformers needs vmae at {1.5 * hf * work['vmae'] / work['transformers']:.0%}"
        )


if __name__ == "__main__":
    main()
