"""Calibration of the printed intervals on a cheap configuration of `benchmarks/calibration.py`:
the chinchilla surface, two fixed grids (9 sizes x2 and 5 sizes x4), 20 seeds of the project's
own simulation, 0.5% loss noise. Precision is the real error across seeds against the surface's
truth; the intervals must cover the truth about as often as they say, and be about as wide as
that error needs. With a floor on each optimum's spread tied to the grid's spacing (a third of
it), the same 20 seeds gave half-width / (1.96 RMSE) of 13.3 (9 x2) and 22.4 (5 x4) for the
exponent a, far outside the tolerance here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.calibration import QUANTITIES, SURFACES, run_one, summarise, truths  # noqa: E402

SEEDS = 20
RATIO = (0.6, 1.8)  # half-width / (1.96 RMSE); the benchmark's goal is [0.8, 1.5]
COVERAGE = 0.85  # of 20 seeds; the goal is [0.90, 0.99]


@pytest.mark.parametrize("design", ["fixed9x2", "fixed5x4"])
def test_intervals_are_calibrated_on_wide_grids(design):
    from benchmarks.calibration import SPEC
    from search.spec import load_spec

    budgets = list(load_spec(SPEC).budgets)
    outcomes = [run_one("chinchilla", 0.005, design, seed, 100, 1.5e21) for seed in range(SEEDS)]
    assert all(o.error is None for o in outcomes)
    rows = {r["quantity"]: r for r in summarise(outcomes, truths(SURFACES["chinchilla"], budgets,
                                                                 1.5e21))}
    assert set(rows) == set(QUANTITIES)
    for q in ("a", "log10 N_opt(C)", "A3 alpha", "A3 beta", "log10 A3 loss"):
        r = rows[q]
        assert RATIO[0] <= r["ratio"] <= RATIO[1], (q, r)
        assert r["coverage"] >= COVERAGE, (q, r)
    # Unbiased grids: Approaches 2 and 3 are called in disagreement at about the nominal 5%.
    assert sum(o.disagree for o in outcomes) <= 3


def test_biased_windows_are_covered():
    """9 sizes x4 (4.8 decades) on the asymmetric surface: every parabola's vertex is biased the
    same way in every seed (A2's a by +0.095, its RMSE), which an interval from the residuals
    alone held in 6 of 20 seeds. Half the draws take the correction the fitted surface implies,
    so the interval holds the estimate and the truth. Its width is set by the bias, not by the
    error across seeds, so the ratio is not checked here; the A2 / A3 verdict says the bias."""
    from benchmarks.calibration import SPEC
    from search.spec import load_spec

    budgets = list(load_spec(SPEC).budgets)
    outcomes = [run_one("asymmetric", 0.005, "fixed9x4", seed, 100, 1.5e21)
                for seed in range(SEEDS)]
    rows = {r["quantity"]: r for r in summarise(outcomes, truths(SURFACES["asymmetric"], budgets,
                                                                 1.5e21))}
    for q in ("a", "b", "loss exponent"):
        assert abs(rows[q]["bias"]) > 0.01, (q, rows[q])
        assert rows[q]["coverage"] >= COVERAGE, (q, rows[q])
        assert all(lo <= v <= hi for v, lo, hi in (o.values[q] for o in outcomes)), q
    # The verdict compares the standard vertices' law with Approach 3, so the bias is named:
    # with the correction in half of Approach 2's draws it was called consistent in 20 of 20.
    assert sum(o.disagree for o in outcomes) >= 18


def test_a_row_whose_rmse_one_seed_sets_is_told_apart():
    from benchmarks.calibration import ONE_SEED, Outcome

    truth = {q: 0.0 for q in QUANTITIES}
    errors = [0.01 * (-1) ** k for k in range(99)] + [0.1]  # one seed at 10x the others' error
    outcomes = [Outcome({"a": (e, e - 0.02, e + 0.02)}, 1.0, 30, None, False) for e in errors]
    row = next(r for r in summarise(outcomes, truth) if r["quantity"] == "a")
    assert row["worst_share"] == pytest.approx(0.01 / (0.0099 + 0.01), rel=1e-9)
    assert row["worst_share"] > ONE_SEED and row["coverage"] == 0.99
    even = [Outcome({"a": (e, e - 0.02, e + 0.02)}, 1.0, 30, None, False) for e in errors[:99]]
    assert next(r for r in summarise(even, truth) if r["quantity"] == "a")["worst_share"] < 0.02


def test_pooled_coverage_tells_a_systematic_shortfall_from_chance():
    from benchmarks.calibration import outside_band, pool_rows

    # An exact 95% interval over 100 seeds leaves [0.90, 0.99] when it shows 89 hits or fewer
    # (P 0.0115) or all 100 (0.95^100 = 0.0059).
    assert outside_band(100) == pytest.approx(0.0174, abs=2e-4)
    assert outside_band(20) > 0.4
    # Twelve rows each at 0.92, every one inside the band, pool to 1104 of 1200: below what an
    # exact interval shows over 1200 studies (0.95 - 2 se = 0.937); 0.95 each is within chance.
    short = pool_rows([("A3 E", 0.92, 100, 0.9)] * 12 + [("a", 0.95, 100, 1.0)] * 12)
    e, a = {p.quantity: p for p in short}["A3 E"], {p.quantity: p for p in short}["a"]
    assert (e.hits, e.studies) == (1104, 1200) and e.coverage < e.chance[0]
    assert a.chance[0] <= a.coverage <= a.chance[1]
    assert [p.quantity for p in short] == ["a", "A3 E"]
