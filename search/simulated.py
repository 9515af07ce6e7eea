"""The simulated trainer on Ray: a Tune function trainable that reports a surface's loss curve.

It runs through the same Tune driver, allocator and MLflow trial runs as real training, but
without Ray Train workers, so thousands of trials take minutes. The trial's config carries what it
needs (N, D tokens, steps, FLOPs, GPUs; see `search.grid.trial_config`), so this module imports
neither the model code (torch) nor MLflow: each trial actor starts light.

Simulated GPU time: a trial of F FLOPs on g GPUs takes F / (g x peak x MFU) seconds; a cooldown
branch (`trainer.reuse`) trains only its cooldown, the share (steps - branch step) / steps of F,
and ends at its from-scratch loss offset by `trainer.cooldown_gap`. With
`time_scale` s > 0 the trial holds its resources for s x that many wall seconds, spread over its
reports (the scheduling benchmark uses this to measure occupancy and makespan); with 0 it reports
at once. Losses never depend on the time scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ray import tune
from ray.tune import PlacementGroupFactory

from scaling.simulate import SimulatedRun, simulate_run, trial_seed
from scaling.surface import SURFACES, LossSurface
from search.records import BRANCH_OF, BRANCH_STEP


@dataclass(frozen=True)
class SimContext:
    """What every simulated trial of a study shares (shipped with `tune.with_parameters`)."""

    surface: LossSurface
    noise: float  # relative sd of each reported loss
    reports: int  # reports per trial
    seed: int  # the study's seed
    time_scale: float  # wall seconds per simulated second; 0: no waiting
    gpu_flops: float  # FLOPs per second per GPU (peak x MFU)
    finished: frozenset[str] = frozenset()  # keys MLflow already holds as finished (a resume)
    cooldown_gap: float = 0.0  # a branch's relative loss offset against its from-scratch run

    @staticmethod
    def from_spec(spec, surface: str | None = None,
                  finished: frozenset[str] = frozenset()) -> SimContext:
        t, r = spec.trainer, spec.resources
        return SimContext(SURFACES[surface or t.surface], t.noise, t.reports, spec.seed,
                          t.time_scale, r.gpu_peak_flops * r.mfu, frozenset(finished),
                          t.cooldown_gap)

    def run(self, config: dict) -> SimulatedRun:
        gap = self.cooldown_gap if BRANCH_OF in config else 0.0
        return simulate_run(self.surface, float(config["params"]), float(config["tokens"]),
                            int(config["steps"]), self.reports, self.noise,
                            trial_seed(self.seed, config["trial_key"]), gap)

    def trial_seconds(self, config: dict) -> float:
        """Simulated wall time of the trial on its GPUs (one GPU when it asks for none)."""
        return trained_flops(config) / (max(1, int(config.get("gpus") or 0)) * self.gpu_flops)


def trained_flops(config: dict) -> float:
    """FLOPs a simulated trial trains: its isoFLOP point's, or a branch's cooldown share of it."""
    steps = int(config["steps"])
    return float(config["flops"]) * (steps - int(config.get(BRANCH_STEP) or 0)) / steps


def report_metrics(ctx: SimContext, config: dict, run: SimulatedRun, k: int) -> dict[str, float]:
    """Report k of a simulated run, with the metric names real trials use."""
    steps = int(config["steps"])
    done = run.steps[k] / steps
    metrics = {"step": float(run.steps[k]), "loss": float(run.loss[k]),
               "loss_ema": float(run.loss[k]), "tokens": done * float(config["tokens"]),
               "flops": done * float(config["flops"]),
               "flops_6nd": done * 6.0 * float(config["params"]) * float(config["tokens"]),
               "gpu_hours": done * trained_flops(config) / ctx.gpu_flops / 3600}
    if k == len(run.steps) - 1:
        metrics.update(val_loss=run.val_loss, final=1.0)
    return metrics


def gpu_request(config: dict) -> PlacementGroupFactory:
    """A simulated trial's resources: the GPUs its size rule gives, no CPU. It lives here, not
    with the driver, because Tune ships it to every trial actor: unpickling it there imports its
    module, and the driver's would pull in torch and MLflow (seconds of CPU per actor)."""
    return PlacementGroupFactory([{"CPU": 0, "GPU": float(config["gpus"])}])


def run_simulated_trial(config: dict, ctx: SimContext) -> None:
    """The Tune function trainable of a simulated trial. A trial MLflow already holds as finished
    (Tune re-runs the trials it saw running when its driver stopped) reports its recorded result
    at once instead of computing again: its curve is a function of its config."""
    run = ctx.run(config)
    n = len(run.steps)
    done = config["trial_key"] in ctx.finished
    wall = 0.0 if done else ctx.trial_seconds(config) * ctx.time_scale
    start = time.time()
    for k in range(n):
        if wall:
            time.sleep(max(0.0, start + wall * (k + 1) / n - time.time()))
        metrics = report_metrics(ctx, config, run, k)
        if k == n - 1:  # when the simulated GPUs were busy, for occupancy measurements
            metrics.update(sim_start=start, sim_end=time.time())
            if done:
                metrics["reused"] = 1.0
        tune.report(metrics)
