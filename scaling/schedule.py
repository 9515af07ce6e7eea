"""Learning-rate schedules: linear warmup, then constant, cosine, or constant with cooldown.

The cooldown is the (1 - sqrt) shape of Hägele et al. 2024, which matches cosine at the end of
training while keeping the constant phase reusable across budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Schedule = Literal["constant", "cosine", "constant_cooldown"]


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate at optimizer step `step` (0-based) of a run of `total_steps` steps."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: Schedule = "constant"
    cooldown_fraction: float = 0.2
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.peak_lr <= 0:
            raise ValueError(f"peak_lr={self.peak_lr} must be positive")
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} must be at least 1")
        if self.kind not in ("constant", "cosine", "constant_cooldown"):
            raise ValueError(f"schedule {self.kind!r} is not constant, cosine or "
                             "constant_cooldown")
        if not 0 <= self.cooldown_fraction <= 1:
            raise ValueError(f"cooldown_fraction={self.cooldown_fraction} is not in [0, 1]")

    @property
    def warmup(self) -> int:
        """Steps of linear warmup: the requested ones, but never more than half the run (tiny
        budgets have only a few hundred steps)."""
        return min(self.warmup_steps, self.total_steps // 2)

    @property
    def cooldown_start(self) -> int:
        """The first step of the cooldown (`total_steps` when there is none): before it, a
        constant_cooldown run is at its peak LR after warmup, the same for every run length."""
        if self.kind != "constant_cooldown":
            return self.total_steps
        return self.total_steps - int(round(self.cooldown_fraction * self.total_steps))

    def __call__(self, step: int) -> float:
        warmup = self.warmup
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        floor = self.peak_lr * self.min_lr_ratio
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "cosine":
            progress = (step - warmup) / max(1, self.total_steps - warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            return floor + (self.peak_lr - floor) * cosine
        start = self.cooldown_start
        cooldown = self.total_steps - start
        if step < start or cooldown == 0:
            return self.peak_lr
        progress = (step - start + 1) / cooldown
        return floor + (self.peak_lr - floor) * (1 - math.sqrt(min(1.0, progress)))
