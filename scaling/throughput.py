"""Peak FLOP/s of the device a trial trains on, and the matmul rate it is measured against.

MFU = model FLOPs per second / (peak FLOP/s x devices), with model FLOPs = 3 x the analytic
forward FLOPs (`scaling.flops`, a multiply-add = 2 FLOPs; no recomputation counted). The peak is,
in order: the spec's `trainer.peak_flops`; for a known GPU, its dense datasheet rate at the
training precision (`GPU_PEAKS`); else (CPUs, unknown GPUs) the rate of a large `torch.mm` in that
precision measured once per process (`peak_matmul_size`), so on a CPU "MFU" is the fraction of
the achievable matmul rate, which moves with whatever else shares the cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Dense (no 2:4 sparsity) per-GPU FLOP/s from NVIDIA's datasheets (SXM unless named):
# bf16 tensor cores, and fp32 without TF32, which is what torch uses for float32 matmuls by
# default (`torch.backends.cuda.matmul.allow_tf32 = False`). The first name fragment that occurs in
# `torch.cuda.get_device_name()` wins, so specific variants come before their family.
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H100 NVL", 835e12, 60e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H200 NVL", 835e12, 60e12),
    ("GH200", 989e12, 67e12),
    ("H200", 989e12, 67e12),
    ("H100", 989e12, 67e12),  # "H100 80GB HBM3", the SXM part
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
)


@dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of one device at one precision, and where the number comes from."""

    flops: float
    source: str  # "spec", "datasheet: <GPU name>", or "measured: <matmul>"


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """The dense peak FLOP/s of a GPU named like `torch.cuda.get_device_name()`, or None."""
    for fragment, bf16, fp32 in GPU_PEAKS:
        if fragment in device_name:
            return bf16 if precision == "bf16" else fp32
    return None


def matmul_rate(device: torch.device | str = "cpu", precision: str = "fp32", n: int = 2048,
                repeats: int = 5) -> float:
    """FLOP/s of an n x n x n `torch.mm` (2 n^3 FLOPs): the best of `repeats` timed runs after a
    warm-up, since other work on a shared machine only ever slows a run down."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(DTYPES[precision])
    b = torch.randn(n, n, device=device).to(DTYPES[precision])
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 / best


def peak_matmul_size(device: torch.device, threads: int) -> int:
    """The matmul side n a trial's peak is measured with: 1024 on a CPU with at most 4 threads
    (as fast per FLOP as 2048 there, measured side by side, and 8x cheaper: 0.15 s of a core at
    trial start instead of 1.3 s, in trials that train 10-100 s), else 2048."""
    return 1024 if device.type == "cpu" and threads <= 4 else 2048


@lru_cache(maxsize=8)
def _measured(device: str, precision: str, threads: int) -> float:
    return matmul_rate(device, precision, n=peak_matmul_size(torch.device(device), threads))


def detect_peak(device: torch.device, precision: str, configured: float | None = None) -> Peak:
    """The peak FLOP/s MFU is computed against (see the module docstring)."""
    if configured:
        return Peak(float(configured), "spec")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = datasheet_peak(name, precision)
        if value is not None:
            return Peak(value, f"datasheet: {name} {precision} dense")
    rate = _measured(str(device), precision, torch.get_num_threads())
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return Peak(rate, f"measured: {precision} torch.mm on {device}{threads}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
