"""Training throughput of both DiT designs, side by side with the rate of a large matmul.

CPU (always): for 3 sizes of each design, the training step of `scaling.train` (forward and
backward in micro-batches, gradient clipping, fused AdamW) on in-memory batches shaped like the
built-in data (32 px, patch 4: 64 image tokens, 14 text tokens of 384 features). Columns: image
tokens/s, achieved model FLOP/s (3 x the analytic forward FLOPs per sample, a multiply-add =
2 FLOPs) and that rate divided by this machine's fp32 `torch.mm` rate (n = 2048), measured in the
same run on the same threads. The data pipeline is left out (see `benchmarks/data_speed.py`).

GPU (when CUDA is present): the same step in bf16 autocast at ~100M and ~1B parameters
(256 px images as 32 x 32 x 4 latents, patch 2: 256 image tokens, 32 text tokens) with MFU
against the GPU's datasheet dense bf16 peak (`scaling.throughput.GPU_PEAKS`), and the measured
bf16 matmul rate beside it.

Every rate is the best of `--repeats` timed windows, since other work on a shared machine only
ever slows a run down. The last line is `matmul fraction: X`, the lower of the two designs'
fractions at the largest CPU size.

    .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--batch 32] [--seconds 3]
        [--gpu-batch 256] [--compile] [--no-gpu]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from scaling.data import Batch
from scaling.flops import forward_flops
from scaling.ladder import nearest
from scaling.model import DiTConfig, ModelShape
from scaling.throughput import detect_peak, matmul_rate
from scaling.train import TrainConfig, _optimizer, _train_step, build_model

DESIGNS = ("in_context", "cross_attention")
CPU_SIZES = (1e5, 1e6, 1e7)  # target parameters
GPU_SIZES = (1e8, 1e9)
CPU_TEMPLATE = DiTConfig(ModelShape(1, 16, 1), image_size=32, in_channels=3, patch_size=4,
                         text_dim=384, text_len=14)
GPU_TEMPLATE = DiTConfig(ModelShape(1, 16, 1), image_size=32, in_channels=4, patch_size=2,
                         text_dim=384, text_len=32)


@dataclass(frozen=True)
class Row:
    device: str
    design: str
    params: int
    shape: ModelShape
    batch: int
    micro: int
    step_s: float
    tokens_per_s: float
    flops_per_s: float
    reference: float  # FLOP/s: the GPU's peak, or the CPU's matmul rate measured alongside
    fraction: float  # of the matmul rate (CPU) or of the datasheet peak (GPU, MFU)


def fake_batch(model: DiTConfig, batch: int, device: torch.device) -> Batch:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, model.in_channels, model.image_size, model.image_size,
                        generator=gen)
    text = torch.randn(batch, model.text_len, model.text_dim, generator=gen)
    lengths = torch.randint(3, model.text_len + 1, (batch,), generator=gen)
    mask = torch.arange(model.text_len)[None] < lengths[:, None]  # captions of varied length
    return Batch(image.to(device), (text * mask[..., None]).to(device), mask.to(device))


def measure(cfg: TrainConfig, device: torch.device, seconds: float, repeats: int,
            warmup: int = 2, fused: bool = True,
            between: Callable[[], float] | None = None) -> tuple[float, float]:
    """Seconds per optimizer step, the best of `repeats` windows of at least `seconds` each, and
    the best of `between()` (the matmul rate) measured before, between and after the windows,
    so both see the same load on a shared machine (0.0 without `between`). `fused=False` swaps
    the loop's fused AdamW for torch's default implementation (a per-tensor loop on CPU), the
    loop's optimizer before this issue."""
    model, net = build_model(cfg, 1, device)
    opt = _optimizer(model, cfg)
    if not fused:
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                  for g in opt.param_groups]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    batch = fake_batch(cfg.model, cfg.batch_size, device)
    _, micro = cfg.micro_batches(1)
    step = 0
    for _ in range(warmup):  # first-touch allocations, compilation, autotuning
        _train_step(net, model, opt, batch, cfg, 0, step, micro, device).item()
        step += 1
    best, reference = float("inf"), between() if between else 0.0
    for _ in range(repeats):
        started, steps = time.perf_counter(), 0
        while steps < 2 or time.perf_counter() - started < seconds:
            loss = _train_step(net, model, opt, batch, cfg, 0, step, micro, device)
            step, steps = step + 1, steps + 1
        loss.item()  # waits for the device
        best = min(best, (time.perf_counter() - started) / steps)
        if between:
            reference = max(reference, between())
    del model, net, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best, reference


def run(device: torch.device, template: DiTConfig, sizes: tuple[float, ...], batch: int,
        micro_for, precision: str, peak: float | None, args) -> list[Row]:
    """Rows of one device; the fraction is of `peak`, or else of the matmul rate measured
    alongside each row."""
    rows = []
    for design in DESIGNS:
        for target in sizes:
            shape, n = nearest(target, replace(template, conditioning=design))
            model = replace(template, shape=shape, conditioning=design)
            micro = micro_for(n)
            cfg = TrainConfig(model=model, steps=10**9, batch_size=batch, micro_batch=micro,
                              train_urls=("unused",), precision=precision,
                              compile=args.compile, lr=1e-4)
            between = None if peak else (lambda: matmul_rate(device, precision, repeats=2))
            step_s, mm = measure(cfg, device, args.seconds, args.repeats, between=between)
            reference = peak or mm
            flops = 3.0 * forward_flops(model) * batch / step_s
            row = Row(device.type, design, n, shape, batch, micro, step_s,
                      batch * model.image_tokens / step_s, flops, reference,
                      flops / reference)
            print_row(row)
            rows.append(row)
    return rows


def print_header(reference: str, fraction: str) -> None:
    print(f"{'device':6} {'design':15} {'params':>13} {'d':>3} {'w':>5} {'batch':>5} "
          f"{'micro':>5} {'step s':>8} {'tokens/s':>10} {'model FLOP/s':>13} {reference:>12} "
          f"{fraction:>7}",
          flush=True)


def print_row(r: Row) -> None:
    print(f"{r.device:6} {r.design:15} {r.params:>13,} {r.shape.depth:>3} {r.shape.width:>5} "
          f"{r.batch:>5} {r.micro:>5} {r.step_s:>8.4f} {r.tokens_per_s:>10.4g} "
          f"{r.flops_per_s:>13.4g} {r.reference:>12.4g} {r.fraction:>7.1%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=32, help="CPU samples per step")
    parser.add_argument("--seconds", type=float, default=2.0, help="per timed window")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if torch.cuda.is_available() and not args.no_gpu:
        device = torch.device("cuda", 0)
        peak = detect_peak(device, "bf16")
        mm = matmul_rate(device, "bf16", n=8192, repeats=10)
        print(f"GPU: {torch.cuda.get_device_name(device)}; peak {peak.flops:.4g} FLOP/s "
              f"({peak.source}); bf16 torch.mm (n=8192) {mm:.4g} FLOP/s = {mm / peak.flops:.0%} "
              f"of peak; bf16 autocast{', compiled' if args.compile else ''}")
        print_header("peak FLOP/s", "MFU")
        run(device, GPU_TEMPLATE, GPU_SIZES, args.gpu_batch,
            lambda n: args.gpu_batch if n < 3e8 else args.gpu_batch // 4, "bf16", peak.flops,
            args)
        print()
    else:
        print("GPU: none here (CUDA not available): the bf16 ~100M / ~1B MFU rows were not "
              "measured")

    cpu = torch.device("cpu")
    print(f"CPU: {args.threads} threads, batch {args.batch}, fp32; 'mm FLOP/s' is the best fp32 "
          f"torch.mm (n=2048) rate measured between each row's timed windows")
    print_header("mm FLOP/s", "of mm")
    rows = run(cpu, CPU_TEMPLATE, CPU_SIZES, args.batch, lambda n: args.batch, "fp32", None,
               args)
    print("\nAdamW on the CPU, the loop's fused kernel against torch's default (one change the "
          "profile asked for):")
    print(f"{'design':15} {'params':>13} {'default s':>10} {'fused s':>10} {'speed-up':>9}")
    for r in (rows[0], rows[len(CPU_SIZES) - 1]):
        cfg = TrainConfig(model=replace(CPU_TEMPLATE, shape=r.shape, conditioning=r.design),
                          steps=10**9, batch_size=args.batch, train_urls=("unused",), lr=1e-4)
        default, _ = measure(cfg, cpu, args.seconds, args.repeats, fused=False)
        fused, _ = measure(cfg, cpu, args.seconds, args.repeats)
        print(f"{r.design:15} {r.params:>13,} {default:>10.4f} {fused:>10.4f} "
              f"{default / fused:>8.2f}x", flush=True)
    top = [max((r for r in rows if r.design == d), key=lambda r: r.params) for d in DESIGNS]
    print(f"matmul fraction: {min(r.fraction for r in top):.3f}")


if __name__ == "__main__":
    main()
