"""Learning rate and warmup as functions of model width, and fitting that rule to an LR sweep.

    lr(w)     = base_lr * (ref_width / w) ** lr_exponent
    warmup(w) = round(warmup_steps * (w / ref_width) ** warmup_exponent)   (optimizer steps)

Exponent 0 gives every size the same value. Porian et al. 2024 (arXiv 2406.19146) show that a
learning rate, warmup and AdamW beta2 tuned per size, rather than fixed, move a compute-optimal
exponent by several hundredths, so a study should either state its rule or measure it: an LR
sweep trains a few sizes at multiples of the rule's LR, `best_lrs` finds each width's optimum
(the minimum of a parabola in log LR through the best multiple and its neighbours) and
`fit_lr_rule` fits base and exponent to those optima by least squares in log-log.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class LRRule:
    """Peak learning rate and warmup steps for a model of a given width."""

    base_lr: float  # the LR at ref_width
    ref_width: int = 256
    lr_exponent: float = 0.0
    warmup_steps: int = 0  # warmup at ref_width, optimizer steps
    warmup_exponent: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_lr) and self.base_lr > 0):
            raise ValueError(f"base_lr={self.base_lr} must be a positive number")
        if self.ref_width < 1:
            raise ValueError(f"ref_width={self.ref_width} must be at least 1")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must not be negative")

    def lr(self, width: int) -> float:
        return self.base_lr * (self.ref_width / width) ** self.lr_exponent

    def warmup(self, width: int) -> int:
        return round(self.warmup_steps * (width / self.ref_width) ** self.warmup_exponent)


@dataclass(frozen=True)
class SweepPoint:
    """One finished sweep trial: its width, LR and final loss (inf or nan if it diverged)."""

    width: int
    lr: float
    loss: float


def best_lrs(points: list[SweepPoint]) -> dict[int, float]:
    """The loss-minimising LR of each width that has a finite loss.

    With the best LR between two swept neighbours of finite loss, the optimum is the vertex of
    the parabola in log LR through the three (kept within them); at the edge of the sweep it is
    the best swept LR (a sign the sweep should be wider).
    """
    by_width: dict[int, list[SweepPoint]] = defaultdict(list)
    for p in points:
        by_width[p.width].append(p)
    best: dict[int, float] = {}
    for width, group in sorted(by_width.items()):
        group = sorted(group, key=lambda p: p.lr)
        finite = [p for p in group if math.isfinite(p.loss)]
        if not finite:
            continue
        i = group.index(min(finite, key=lambda p: p.loss))
        best[width] = group[i].lr
        if 0 < i < len(group) - 1 and all(math.isfinite(group[j].loss) for j in (i - 1, i + 1)):
            x = np.log([group[j].lr for j in (i - 1, i, i + 1)])
            y = np.array([group[j].loss for j in (i - 1, i, i + 1)])
            a, b, _ = np.polyfit(x, y, 2)
            if a > 0:
                best[width] = float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    return best


def fit_lr_rule(points: list[SweepPoint], rule: LRRule) -> LRRule:
    """`rule` with base LR (and, given two or more widths, the LR exponent) fitted to the sweep.

    Raises ValueError when no width has a finite loss (every sweep trial diverged or failed).
    """
    best = best_lrs(points)
    if not best:
        raise ValueError(f"no LR sweep trial of {len(points)} ended with a finite loss")
    widths = np.array(sorted(best), dtype=float)
    log_lr = np.log([best[int(w)] for w in widths])
    x = np.log(rule.ref_width / widths)
    if len(widths) >= 2:
        exponent, intercept = np.polyfit(x, log_lr, 1)
    else:
        exponent = rule.lr_exponent
        intercept = float(log_lr[0] - exponent * x[0])
    return replace(rule, base_lr=float(np.exp(intercept)), lr_exponent=float(exponent))
