"""Fit cost: memory does not grow as bootstrap draws x runs. A 200,000-run table is fitted in a
fresh process (both approaches) and its peak resident memory, from `resource`, stays under 2 GB
(before, the draws of every run were held at once: 19.7 GB, then an out-of-memory kill)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_BYTES = 2 * 1024**3

SCRIPT = """
import json, resource, sys
import numpy as np
from scaling.laws import FitOptions, fit_laws
from scaling.runs_table import RunPoint
from scaling.surface import PAPER_BUDGETS, SURFACES

rows, draws = int(sys.argv[1]), int(sys.argv[2])
surface, rng = SURFACES["chinchilla"], np.random.default_rng(0)
points = []
for c in PAPER_BUDGETS:
    n = surface.optimum(c).n_opt * 10 ** rng.uniform(-0.6, 0.6, rows // len(PAPER_BUDGETS))
    loss = surface.noisy_loss(n, c / (6 * n), rng)
    points += [RunPoint(compute=c, params=float(a), loss=float(b)) for a, b in zip(n, loss)]
fit = fit_laws(points, FitOptions(draws=draws))
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "a": fit.n_opt.exponent, "ci": fit.n_opt.exponent_ci, "a3": fit.approach3.a,
                  "runs": sum(b.points for b in fit.budgets)}))
"""


def measure(rows: int, draws: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(rows), str(draws)], cwd=ROOT,
                         capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_200000_run_fit_stays_under_2_gb():
    # 250 draws: memory is bounded by a chunk of draws x runs, so more draws cost time, not
    # memory (benchmarks/fit_speed.py times 1,000).
    result = measure(200_000, 250)
    assert result["runs"] == 6 * (200_000 // 6)
    assert result["maxrss_kib"] * 1024 < GOAL_BYTES, result
    lo, hi = result["ci"]
    assert lo < 0.5126 < hi and abs(result["a3"] - 0.5126) < 0.002
