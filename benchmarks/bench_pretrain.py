"""Pre-training throughput: vmae's model and optimizer step against transformers' VideoMAEForPreTraining.

    python benchmarks/bench_pretrain.py [--presets tiny base] [--batch 8 2] [--steps 20 3] [--compile] [--breakdown]

Both sides train on the same random input tensors with the same tube masks (ratio 0.9) and batch, model
compute only (no data loading). transformers runs a plain fp32 loop: `torch.optim.AdamW` with its defaults,
`zero_grad()`. vmae runs what `vmae pretrain` runs: `training.make_optimizer` (fused AdamW),
`zero_grad(set_to_none=True)`, in fp32 and in the recipes' default dtype (`run.dtype = "auto"`: bf16 autocast
where the CPU has native bf16, else fp32); the same objective, so the same FLOPs but for the patch embedding
(visible tubelets only). A last column adds VideoMAEv2's dual masking (`mask.decoder_ratio = 0.5`, default
dtype): a different, cheaper objective (the decoder sees about half the tokens), labelled as such.
Sides alternate, and each figure is the median of the rounds. Last, the ceiling: each side's FLOPs per clip
(torch's FlopCounterMode) times its clips/s, as a share of this machine's matmul peak in the dtype it
computes in (fp32, or bf16 under bf16 autocast), measured between rounds. With --breakdown, where each
side's step goes (torch.profiler, self time per op): matmuls, attention, norms, copies (dtype casts),
optimizer, elementwise ops; the matmuls' and attention's own FLOP rate as a share of the peak; and the most
the step could gain with its matmuls at the peak and the rest as measured. The load average is printed
last: on a shared machine, compare the ratios, not the absolute figures. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from bench_video import cpu_name  # noqa: E402

from vmae_cli.models.config import VideoMAEConfig  # noqa: E402
from vmae_cli.models.masking import decoder_mask, tube_mask  # noqa: E402
from vmae_cli.models.modeling import VideoMAEForPreTraining  # noqa: E402
from vmae_cli.training.parts import Precision, make_optimizer, param_groups  # noqa: E402


def build(side: str, config: VideoMAEConfig, precision: Precision, compile_: bool = False,
          dual: torch.Tensor | None = None):  # fmt: skip
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
        with precision.autocast():  # as the training loop does: the forward (and its loss) under autocast
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


# Where a step's time goes: profiler op names (self time) -> category. Everything else is "other".
CATEGORIES = {
    "matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::_softmax",
                  "aten::_softmax_backward_data"),
    "norms": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "copies (dtype casts, layout)": ("aten::copy_",),
    "optimizer": ("aten::_fused_adamw_",),  # and every aten::_foreach_* (transformers' AdamW)
    "elementwise (add, gelu, sum, fill, loss)": ("aten::add", "aten::add_", "aten::mul", "aten::gelu",
                                                 "aten::gelu_backward", "aten::sum", "aten::fill_", "aten::mse_loss",
                                                 "aten::mse_loss_backward", "aten::sub", "aten::div", "aten::pow"),
}  # fmt: skip


def breakdown(step, x, m, peak: float, steps: int = 2) -> str:
    """One side's step by category (torch.profiler, self time per op, `steps` steps): share of the step and,
    for the matmuls and attention, their own FLOP rate as a share of `peak` (the peak in the dtype they
    compute in). Also the best this step could do with its matmuls at the peak and the rest as measured."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with counter:  # one step's FLOPs; convolutions count with the matmuls
        step(x, m)
    flops = {"matmuls": 0, "attention": 0}
    for op, n in counter.get_flop_counts()["Global"].items():
        flops["attention" if "attention" in str(op) else "matmuls"] += n
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(x, m)
    times = dict.fromkeys([*CATEGORIES, "other"], 0.0)
    for event in prof.key_averages():
        name = event.key
        cat = next((c for c, ops in CATEGORIES.items() if name in ops), None)
        if cat is None:
            cat = "optimizer" if name.startswith("aten::_foreach_") else "other"
        times[cat] += event.self_cpu_time_total / 1e6 / steps
    total = sum(times.values())
    parts = []
    for cat, t in times.items():
        part = f"{cat} {t:.2f} s ({t / total:.0%})"
        if cat in flops and t > 0:
            part += f" at {flops[cat] / t / 1e9 / peak:.0%} of the peak"
        parts.append(part)
    at_peak = total - times["matmuls"] + flops["matmuls"] / 1e9 / peak
    return (f"{total:.2f} s per step: " + ", ".join(parts)
            + f"; with the matmuls at the peak and the rest as measured: {total / at_peak:.2f}x faster at most")  # fmt: skip


def gemm_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """This machine's matmul throughput in `dtype` on the current threads: the ceiling for any implementation."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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
    p.add_argument(
        "--compile", action="store_true", help="also time vmae (default dtype) under torch.compile"
    )
    p.add_argument("--breakdown", action="store_true",
                   help="also profile each side's step: time per category (matmuls, attention, norms, casts, "
                        "optimizer), the matmuls' and attention's share of the peak")  # fmt: skip
    args = p.parse_args()
    cpu = torch.device("cpu")
    fp32, default = Precision.create("fp32", cpu), Precision.create("auto", cpu)
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; default dtype here: {default.name}")  # fmt: skip
    dual_name, compile_name = f"vmae {default.name}, dual masking 0.5", f"vmae {default.name}+compile"
    sides = {  # name -> (precision, compiled, dual masking)
        "transformers fp32": (fp32, False, False),
        "vmae fp32": (fp32, False, False),
        f"vmae {default.name}": (default, False, False),
        dual_name: (default, False, True),
    }
    if default.dtype is None:  # no native bf16: the default is fp32, timed once
        del sides[f"vmae {default.name}"]
        sides["vmae fp32, dual masking 0.5"] = sides.pop(dual_name)
    if args.compile:
        sides[compile_name] = (default, True, False)
    print("| preset | batch | " + " | ".join(f"{s} clips/s | x transformers" for s in sides) + " |")
    print("|---|---|" + "---|---|" * len(sides))
    dtypes = {s: (prec.dtype or torch.float32) for s, (prec, _, _) in sides.items()}
    ceilings, peaks = [], {dt: [] for dt in set(dtypes.values())}
    for preset, batch, steps in zip(args.presets, args.batch, args.steps, strict=True):
        config = VideoMAEConfig.from_preset(preset)
        g = torch.Generator().manual_seed(0)
        h, w = config.image_hw
        x = torch.randn(batch, config.num_frames, config.num_channels, h, w, generator=g)
        m = tube_mask(config, batch, args.mask_ratio, generator=g)
        dual = decoder_mask(m, 0.5, generator=g)
        steppers = {
            s: build(s.split()[0], config, prec, compiled, dual if dualled else None)
            for s, (prec, compiled, dualled) in sides.items()
        }
        for s in sides:  # warm up (allocator, lazy init, compilation)
            for _ in range(2):
                steppers[s](x, m)
        rates: dict[str, list[float]] = {s: [] for s in sides}
        for _ in range(args.rounds):
            for s in sides:
                rates[s].append(clips_per_s(steppers[s], x, m, steps))
            for dt in peaks:  # between rounds: the machine's speed drifts (clocks, neighbours)
                peaks[dt].append(gemm_peak_gflops(dt))
        med = {s: statistics.median(r) for s, r in rates.items()}
        ref = med["transformers fp32"]
        cells = " | ".join(
            f"{med[s]:.2f} ({min(rates[s]):.2f}-{max(rates[s]):.2f}) | {med[s] / ref:.2f}x" for s in sides
        )
        print(f"| {preset} | {batch} | {cells} |", flush=True)
        work = {s: gflop_per_clip(steppers[s], x, m) for s in sides if not s.endswith("compile")}
        ceilings.append((preset, med, work))
        if args.breakdown:
            for s in work:
                print(f"  {s}: {breakdown(steppers[s], x, m, max(peaks[dtypes[s]]))}", flush=True)
    # How close each side runs to the machine's matmul peak in the dtype it computes in: when a side already
    # runs near its peak, no implementation of the same objective can be much faster here.
    for dt, values in peaks.items():
        print(f"\n{str(dt).removeprefix('torch.')} GEMM peak (2048^3 matmul, best of {len(values)}) on "
              f"{torch.get_num_threads()} threads: {max(values):.1f} GFLOP/s (lowest {min(values):.1f})", end="")  # fmt: skip
    print()
    for preset, med, work in ceilings:
        shares = ", ".join(
            f"{s} {med[s] * work[s] / max(peaks[dtypes[s]]):.0%} of the {str(dtypes[s]).removeprefix('torch.')} peak"
            f" ({work[s]:.2f} GFLOP per clip)"
            for s in work
        )
        print(f"{preset}: {shares}")
    print("load average during the run (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
