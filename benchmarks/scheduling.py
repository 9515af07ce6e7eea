"""Scheduling at scale: 1,000 simulated trials on a fake 64-GPU Ray cluster.

A real local Ray started with `ray.init(num_cpus=2, num_gpus=64)`; each simulated trial asks for
GPUs by model size (the spec's `resources.gpus_per_trial` rule) and holds them for its simulated
GPU time (FLOPs / (GPUs x 989e12 x 0.4)) scaled by `time_scale` into wall seconds, so the
schedule plays out in minutes. The study is the adaptive allocator over many budgets with a
1,000-trial cap, through the service's own driver (Tune, searcher, MLflow trial runs, laws).

Printed: GPU occupancy (compute GPU-seconds / (64 x makespan)), the makespan against its lower
bound (total compute GPU-seconds / 64), occupancy over each tenth of the makespan, and the service
overhead per trial: measured once inside the scaled run (seconds a trial held its GPUs without
computing) and once as the wall time per trial of the same study with no simulated time at all.
For reference, the same study's schedule as `plan --gpus 64` computes it (the allocator on a
virtual clock, no start-up or reporting cost): what the service would reach with no overhead.

The default time scale, 1e-2, turns a simulated GPU-hour into 36 s: the shortest trials (1e17
FLOPs on 2 GPUs, about 2 simulated minutes) last 1.3 s, a few times what starting a trial costs
Ray on a 2-core machine; much smaller scales measure that start-up rather than the schedule.

    flock /tmp/dit-heavy.lock python benchmarks/scheduling.py [--trials 1000] [--time-scale X]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
import warnings

import ray
from ray import tune
from ray.tune.search import Searcher

from scaling.surface import SURFACES
from search.allocator import resolve_prior
from search.driver import RAY_ENV, run_study
from search.occupancy import measure
from search.plan import simulate_study, simulated_template
from search.simulated import gpu_request
from search.spec import parse_spec

GPUS = 64
RULE = [{"max_params": 5e7, "gpus": 2}, {"max_params": 2e8, "gpus": 4}, {"gpus": 8}]


def study(out: str, trials: int, budgets: int, time_scale: float, name: str) -> dict:
    per_budget = math.ceil(trials / budgets)
    return {"name": name, "seed": 0, "output_dir": out,
            "budgets": [float(f"{1e17 * 10 ** (2 * i / (budgets - 1)):.4g}")
                        for i in range(budgets)],
            "trainer": {"kind": "simulated", "surface": "paper", "batch_size": 256,
                        "time_scale": time_scale, "reports": 5},
            # Costliest budgets first: their long trials would otherwise trail at the end.
            "allocator": {"kind": "adaptive", "prior": "paper", "spacing": 3.0,
                          "order": "descending", "tolerance": 0.01,
                          "max_trials_per_budget": per_budget, "max_trials": trials},
            "resources": {"gpus_per_trial": RULE}}


def run(spec_data: dict, quiet: bool = True):
    lines: list[str] = []
    spec = parse_spec(spec_data)
    t0 = time.monotonic()
    outcome = run_study(spec, out=lines.append if quiet else None)
    return outcome, time.monotonic() - t0, lines


class _Count(Searcher):
    """Serves n empty configs: what Tune itself costs per trial, with nothing of the service."""

    def __init__(self, n: int, gpus: int):
        super().__init__(metric="loss", mode="min")
        self.n, self.gpus, self.i = n, gpus, 0

    def suggest(self, trial_id):
        if self.i >= self.n:
            return Searcher.FINISHED
        self.i += 1
        return {"i": self.i, "gpus": self.gpus}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def _bare(config):
    for k in range(5):  # as many reports as a simulated trial makes
        tune.report({"loss": 1.0 / (k + 1)})


def bare_tune(n: int, storage: str, concurrency: int) -> float:
    """Wall seconds per trial of n trivial trials through Tune, asking 4 GPUs each."""
    t0 = time.monotonic()
    tune.Tuner(tune.with_resources(_bare, gpu_request),
               tune_config=tune.TuneConfig(search_alg=_Count(n, 4), num_samples=-1,
                                           max_concurrent_trials=concurrency,
                                           reuse_actors=True),
               run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0)).fit()
    return (time.monotonic() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--budgets", type=int, default=50)
    ap.add_argument("--time-scale", type=float, default=1e-2,
                    help="wall seconds per simulated GPU-second of a trial")
    ap.add_argument("--overhead-trials", type=int, default=300,
                    help="trials of the unscaled run that measures service overhead")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    ray.init(num_cpus=2, num_gpus=GPUS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": dict(RAY_ENV)})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{args.trials} simulated trials, {args.budgets} budgets 1e17..1e19 FLOPs, "
                  f"{GPUS} fake GPUs, GPU rule {RULE}, time scale {args.time_scale:g}",
                  flush=True)
            outcome, wall, lines = run(study(tmp, args.trials, args.budgets, args.time_scale,
                                             "sched"))
            occ = measure(outcome.usage, GPUS)
            print(f"study wall time {wall:.0f} s ({outcome.finished} trials finished, "
                  f"{outcome.failed} failed)")
            zero, zwall, _ = run(study(tmp, args.overhead_trials, args.budgets, 0.0, "zero"))
            bare = bare_tune(args.overhead_trials, tmp, GPUS // 4)
    finally:
        ray.shutdown()
    spec = parse_spec(study(".", args.trials, args.budgets, args.time_scale, "ideal"))
    ideal = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                           SURFACES[spec.trainer.surface],
                           concurrency=GPUS // min(r["gpus"] for r in RULE), gpus=GPUS, fit=False)
    ideal_lb = sum(t.gpus * (t.end - t.start) for t in ideal.trials) / GPUS
    print()
    print(f"GPU occupancy (compute GPU-s / ({GPUS} x makespan)): {occ.occupancy:.1%}  "
          f"(GPUs held: {occ.held_occupancy:.1%}; peak {occ.peak_gpus} GPUs held at once)")
    print("occupancy by tenth of the makespan: "
          + " ".join(f"{x:.0%}" for x in occ.timeline))
    print(f"makespan {occ.makespan_s:.1f} s, lower bound {occ.lower_bound_s:.1f} s "
          f"(total compute {occ.compute_gpu_s:.0f} GPU-s / {GPUS}): "
          f"makespan / lower bound {occ.makespan_ratio:.3f}")
    print(f"the allocator's own schedule (plan --gpus {GPUS}, {len(ideal.trials)} trials, no "
          f"start-up or reporting cost): occupancy {ideal.occupancy:.1%}, makespan / lower bound "
          f"{ideal.makespan_s / ideal_lb:.3f}")
    sim_hours = occ.compute_gpu_s / args.time_scale / 3600
    print(f"in simulated time: {sim_hours:.0f} GPU-hours, makespan "
          f"{occ.makespan_s / args.time_scale / 3600:.1f} h on {GPUS} GPUs")
    print(f"service overhead per trial: {occ.overhead_per_trial_s:.3f} s held without computing "
          f"(scaled run); {zwall / zero.finished:.3f} s of study wall time per trial with no "
          f"simulated time ({zero.finished} trials, {zwall:.0f} s, driver + Tune + MLflow + "
          "allocator + laws)")
    print(f"Tune's own overhead per trial: {bare:.3f} s (the same number of trivial trials, "
          f"4 GPUs each, nothing of the service); service / Tune: "
          f"{zwall / zero.finished / bare:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
