"""Training throughput of the DiT step, side by side with the rate of a large matmul and with the
plain-PyTorch formulation of the same step.

CPU (always): for each size (default: the demo's ladder, 25K-500K parameters), the training step
of `scaling.train` (forward and backward in micro-batches, gradient clipping, fused AdamW) on
in-memory batches shaped like the built-in data (32 px, patch 4: 64 image tokens, 14 text tokens
of 384 features), at the demo trial's settings by default: 1 thread (`resources.cpus_per_worker`
= 1), batch 16, fp32. Columns: model FLOP/s (3 x the analytic forward FLOPs per sample, a
multiply-add = 2 FLOPs), the fp32 `torch.mm` rate (n = 1024, the size a trial's peak is measured
with) measured between the same windows with the same clock, their ratio, and the step of the
reference path (`scaling.model.reference_ops`: one `nn.Linear` per projection, `F.gelu`, SDPA,
`clip_grad_norm_`) with the speed-up of the default path over it. Both paths train the same
function; their losses agree to float rounding.

Timings: `--clock cpu` (default) counts the CPU time of this process, which other work on a
shared machine moves far less than wall time (with several threads it sums them: rates are per
CPU-second, the matmul's too); `--clock wall` counts wall time. Every figure is the best of
`--repeats` windows, the two paths' windows interleaved, so both see the same load.

GPU (when CUDA is present): the step in bf16 autocast at ~100M and ~1B parameters (256 px images
as 32 x 32 x 4 latents, patch 2: 256 image tokens, 32 text tokens) with MFU against the GPU's
datasheet dense bf16 peak (`scaling.throughput.GPU_PEAKS`), and the measured bf16 matmul rate.

The last line is `matmul fraction: X`, the lowest fraction over the CPU sizes.

    .venv/bin/python benchmarks/train_throughput.py [--threads 1] [--batch 16]
        [--sizes 2.5e4 5e4 1e5 2.2e5 5e5] [--designs in_context cross_attention]
        [--seconds 1] [--repeats 5] [--clock cpu|wall] [--compile] [--no-gpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from scaling.data import Batch
from scaling.flops import forward_flops
from scaling.ladder import nearest
from scaling.model import DiTConfig, ModelShape, reference_ops
from scaling.throughput import detect_peak, matmul_rate, peak_matmul_size
from scaling.train import TrainConfig, _optimizer, _train_step, build_model

DEMO_SIZES = (2.5e4, 5e4, 1e5, 2.2e5, 5e5)  # target parameters
GPU_SIZES = (1e8, 1e9)
CPU_TEMPLATE = DiTConfig(ModelShape(1, 16, 1), image_size=32, in_channels=3, patch_size=4,
                         text_dim=384, text_len=14)
GPU_TEMPLATE = DiTConfig(ModelShape(1, 16, 1), image_size=32, in_channels=4, patch_size=2,
                         text_dim=384, text_len=32)
PATHS = ("default", "reference")


@dataclass(frozen=True)
class Row:
    design: str
    params: int
    shape: ModelShape
    step_s: float  # seconds per optimizer step, default path
    flops_per_s: float  # model FLOP/s, default path
    matmul: float  # FLOP/s of torch.mm measured alongside (CPU), or the datasheet peak (GPU)
    reference_step_s: float  # seconds per step of the reference path; 0 when not measured

    @property
    def fraction(self) -> float:
        return self.flops_per_s / self.matmul

    @property
    def speedup(self) -> float:
        return self.reference_step_s / self.step_s if self.reference_step_s else 0.0


def fake_batch(model: DiTConfig, batch: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, model.in_channels, model.image_size, model.image_size,
                        generator=gen)
    text = torch.randn(batch, model.text_len, model.text_dim, generator=gen)
    lengths = torch.randint(3, model.text_len + 1, (batch,), generator=gen)
    mask = torch.arange(model.text_len)[None] < lengths[:, None]  # captions of varied length
    return Batch(image.to(device), (text * mask[..., None]).to(device), mask.to(device))


def clock(kind: str) -> Callable[[], float]:
    """Seconds: this process's CPU time, or wall time."""
    return time.process_time if kind == "cpu" else time.perf_counter


def timed_matmul(device: torch.device, n: int, now: Callable[[], float],
                 repeats: int = 3) -> float:
    """FLOP/s of an n x n x n fp32 `torch.mm` (2 n^3 FLOPs) on `now`'s clock, best of
    `repeats` after a warm-up."""
    if now is time.perf_counter or device.type != "cpu":
        return matmul_rate(device, "fp32", n=n, repeats=repeats)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = now()
        torch.mm(a, b)
        best = min(best, now() - started)
    return 2.0 * n**3 / best


def measure(cfg: TrainConfig, device: torch.device, seconds: float, repeats: int,
            paths: tuple[str, ...], now: Callable[[], float],
            between: Callable[[], float] | None = None) -> tuple[dict[str, float], float]:
    """Seconds per optimizer step of each path, the best of `repeats` windows of at least
    `seconds` each (the paths' windows interleaved, each on its own model and optimizer), and
    the best of `between()` (the matmul rate) measured before and after every round of windows
    (0.0 without `between`)."""
    batch = fake_batch(cfg.model, cfg.batch_size, device)
    _, micro = cfg.micro_batches(1)
    runs = {}
    for path in paths:
        model, net = build_model(cfg, 1, device)
        runs[path] = (model, net, _optimizer(model, cfg))
    context = {"default": nullcontext, "reference": reference_ops}
    best = dict.fromkeys(paths, float("inf"))
    reference = between() if between else 0.0
    step = 0
    for window in range(repeats + 1):  # window 0 warms up: first-touch allocations, compiling
        for path in paths:
            model, net, opt = runs[path]
            with context[path]():
                started, steps = now(), 0
                while steps < 2 or now() - started < (seconds if window else 0):
                    loss = _train_step(net, model, opt, batch, cfg, 0, step + steps, micro,
                                       device)
                    steps += 1
                loss.item()  # waits for the device
                if window:
                    best[path] = min(best[path], (now() - started) / steps)
        step += 1000
        if between and window:
            reference = max(reference, between())
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best, reference


def cpu_rows(args) -> list[Row]:
    device, now = torch.device("cpu"), clock(args.clock)
    n = peak_matmul_size(device, args.threads)
    rows = []
    for design in args.designs:
        for target in args.sizes:
            template = replace(CPU_TEMPLATE, conditioning=design)
            shape, params = nearest(target, template)
            model = replace(template, shape=shape)
            cfg = TrainConfig(model=model, steps=10**9, batch_size=args.batch,
                              train_urls=("unused",), compile=args.compile, lr=1e-4)
            paths = PATHS if not args.no_reference else PATHS[:1]
            steps, mm = measure(cfg, device, args.seconds, args.repeats, paths, now,
                                between=lambda: timed_matmul(device, n, now))
            flops = 3.0 * forward_flops(model) * args.batch / steps["default"]
            row = Row(design, params, shape, steps["default"], flops, mm,
                      steps.get("reference", 0.0))
            print_row(row)
            rows.append(row)
    return rows


def print_header(matmul: str) -> None:
    print(f"{'design':15} {'params':>11} {'d':>2} {'w':>4} {'h':>2} {'step ms':>8} "
          f"{'model FLOP/s':>12} {matmul:>11} {'of mm':>6} {'ref ms':>8} {'speed-up':>8}",
          flush=True)


def print_row(r: Row) -> None:
    ref = f"{r.reference_step_s * 1e3:>8.2f} {r.speedup:>7.3f}x" if r.reference_step_s \
        else f"{'-':>8} {'-':>8}"
    print(f"{r.design:15} {r.params:>11,} {r.shape.depth:>2} {r.shape.width:>4} "
          f"{r.shape.heads:>2} {r.step_s * 1e3:>8.2f} {r.flops_per_s:>12.4g} {r.matmul:>11.4g} "
          f"{r.fraction:>6.1%} {ref}", flush=True)


def gpu_rows(args) -> None:
    device = torch.device("cuda", 0)
    peak = detect_peak(device, "bf16")
    mm = matmul_rate(device, "bf16", n=8192, repeats=10)
    print(f"GPU: {torch.cuda.get_device_name(device)}; peak {peak.flops:.4g} FLOP/s "
          f"({peak.source}); bf16 torch.mm (n=8192) {mm:.4g} FLOP/s = {mm / peak.flops:.0%} "
          f"of peak; bf16 autocast{', compiled' if args.compile else ''}; wall clock; "
          f"'of mm' is MFU against the peak")
    print_header("peak FLOP/s")
    for target in GPU_SIZES:
        shape, params = nearest(target, GPU_TEMPLATE)
        model = replace(GPU_TEMPLATE, shape=shape)
        micro = args.gpu_batch if params < 3e8 else args.gpu_batch // 4
        cfg = TrainConfig(model=model, steps=10**9, batch_size=args.gpu_batch, micro_batch=micro,
                          train_urls=("unused",), precision="bf16", compile=args.compile,
                          lr=1e-4)
        steps, _ = measure(cfg, device, args.seconds, args.repeats, PATHS[:1], time.perf_counter)
        flops = 3.0 * forward_flops(model) * args.gpu_batch / steps["default"]
        print_row(Row("in_context", params, shape, steps["default"], flops, peak.flops, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a demo trial: 1)")
    parser.add_argument("--batch", type=int, default=16, help="CPU samples per step")
    parser.add_argument("--sizes", type=float, nargs="+", default=DEMO_SIZES,
                        help="target parameter counts (nearest ladder shapes)")
    parser.add_argument("--designs", nargs="+", default=["in_context"],
                        choices=("in_context", "cross_attention"))
    parser.add_argument("--seconds", type=float, default=1.0, help="per timed window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference path (no speed-up column)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if torch.cuda.is_available() and not args.no_gpu:
        gpu_rows(args)
        print()
    else:
        print("GPU: none here (CUDA not available): the bf16 ~100M / ~1B MFU rows were not "
              "measured")
    n = peak_matmul_size(torch.device("cpu"), args.threads)
    print(f"CPU: {args.threads} thread(s), batch {args.batch}, fp32, {args.clock} clock; "
          f"'mm FLOP/s' is the best fp32 torch.mm (n={n}) between the timed windows; 'ref ms' "
          f"is the reference path (plain nn.Linear per projection, F.gelu, SDPA, clip_grad_norm_)")
    print_header("mm FLOP/s")
    rows = cpu_rows(args)
    print(f"matmul fraction: {min(r.fraction for r in rows):.3f}")


if __name__ == "__main__":
    main()
