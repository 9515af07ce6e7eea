"""Where a step's tensors run: bf16 autocast (fp32 weights stay fp32) and batches moved to the
device, shared by the training loop and the evaluation."""

from __future__ import annotations

import torch
from torch import Tensor


def autocast(device: torch.device, precision: str):
    """bf16 autocast on `device` for precision "bf16"; a no-op context for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def on_device(device: torch.device, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors on `device` (as they are on the CPU; copied without blocking elsewhere)."""
    if device.type == "cpu":
        return tensors
    return tuple(x.to(device, non_blocking=True) for x in tensors)
