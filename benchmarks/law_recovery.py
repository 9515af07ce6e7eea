"""How well law fitting recovers known truth: the recovery table for issue 3's closing note.

For each built-in loss surface (scaling.surface.SURFACES: chinchilla, paper, asymmetric) and three
kinds of isoFLOP grid, a synthetic study (the paper's 6 budgets, 9 sizes per budget spaced over
+-0.6 decades of log N, losses with 0.5% multiplicative noise) is drawn REPS times with different
seeds and fitted (`fit_laws`, DRAWS bootstrap draws). Printed per quantity: the truth, the median
estimate over repetitions, the median 95% interval, and coverage (repetitions whose interval holds
the truth). Quantities: Approach 2's N_opt exponent a; Approach 3's alpha, beta and a = beta /
(alpha + beta). C counts 6 N D FLOPs (a multiply-add = 2 FLOPs).

Grids: `centred` on each budget's true optimum; `shifted` every grid +0.3 decades of N off it;
`drifting` grids from -0.3 decades (smallest budget) to +0.3 (largest), which tilts Approach 2's
exponent (arXiv 2603.22339). The last columns count repetitions with a budget flagged as not
centred and with Approaches 2 and 3 flagged as disagreeing.

    .venv/bin/python benchmarks/law_recovery.py [--reps 20] [--draws 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scaling.laws import FitOptions, fit_laws
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study

GRIDS = {"centred": 0.0, "shifted": 0.3, "drifting": np.linspace(-0.3, 0.3, len(PAPER_BUDGETS))}
QUANTITIES = ("A2 a", "A3 alpha", "A3 beta", "A3 a")


def estimates(fit) -> dict[str, tuple[float, tuple[float, float] | None]]:
    p = fit.approach3
    return {"A2 a": (fit.n_opt.exponent, fit.n_opt.exponent_ci),
            "A3 alpha": (p.alpha, p.ci.get("alpha")), "A3 beta": (p.beta, p.ci.get("beta")),
            "A3 a": (p.a, p.ci.get("a"))}


def truths(name: str) -> dict[str, float]:
    s = SURFACES[name]
    return {"A2 a": s.exponents().a, "A3 alpha": s.alpha, "A3 beta": s.beta,
            "A3 a": s.exponents().a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="seeded repetitions per cell")
    parser.add_argument("--draws", type=int, default=200, help="bootstrap draws per fit")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = [("surface", "grid", "quantity", "truth", "estimate", "95% interval", "coverage",
             "off-centre flagged", "A2/A3 disagree")]
    for name in SURFACES:
        truth = truths(name)
        for grid, offset in GRIDS.items():
            values = {q: [] for q in QUANTITIES}
            flagged = disagree = 0
            for seed in range(args.reps):
                points = synthetic_study(SURFACES[name], PAPER_BUDGETS,
                                         np.random.default_rng(seed), offset=offset)
                fit = fit_laws(points, FitOptions(draws=args.draws, seed=seed))
                flagged += any(not b.centred for b in fit.budgets)
                disagree += any("disagree" in w for w in fit.warnings)
                for q, est in estimates(fit).items():
                    values[q].append(est)
            for i, q in enumerate(QUANTITIES):
                est = np.array([v for v, _ in values[q]])
                cis = [ci for _, ci in values[q] if ci is not None]
                lo, hi = np.median(cis, 0) if cis else (np.nan, np.nan)
                hits = sum(ci is not None and ci[0] <= truth[q] <= ci[1] for _, ci in values[q])
                rows.append((name if grid == "centred" and i == 0 else "",
                             grid if i == 0 else "", q, f"{truth[q]:.4f}",
                             f"{np.median(est):.4f}", f"[{lo:.4f}, {hi:.4f}]",
                             f"{hits}/{args.reps}",
                             f"{flagged}/{args.reps}" if i == 0 else "",
                             f"{disagree}/{args.reps}" if i == 0 else ""))
            print(f"  {name} {grid}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\nLaw recovery: {len(PAPER_BUDGETS)} budgets x 9 sizes, 0.5% loss noise, "
          f"{args.reps} seeds per cell, {args.draws} bootstrap draws; C = 6 N D FLOPs "
          "(multiply-add = 2 FLOPs); estimate and interval are medians over seeds")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"recovery seconds: {time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
