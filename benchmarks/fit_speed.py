"""How long law fitting takes: 6 budgets x 9 sizes, 1,000 bootstrap draws, both approaches.

Goal: under 5 s on 2 cores. Approach 3's bootstrap refits every draw with scipy's L-BFGS-B,
warm-started from the full-data optimum (`scaling.laws.parametric`). Side by side, measured in this
run: that warm start against a cold start of each draw from the grid of starting points (what a
fit without the full-data optimum would do), on `COLD` draws, and how far apart their answers are.
The last line is `fit seconds: X`.

    .venv/bin/python benchmarks/fit_speed.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from scaling.laws import FitOptions, fit_laws
from scaling.laws.bootstrap import resample
from scaling.laws.parametric import fit_parametric
from scaling.runs_table import RunPoint
from scaling.surface import SURFACES

BUDGETS = (1e17, 3e17, 6e17, 1e18, 3e18, 6e18)
SIZES = 9
DRAWS = 1000
REPEATS = 3
COLD = 50  # draws refitted from the grid of starts
GOAL = 5.0  # seconds


def study(seed: int = 0) -> list[RunPoint]:
    surface, rng = SURFACES["chinchilla"], np.random.default_rng(seed)
    points = []
    for c in BUDGETS:
        for n in surface.optimum(c).n_opt * np.logspace(-0.6, 0.6, SIZES):
            points.append(RunPoint(c, float(n), float(surface.noisy_loss(n, c / (6 * n), rng))))
    return points


def timed(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def warm_and_cold(points: list[RunPoint]) -> tuple[float, float, float, float]:
    """Seconds per draw warm-started and cold-started, the full-data fit's seconds, and the
    largest |alpha, beta| gap between the two on the same COLD draws."""
    params = np.array([p.params for p in points])
    tokens = np.array([p.tokens for p in points])
    losses = np.array([p.loss for p in points])
    groups = [np.arange(i * SIZES, (i + 1) * SIZES) for i in range(len(BUDGETS))]
    r = resample(groups, params, losses, DRAWS, np.random.default_rng(1))
    alone = timed(lambda: fit_parametric(params, tokens, losses))
    t0 = time.perf_counter()
    fit = fit_parametric(params, tokens, losses, r.counts, r.losses)
    warm = (time.perf_counter() - t0 - alone) / DRAWS
    gap = 0.0
    t0 = time.perf_counter()
    for k in range(COLD):
        rows = np.repeat(np.arange(params.size), r.counts[k])
        cold = fit_parametric(params[rows], tokens[rows], r.losses[k, rows])
        gap = max(gap, float(np.abs([cold.alpha - fit.draws[k, 3],
                                     cold.beta - fit.draws[k, 4]]).max()))
    return warm, (time.perf_counter() - t0) / COLD, alone, gap


def main() -> None:
    points = study()
    fit_laws(points, FitOptions(draws=50))  # warm-up: imports, caches
    both = timed(lambda: fit_laws(points, FitOptions(draws=DRAWS)))
    only2 = timed(lambda: fit_laws(points, FitOptions(draws=DRAWS, approach3=False)))
    warm, cold, alone, gap = warm_and_cold(points)
    print(f"law fitting: {len(BUDGETS)} budgets x {SIZES} sizes, {DRAWS} bootstrap draws, "
          f"median of {REPEATS} runs")
    rows = [("part", "seconds", "share of goal"),
            ("Approach 2 (parabolas, power laws)", f"{only2:.3f}", f"{only2 / GOAL:.2f}"),
            ("Approach 3 (grid starts, L-BFGS-B, bootstrap)", f"{both - only2:.3f}",
             f"{(both - only2) / GOAL:.2f}"),
            ("  of which the full-data fit from grid starts", f"{alone:.3f}",
             f"{alone / GOAL:.2f}"),
            ("both", f"{both:.3f}", f"{both / GOAL:.2f}")]
    for name, value, share in rows:
        print(f"  {name:<50}{value:>10}{share:>15}")
    print(f"Approach 3 bootstrap, scipy L-BFGS-B seconds per draw (cold measured on {COLD} draws):")
    print(f"  {'warm start (fit_laws)':<24}{'cold, grid of starts':<24}{'ratio':<8}"
          "max |alpha, beta| gap")
    print(f"  {warm:<24.2e}{cold:<24.2e}{cold / max(warm, 1e-12):<8.1f}{gap:.1e}")
    print(f"fit seconds: {both:.3f}")


if __name__ == "__main__":
    main()
