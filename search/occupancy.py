"""GPU occupancy and makespan of a simulated study on a (fake) GPU cluster.

From `trial_log.Usage` records: when each trial held its GPUs (Tune trial start to end, as the
driver saw it) and when it computed (the simulated trainable's own clock). Units: seconds of
wall time, GPU-seconds; the lower bound on the makespan is total compute GPU-seconds / GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.trial_log import Usage


@dataclass(frozen=True)
class Occupancy:
    gpus: int  # GPUs in the cluster
    trials: int
    makespan_s: float  # first trial start to last trial end
    compute_gpu_s: float  # GPU-seconds the simulated trials computed
    held_gpu_s: float  # GPU-seconds the trials held their GPUs
    peak_gpus: int  # most GPUs held at once
    timeline: tuple[float, ...]  # compute occupancy in each tenth of the makespan
    idle_trial_s: float  # summed over trials: seconds held minus seconds computing

    @property
    def lower_bound_s(self) -> float:
        return self.compute_gpu_s / self.gpus

    @property
    def occupancy(self) -> float:
        """Share of the cluster's GPU-seconds spent computing, over the makespan."""
        return self.compute_gpu_s / (self.gpus * self.makespan_s) if self.makespan_s else 0.0

    @property
    def held_occupancy(self) -> float:
        return self.held_gpu_s / (self.gpus * self.makespan_s) if self.makespan_s else 0.0

    @property
    def makespan_ratio(self) -> float:
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s else float("inf")

    @property
    def overhead_per_trial_s(self) -> float:
        """Mean wall seconds a trial held its GPUs without computing (start-up, reporting)."""
        return self.idle_trial_s / self.trials if self.trials else 0.0


def measure(usage: list[Usage], gpus: int) -> Occupancy:
    """Occupancy of `gpus` GPUs by the trials in `usage` (trials without timings are skipped)."""
    rows = [u for u in usage if u.compute_from is not None and u.compute_to is not None]
    if not rows:
        raise ValueError("no trial recorded when it computed (was time_scale 0?)")
    t0 = min(u.held_from for u in rows)
    t1 = max(u.held_to for u in rows)
    compute = sum(u.gpus * (u.compute_to - u.compute_from) for u in rows)
    held = sum(u.gpus * (u.held_to - u.held_from) for u in rows)
    events = sorted([(u.held_from, u.gpus) for u in rows] + [(u.held_to, -u.gpus) for u in rows])
    level, peak = 0, 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    edges = np.linspace(t0, t1, 11)
    timeline = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        busy = sum(u.gpus * max(0.0, min(b, u.compute_to) - max(a, u.compute_from))
                   for u in rows)
        timeline.append(busy / (gpus * (b - a)) if b > a else 0.0)
    idle = sum((u.held_to - u.held_from) - (u.compute_to - u.compute_from) for u in rows)
    return Occupancy(gpus, len(rows), t1 - t0, compute, held, peak, tuple(timeline), idle)
