"""The allocator against the best simple designs at equal FLOPs, by the real error of the exponent.

Protocol (simulated trainer, C = 6ND FLOPs with a multiply-add = 2 FLOPs, the paper's six budgets
1e17, 3e17, 6e17, 1e18, 3e18, 6e18):
- Measure: RMSE of the fitted N_opt exponent a (the service's final fit, `fit_laws`) about the
  surface's true a across seeds. Seeds are common random numbers: a trial's noise is a function of
  the seed and its (budget, size), so two designs that train the same size see the same loss. The
  reported 95% intervals do not enter the RMSE; their coverage of the true a is printed beside it.
  The fits leave out Approach 3 (`simulate_study(approach3=False)`: the estimates are the same, at a
  fifth of the cost), so the half-widths and coverages here are Approach 2's alone, drawn about
  each budget's own parabola; the service's intervals for these designs, which Approach 3 informs,
  are calibrated in benchmarks/calibration.py.
- Baselines, all centred on the scenario's prior: fixed grids of 5 and 9 sizes per budget spaced
  x sqrt2, x2 and x4 in N, and the two-round grid (5 sizes x2, then 3 sizes x sqrt2 around each
  budget's lowest observed loss: `search.plan.simulate_study(strategy="two_round")`).
- Equal FLOPs: each baseline's cost is a FLOPs level; the allocator runs once per level with
  `allocator.max_flops` at that level, and is compared with the best baseline that costs no more
  than the level. A scenario's ratio is the worst over its levels: the allocator has to beat every
  baseline at that baseline's own cost.
- Allocator settings (one set for every scenario): target "a", 3 initial sizes x10 around the
  prior, max_trials_per_budget 60, per-budget tolerance 0.001 (no budget stops early: the FLOPs
  cap ends the study), one trial at a time.
- Scenarios: priors true (the surface's own N_opt law), x4 and /4 in N, and the exponent off by
  -0.07 (right at 1e17 FLOPs, 0.07 too flat beyond it, as a 6ND heuristic is); noise 0.5% and 2% of
  the loss; surfaces paper, chinchilla, asymmetric.

    python benchmarks/allocator_efficiency.py --workers 2      # full: 24 scenarios x 100 seeds
    python benchmarks/allocator_efficiency.py --quick          # paper surface, true and x4, 0.5%
    python benchmarks/allocator_efficiency.py --surfaces chinchilla --priors true --noises 0.02

Goals: ratio <= 1.0 with a true prior and <= 0.6 with a wrong one, on every surface and noise
level; with 2% noise the allocator's |bias| under a quarter of its median 95% half-width. Last line:
`allocator RMSE / best fixed RMSE: true prior R1, wrong prior R2 (worst scenarios) coverage: min C`
(C the allocator's lowest coverage over the scenarios and levels).

Seeds default to 100: a ratio of two RMSEs over 20 seeds is known to about +-20%, and the worst of
four FLOPs levels and the best of seven baselines pick its noise out. Over 100 seeds (`--workers 2`:
51 min on 2 cores, 17 min before the allocator fitted the curve shape of its trials) it reads
`allocator RMSE / best fixed RMSE: true prior 0.91, wrong prior 0.89 (worst scenarios) coverage:
min 0.94`. With a true prior the worst level per scenario is 0.62-0.91; with a wrong one 0.40-0.89,
and the goal (0.6) holds in 6 of 18 scenarios; the worst are paper 0.5% exp-0.07 (0.89, at the
smallest level against 5 sizes x4), then paper 2% /4 and exp-0.07 (0.84) and chinchilla 2% /4
(0.82), at the largest levels against 9 sizes x4. With 2% noise |bias| / half-width is
0.01-0.07. Before the criterion reckoned window biases about the minima the vertices imply, on
the curve shape the trials show (`search.allocator.Allocator.curve_shape`), the same protocol
read 0.98, 2.12 and 0.82: with the prior 4x too large on the asymmetric surface, a far opening
size at the smallest budget shifted its vertex 0.30 against 0.17 elsewhere while the criterion
saw the biases as balanced (slope bias +0.013, ratio 2.12; now 0.77).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from multiprocessing import Pool

import numpy as np

from scaling.surface import PAPER_BUDGETS, SURFACES
from search.allocator import Prior, SizeCatalogue
from search.plan import simulate_study, simulated_template
from search.spec import StudySpec, parse_spec

GRIDS = [(k, s) for k in (5, 9) for s in (math.sqrt(2), 2.0, 4.0)]
PRIORS = {"true": (1.0, 0.0), "x4": (4.0, 0.0), "/4": (0.25, 0.0), "exp-0.07": (1.0, -0.07)}
LEVEL_MATCH = 1.02  # a baseline belongs to a level when it costs at most this x the level


@dataclass(frozen=True)
class Outcome:
    """One design's seeds: median FLOPs, exponents (value, lo, hi; NaN when not fitted)."""

    name: str
    flops: float
    a: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def stats(self, truth: float) -> dict:
        ok = np.isfinite(self.a)
        err = self.a[ok] - truth
        return {"rmse": float(np.sqrt(np.mean(err**2))) if ok.any() else math.nan,
                "bias": float(np.mean(err)) if ok.any() else math.nan,
                "half": float(np.median((self.hi - self.lo)[ok] / 2)) if ok.any() else math.nan,
                "cover": float(np.mean((self.lo[ok] <= truth) & (truth <= self.hi[ok])))
                if ok.any() else math.nan,
                "fitted": int(ok.sum())}


def study(surface: str, noise: float, seed: int, model: dict, allocator: dict) -> StudySpec:
    return parse_spec({"name": "bench", "seed": seed, "budgets": list(PAPER_BUDGETS),
                       "trainer": {"kind": "simulated", "surface": surface, "batch_size": 256,
                                   "noise": noise},
                       "model": {"min_params": 1e5, "max_params": 2e10, **model},
                       "allocator": allocator})


def scenario_prior(surface: str, prior: str) -> Prior:
    """The scenario's prior N_opt = k C^e: the surface's own law scaled (x4, /4), or with its
    exponent shifted and its value kept at the smallest budget."""
    surf = SURFACES[surface]
    scale, shift = PRIORS[prior]
    a = surf.exponents().a
    c0 = PAPER_BUDGETS[0]
    n0 = surf.optimum(c0).n_opt * scale
    e = a + shift
    return Prior(n0 / c0**e, e, f"scenario prior {prior}")


def run_design(job: tuple) -> Outcome:
    surface, noise, prior_name, name, strategy, model, allocator, seeds, draws = job
    warnings.filterwarnings("ignore")
    surf = SURFACES[surface]
    prior = scenario_prior(surface, prior_name)
    base = study(surface, noise, 0, model, allocator)
    template = simulated_template(base)
    catalogue = SizeCatalogue(base, template)
    flops, values = [], []
    for seed in range(seeds):
        spec = base.model_copy(update={"seed": seed})
        # Approach 3 leaves the estimates (the RMSE) as they are and costs 0.35 s a fit; the
        # service's own intervals for these designs are calibrated in benchmarks/calibration.py.
        sim = simulate_study(spec, template, prior, strategy, surf, 1, catalogue, draws=draws,
                             approach3=False)
        flops.append(sim.flops)
        values.append(sim.exponent("n_opt") or (math.nan,) * 3)
    v = np.array(values, dtype=float)
    return Outcome(name, float(np.median(flops)), v[:, 0], v[:, 1], v[:, 2])


def allocator_settings(max_flops: float = 0.0) -> dict:
    return {"kind": "adaptive", "target": "a", "initial_sizes": 3, "spacing": 10.0,
            "max_trials_per_budget": 60, "tolerance": 0.001, "max_flops": max_flops}


def baselines(surface: str, noise: float, prior: str, seeds: int, draws: int) -> list[tuple]:
    # The spec names the scenario's prior: with the default prior "none" a fixed grid is centred
    # on the 6ND heuristic whatever prior the simulation is given.
    p = scenario_prior(surface, prior)
    centred = {"kind": "fixed", "prior": "explicit", "prior_coefficient": p.coefficient,
               "prior_exponent": p.exponent}
    jobs = [(surface, noise, prior, f"fixed {k} x{s:.3g}", "fixed",
             {"sizes_per_budget": k, "size_spacing": s}, centred, seeds, draws)
            for k, s in GRIDS]
    jobs.append((surface, noise, prior, "two-round 5 x2 + 3 x1.41", "two_round", {},
                 centred, seeds, draws))
    return jobs


def levels(outcomes: list[Outcome]) -> list[float]:
    """The distinct FLOPs levels of the baselines (within LEVEL_MATCH of each other: one)."""
    out: list[float] = []
    for f in sorted(o.flops for o in outcomes):
        if out and f <= out[-1] * LEVEL_MATCH:
            out[-1] = f
        else:
            out.append(f)
    return out


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--surfaces", default="paper,chinchilla,asymmetric")
    ap.add_argument("--priors", default=",".join(PRIORS))
    ap.add_argument("--noises", default="0.005,0.02")
    ap.add_argument("--draws", type=int, default=200,
                    help="bootstrap draws of each final fit (intervals, coverage; not the RMSE)")
    ap.add_argument("--workers", type=int, default=1, help="processes (the machine is shared)")
    ap.add_argument("--quick", action="store_true",
                    help="paper surface, true and x4 priors, 0.5%% noise, 10 seeds")
    args = ap.parse_args()
    if args.quick:
        args.surfaces, args.priors, args.noises, args.seeds = "paper", "true,x4", "0.005", 10
    warnings.filterwarnings("ignore")
    scenarios = [(s, float(n), p) for s in args.surfaces.split(",")
                 for n in args.noises.split(",") for p in args.priors.split(",")]
    print(f"budgets {', '.join(f'{c:.0e}' for c in PAPER_BUDGETS)} FLOPs (C = 6ND, a multiply-add "
          f"= 2 FLOPs); {args.seeds} seeds (common random numbers); RMSE of the fitted N_opt "
          f"exponent a; {args.draws} bootstrap draws per fit for coverage", flush=True)
    t0 = time.time()
    pool = Pool(args.workers) if args.workers > 1 else None
    mapper = pool.map if pool else lambda f, xs: list(map(f, xs))
    summary = []
    head = ["design", "FLOPs", "RMSE a", "bias", "half-width", "coverage", "fitted"]
    for surface, noise, prior in scenarios:
        truth = SURFACES[surface].exponents().a
        base = mapper(run_design, baselines(surface, noise, prior, args.seeds, args.draws))
        lv = levels(base)
        alloc = mapper(run_design, [(surface, noise, prior, f"allocator @ {f:.3g}", "adaptive",
                                     {}, allocator_settings(f), args.seeds, args.draws)
                                    for f in lv])
        rows = []
        for o in base + alloc:
            s = o.stats(truth)
            rows.append([o.name, f"{o.flops:.3g}", f"{s['rmse']:.4f}", f"{s['bias']:+.4f}",
                         f"{s['half']:.4f}", f"{s['cover']:.2f}", f"{s['fitted']}/{args.seeds}"])
        ratios = []
        for f, o in zip(lv, alloc, strict=True):
            # A baseline that gave no law on some seeds is no usable design: best among those
            # that fitted every seed (all, if none did).
            cheaper = [b for b in base if b.flops <= f * LEVEL_MATCH]
            usable = [b for b in cheaper if b.stats(truth)["fitted"] == args.seeds] or cheaper
            best = min(usable, key=lambda b: np.nan_to_num(b.stats(truth)["rmse"], nan=np.inf))
            if not np.isfinite(best.stats(truth)["rmse"]):
                continue  # no baseline at this cost gave a law: nothing to compare with
            r = o.stats(truth)["rmse"] / best.stats(truth)["rmse"]
            ratios.append((r, f, best.name))
        worst = max(ratios)
        summary.append({"surface": surface, "noise": noise, "prior": prior, "ratio": worst[0],
                        "cover": min(o.stats(truth)["cover"] for o in alloc),
                        "bias_share": max(abs(s["bias"]) / s["half"]
                                          for s in (o.stats(truth) for o in alloc))})
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        print(f"\n{surface} surface (true a = {truth:.4f}), noise {noise:.1%}, prior {prior}  "
              f"[{time.time() - t0:.0f} s]")
        print(fmt_row(head, widths))
        for r in rows:
            print(fmt_row(r, widths))
        for r, f, name in ratios:
            print(f"  at {f:.3g} FLOPs: allocator RMSE / best baseline ({name}) = {r:.2f}")
        sys.stdout.flush()
    if pool:
        pool.close()
    print("\nscenario                           ratio  allocator coverage  |bias| / half-width")
    for s in summary:
        print(f"{s['surface']:10s} noise {s['noise']:.1%} prior {s['prior']:9s} {s['ratio']:6.2f}"
              f"  {s['cover']:18.2f}  {s['bias_share']:.2f}")
    true = [s["ratio"] for s in summary if s["prior"] == "true"]
    wrong = [s["ratio"] for s in summary if s["prior"] != "true"]
    r1 = f"{max(true):.2f}" if true else "-"
    r2 = f"{max(wrong):.2f}" if wrong else "-"
    print(f"allocator RMSE / best fixed RMSE: true prior {r1}, wrong prior {r2} (worst "
          f"scenarios) coverage: min {min(s['cover'] for s in summary):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
