"""How long law fitting takes: 6 budgets x 9 sizes, 1,000 bootstrap draws, both approaches.

Goal: under 5 s on 2 cores. Also prints, side by side, the cost per bootstrap draw of Approach 3
solved by the vectorised L-BFGS (what `fit_laws` uses) and by one scipy L-BFGS-B call per draw,
and how far apart their answers are. The last line is `fit seconds: X`.

    .venv/bin/python benchmarks/fit_speed.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from scipy.optimize import minimize

from scaling.laws import FitOptions, fit_laws
from scaling.laws.bootstrap import resample
from scaling.laws.parametric import LOWER, UPPER, _Problem, fit_parametric
from scaling.runs_table import RunPoint
from scaling.surface import SURFACES

BUDGETS = (1e17, 3e17, 6e17, 1e18, 3e18, 6e18)
SIZES = 9
DRAWS = 1000
REPEATS = 3


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


def per_draw_scipy(points: list[RunPoint], draws: int) -> tuple[float, float]:
    """Seconds per draw and the largest |alpha, beta| gap to the vectorised solver, on `draws`."""
    params = np.array([p.params for p in points])
    tokens = np.array([p.tokens for p in points])
    losses = np.array([p.loss for p in points])
    groups = [np.arange(i * SIZES, (i + 1) * SIZES) for i in range(len(BUDGETS))]
    r = resample(groups, params, losses, draws, np.random.default_rng(1))
    fit = fit_parametric(params, tokens, losses, r.counts, r.losses)
    problem = _Problem(params, tokens)
    start = np.array([np.log(fit.E), np.log(fit.A) - fit.alpha * problem.cn,
                      np.log(fit.B) - fit.beta * problem.cd, fit.alpha, fit.beta])
    gap = 0.0
    t0 = time.perf_counter()
    for k in range(draws):
        w, y = r.counts[k : k + 1].astype(float), np.log(r.losses[k : k + 1])
        res = minimize(lambda th, w=w, y=y: tuple(v[0] for v in problem(th[None], w, y)), start,
                       jac=True, method="L-BFGS-B", bounds=list(zip(LOWER, UPPER, strict=True)),
                       options={"ftol": 1e-14, "gtol": 1e-10})
        gap = max(gap, float(np.abs(res.x[3:] - fit.draws[k, 3:]).max()))
    return (time.perf_counter() - t0) / draws, gap


def main() -> None:
    points = study()
    fit_laws(points, FitOptions(draws=50))  # warm-up: imports, caches
    both = timed(lambda: fit_laws(points, FitOptions(draws=DRAWS)))
    only2 = timed(lambda: fit_laws(points, FitOptions(draws=DRAWS, approach3=False)))
    sampled = 100
    scipy_per_draw, gap = per_draw_scipy(points, sampled)
    vector_per_draw = (both - only2) / DRAWS
    print(f"law fitting: {len(BUDGETS)} budgets x {SIZES} sizes, {DRAWS} bootstrap draws, "
          f"median of {REPEATS} runs")
    rows = [("part", "seconds"),
            ("Approach 2 (parabolas, power laws)", f"{only2:.3f}"),
            ("Approach 3 (grid starts, L-BFGS-B, bootstrap)", f"{both - only2:.3f}"),
            ("both", f"{both:.3f}")]
    for name, value in rows:
        print(f"  {name:<48}{value:>10}")
    print(f"Approach 3 bootstrap, seconds per draw (scipy measured on {sampled} draws):")
    print(f"  {'vectorised (A3 total / draws)':<32}{'scipy L-BFGS-B per draw':<28}{'ratio':<8}"
          f"max |alpha, beta| gap")
    print(f"  {vector_per_draw:<32.2e}{scipy_per_draw:<28.2e}"
          f"{scipy_per_draw / max(vector_per_draw, 1e-12):<8.1f}{gap:.1e}")
    print(f"fit seconds: {both:.3f}")


if __name__ == "__main__":
    main()
