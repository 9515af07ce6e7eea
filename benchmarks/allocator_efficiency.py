"""FLOPs each strategy spends to pin the N_opt exponent to a 95% interval of +-0.03 or narrower.

Setup, per built-in surface and seed (simulated trainer, 0.5% loss noise, C = 6ND FLOPs with a
multiply-add = 2 FLOPs):
- budgets 1e17 x 2^k FLOPs, k = 0..K, taken in increasing order until the target is met;
- the same prior for both strategies: the 6ND heuristic N = sqrt(C / 6r), with r chosen so that the
  prior is twice the surface's true N_opt at 1e18 FLOPs (and drifts from it with C, since its
  exponent is 1/2);
- adaptive: the service's allocator (search/allocator.py) with `exponent_tolerance` = 0.03, one
  trial at a time; it stops by itself once its interval is reached (3 budgets at least);
- fixed: 9 sizes per budget spaced x sqrt(2) around the prior; the laws are refitted after each
  budget and the grid stops at the first budget (3 at least) whose fit reaches the target.
The interval of both is the service's final fit (`fit_laws`, 1000 bootstrap draws) on the trials
run so far; "covers" means it holds the surface's true exponent. A strategy that never reaches the
target within the budgets spends everything and counts as not reached.

    python benchmarks/allocator_efficiency.py [--seeds 8] [--max-doublings 14]

The last line reads `adaptive/fixed FLOPs: R coverage: A vs F` (R the median ratio over surfaces
and seeds, A and F the coverage fractions). Goal: R <= 0.25 with A >= 0.9.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

from scaling.laws import FitOptions, LawFitError, fit_laws
from scaling.runs_table import RunPoint
from scaling.surface import SURFACES
from search.allocator import SizeCatalogue, heuristic_prior
from search.plan import simulate_study, simulated_template
from search.spec import parse_spec

TARGET = 0.03


def half(ci: tuple[float, float]) -> float:
    return (ci[1] - ci[0]) / 2


def study_spec(name: str, surface: str, seed: int, budgets: list[float], r: float,
               tolerance: float, cap: int) -> dict:
    return {"name": name, "seed": seed, "budgets": budgets,
            "trainer": {"kind": "simulated", "surface": surface, "batch_size": 256},
            "model": {"tokens_per_param": r, "sizes_per_budget": 9, "size_spacing": math.sqrt(2),
                      "min_params": 1e5, "max_params": 2e10},
            "allocator": {"kind": "adaptive", "exponent_tolerance": TARGET,
                          "tolerance": tolerance, "max_trials_per_budget": cap}}


def fixed_until_target(sim, seed: int) -> tuple[float, tuple | None, int]:
    """Cumulative FLOPs of the fixed grid up to the first budget whose refit meets the target."""
    budgets = sorted({t.budget for t in sim.trials})
    last = None
    for k in range(3, len(budgets) + 1):
        chosen = [t for t in sim.trials if t.budget <= budgets[k - 1]]
        points = [RunPoint(compute=t.budget, params=t.params, loss=t.loss, tokens=t.tokens,
                           budget=t.budget) for t in chosen]
        try:
            fit = fit_laws(points, FitOptions(seed=seed, approach3=False))
        except (LawFitError, ValueError):
            continue
        last = (fit.n_opt.exponent, *fit.n_opt.exponent_ci)
        if half(fit.n_opt.exponent_ci) <= TARGET:
            return sum(t.flops for t in chosen), last, k
    return sum(t.flops for t in sim.trials), None if last is None else last, -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--max-doublings", type=int, default=14)
    ap.add_argument("--tolerance", type=float, default=0.1, help="adaptive per-budget tolerance")
    ap.add_argument("--cap", type=int, default=16, help="adaptive trials per budget")
    ap.add_argument("--surfaces", default="chinchilla,paper,asymmetric")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    budgets = [1e17 * 2**k for k in range(args.max_doublings + 1)]
    rows, ratios = [], []
    covered = {"adaptive": [], "fixed": []}
    t0 = time.time()
    print(f"target: N_opt exponent 95% half-width <= {TARGET}; budgets 1e17 x 2^k FLOPs, "
          f"k <= {args.max_doublings}; adaptive tolerance +-{args.tolerance:.0%}, "
          f"<= {args.cap} trials per budget; fixed: 9 sizes x sqrt(2)", flush=True)
    for surface in args.surfaces.split(","):
        surf = SURFACES[surface]
        truth = surf.exponents().a
        opt = surf.optimum(1e18)
        r = opt.d_opt / opt.n_opt * 0.25  # prior N = 2 x true N_opt at 1e18 FLOPs
        base = parse_spec(study_spec("bench", surface, 0, budgets, r, args.tolerance, args.cap))
        template = simulated_template(base)
        catalogue = SizeCatalogue(base, template)
        prior = heuristic_prior(r)
        for seed in range(args.seeds):
            spec = base.model_copy(update={"seed": seed})
            ada = simulate_study(spec, template, prior, "adaptive", surf, 1, catalogue)
            a_ci = ada.exponent("n_opt")
            # Reached: the allocator stopped on its exponent interval and the final fit agrees.
            a_ok = (bool(ada.decisions) and ada.decisions[-1].action == "stop"
                    and a_ci is not None and half(a_ci[1:]) <= TARGET + 1e-9)
            fixed_spec = spec.model_copy(update={"allocator": spec.allocator.model_copy(
                update={"kind": "fixed"})})
            fix = simulate_study(fixed_spec, template, prior, "fixed", surf, 1, fit=False)
            f_flops, f_ci, f_budgets = fixed_until_target(fix, seed)
            ratio = ada.flops / f_flops
            ratios.append(ratio)
            a_cov = a_ci is not None and a_ci[1] <= truth <= a_ci[2]
            f_cov = f_ci is not None and f_ci[1] <= truth <= f_ci[2]
            covered["adaptive"].append(a_cov)
            covered["fixed"].append(f_cov)
            n_budgets = len({t.budget for t in ada.trials})
            rows.append((surface, seed, ada.flops, len(ada.trials), n_budgets, a_ci, a_ok, a_cov,
                         f_flops, f_budgets, f_ci, f_cov, ratio))
            reached = f"reached at {f_budgets} budgets" if f_budgets > 0 else "not reached"
            print(f"  {surface} seed {seed}: adaptive {ada.flops:.3g} FLOPs ({len(ada.trials)} "
                  f"trials, {n_budgets} budgets), fixed {f_flops:.3g} FLOPs ({reached}), "
                  f"ratio {ratio:.3f}  [{time.time() - t0:.0f} s]", flush=True)
    print()
    head = ("surface", "seed", "adaptive FLOPs", "trials", "budgets", "a [95% interval]", "cov",
            "fixed FLOPs", "budgets", "a [95% interval]", "cov", "adaptive/fixed")
    table = [head]
    def fmt(ci) -> str:
        return "-" if ci is None else f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"

    for (s, seed, af, n, nb, aci, aok, acov, ff, fb, fci, fcov, ratio) in rows:
        table.append((s, str(seed), f"{af:.3g}", str(n), str(nb),
                      fmt(aci) + ("" if aok else " (not reached)"), "yes" if acov else "no",
                      f"{ff:.3g}", str(fb) if fb > 0 else "all (not reached)", fmt(fci),
                      "yes" if fcov else "no", f"{ratio:.3f}"))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print()
    for surface in args.surfaces.split(","):
        sub = [r for r in rows if r[0] == surface]
        median = statistics.median(r[12] for r in sub)
        print(f"{surface}: median adaptive/fixed FLOPs {median:.3f}, coverage adaptive "
              f"{sum(r[7] for r in sub)}/{len(sub)}, "
              f"fixed {sum(r[11] for r in sub)}/{len(sub)}; true a = "
              f"{SURFACES[surface].exponents().a:.4f}")
    a_cov = sum(covered["adaptive"]) / len(rows)
    f_cov = sum(covered["fixed"]) / len(rows)
    print(f"adaptive/fixed FLOPs: {statistics.median(ratios):.3f} coverage: {a_cov:.2f} vs "
          f"{f_cov:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
