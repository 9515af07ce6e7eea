"""What law fitting costs: seconds and peak memory of `fit_laws` (1,000 bootstrap draws unless
said) on three tables, each fitted in a fresh process so that its peak resident memory
(`resource.getrusage(...).ru_maxrss`) is its own.

- 54 runs (6 budgets x 9 sizes), both approaches: goal under 5 s.
- 240 runs (6 budgets x 40 sizes), both approaches: goal under 10 s.
- 200,000 runs (6 budgets, sizes drawn over +-0.6 decades), both approaches: goal under 60 s and
  2 GB. Memory is bounded by one chunk of draws x runs (`bootstrap.CHUNK_CELLS`), never all of
  them; above `varpro.ITERATED_RUNS` runs Approach 3's draws are its linearised refits.

Seconds are wall-clock and CPU (process time, all threads), median of `--repeats` runs in one
process after a warm-up fit (imports excluded); on a loaded machine the wall-clock seconds show
the load (its average is printed) and the CPU seconds the fit's own cost. The last line is
`fit seconds: X` (the 54-run table).

    .venv/bin/python benchmarks/fit_speed.py [--repeats 3] [--big 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {54: (5.0, None), 240: (10.0, None), 200_000: (60.0, 2.0)}  # seconds, GB

WORKER = """
import json, resource, statistics, sys, time
import numpy as np
from scaling.laws import FitOptions, fit_laws
from scaling.runs_table import RunPoint
from scaling.surface import PAPER_BUDGETS, SURFACES

rows, draws, repeats = (int(x) for x in sys.argv[1:4])
surface, rng = SURFACES["chinchilla"], np.random.default_rng(0)
per = rows // len(PAPER_BUDGETS)
points = []
for c in PAPER_BUDGETS:
    if per <= 60:  # a grid, as a study would run it
        n = surface.optimum(c).n_opt * np.logspace(-0.6, 0.6, per)
    else:
        n = surface.optimum(c).n_opt * 10 ** rng.uniform(-0.6, 0.6, per)
    loss = surface.noisy_loss(n, c / (6 * n), rng)
    points += [RunPoint(compute=c, params=float(a), loss=float(b)) for a, b in zip(n, loss)]
options = FitOptions(draws=draws)
if rows <= 10_000:
    fit_laws(points, FitOptions(draws=20))  # warm-up
times, cpu = [], []
for _ in range(repeats if rows <= 10_000 else 1):
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_laws(points, options)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
only2 = time.perf_counter()
fit_laws(points, FitOptions(draws=draws, approach3=False))
only2 = time.perf_counter() - only2
print(json.dumps({"seconds": statistics.median(times), "approach2": only2,
                  "cpu": statistics.median(cpu),
                  "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "a": fit.n_opt.exponent, "a3": fit.approach3.a}))
"""


def measure(rows: int, draws: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(rows), str(draws), str(repeats)],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--big", type=int, default=200_000, help="rows of the large table (0: skip)")
    args = ap.parse_args()
    print(f"law fitting, {args.draws} bootstrap draws, both approaches; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = [("runs", "wall seconds", "CPU seconds", "Approach 2 alone (wall)", "peak memory (GB)",
             "goal")]
    first = None
    for n in (54, 240, args.big):
        if not n:
            continue
        r = measure(n, args.draws, args.repeats)
        first = r["seconds"] if first is None else first
        seconds, gb = GOALS.get(n, (None, None))
        goal = " and ".join(x for x in (seconds and f"< {seconds:g} s", gb and f"< {gb:g} GB")
                            if x) or "-"
        rows.append((f"{n:,}", f"{r['seconds']:.2f}", f"{r['cpu']:.2f}", f"{r['approach2']:.2f}",
                     f"{r['maxrss_gb']:.2f}", goal))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"fit seconds: {first:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
