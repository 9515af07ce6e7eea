"""A simulated training run: the loss curve a trial of N parameters trained on D tokens would
report, drawn from a parametric surface (`scaling.surface.LossSurface`), and its GPU time.

Units: N parameters, D tokens, FLOPs with a multiply-add = 2 FLOPs, time in seconds. The surface
models the smoothed training loss; `noise` is the relative seed-to-seed spread of a final loss
(~0.5% for real runs), applied independently to every reported point and to the validation loss.
Everything is a pure function of its arguments and the seed, so a simulated trial is reproducible
from its config and can be recomputed instead of stored.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from scaling.surface import LossSurface


@dataclass(frozen=True)
class SimulatedRun:
    """Reports of one simulated trial: `steps[k]` (optimizer steps done) and `loss[k]`, the last
    being the final loss; `val_loss` is the final loss again with independent noise."""

    steps: np.ndarray
    loss: np.ndarray
    val_loss: float

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])


def trial_seed(study_seed: int, trial_key: str) -> int:
    """A stable seed per study seed and trial key (Python's hash() changes between processes)."""
    return zlib.crc32(f"{study_seed}:{trial_key}".encode())


def simulate_run(surface: LossSurface, params: float, tokens: float, steps: int, reports: int,
                 noise: float, seed: int, gap: float = 0.0) -> SimulatedRun:
    """`reports` evenly spaced reports over `steps` steps of training N=`params` on D=`tokens`.
    `gap` offsets the final and validation losses by that share of themselves (a cooldown
    branch's gap against its from-scratch run), after the same noise."""
    if steps < 1 or reports < 1:
        raise ValueError(f"steps={steps} and reports={reports} must be at least 1")
    reports = min(reports, steps)
    # Independent streams for the final loss, the validation loss and the points before, so the
    # final losses do not depend on how many reports a trial makes (a plan reports once).
    final, held_out, before = (np.random.default_rng([seed, k]) for k in range(3))
    losses = surface.curve(params, tokens, reports, before, noise)
    losses[-1] = surface.noisy_loss(params, tokens, final, noise) * (1.0 + gap)
    at = np.round(np.arange(1, reports + 1) * steps / reports).astype(np.int64)
    val = float(surface.noisy_loss(params, tokens, held_out, noise)) * (1.0 + gap)
    return SimulatedRun(steps=at, loss=losses, val_loss=val)


def gpu_seconds(flops: float, peak_flops: float, mfu: float) -> float:
    """GPU-seconds to train `flops` FLOPs at `mfu` of a GPU's `peak_flops` FLOPs per second."""
    if not (peak_flops > 0 and 0 < mfu <= 1):
        raise ValueError(f"peak_flops={peak_flops} must be > 0 and mfu={mfu} in (0, 1]")
    return float(flops) / (peak_flops * mfu)
