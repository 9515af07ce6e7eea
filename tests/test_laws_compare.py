import numpy as np
import pytest

from scaling.laws import FitOptions, compare, fit_laws, paper_law
from scaling.laws.compare import _verdict
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study

OPTIONS = FitOptions(draws=300, approach3=False)


def fit(name, seed):
    points = synthetic_study(SURFACES[name], PAPER_BUDGETS, np.random.default_rng(seed),
                             sizes=15, rel_sigma=0.002)
    return fit_laws(points, FitOptions(draws=300, approach3=False, seed=seed))


def test_verdict_wording():
    assert _verdict("A", "B", "loss exponent", True, -0.0273, -0.0385, -0.0112,
                    (-0.015, -0.007)) == (
        "B's loss exponent is more negative: -0.0385 vs -0.0273, difference -0.011 "
        "[-0.015, -0.007]")
    assert "not distinguishable" in _verdict("A", "B", "model exponent", False, 0.56, 0.54,
                                             -0.02, (-0.05, 0.01))
    assert "is larger" in _verdict("A", "B", "data exponent", False, 0.43, 0.46, 0.03,
                                   (0.01, 0.05))
    assert "less negative" in _verdict("A", "B", "loss exponent", True, -0.04, -0.03, 0.01,
                                       (0.005, 0.02))
    assert "cannot tell" in _verdict("A", "B", "loss exponent", True, -0.04, -0.03, 0.01, None)


def test_different_designs_are_told_apart():
    # chinchilla: a = 0.513; asymmetric: a = 0.643 (it puts more compute into parameters).
    a, b = fit("chinchilla", 0), fit("asymmetric", 1)
    result = compare(a, b, ("chinchilla", "asymmetric"))
    rows = {r.law: r for r in result.rows}
    model = rows["n_opt"]
    assert model.difference == pytest.approx(b.n_opt.exponent - a.n_opt.exponent)
    assert model.ci[0] > 0
    assert model.verdict.startswith("asymmetric's model exponent is larger:")
    assert rows["d_opt"].verdict.startswith("asymmetric's data exponent is smaller:")
    # Asymmetric's loss falls faster over these budgets, by 0.0007 (the surfaces' true slopes
    # -0.0877 and -0.0870): the interval holds that difference.
    assert rows["loss"].difference < 0
    assert rows["loss"].ci[0] < -0.0007 < rows["loss"].ci[1]
    assert "fid" not in rows


def test_same_design_is_not_distinguishable():
    result = compare(fit("chinchilla", 2), fit("chinchilla", 3))
    for row in result.rows:
        assert row.ci[0] <= 0 <= row.ci[1]
        assert "not distinguishable" in row.verdict


def test_table_has_table1_layout_and_paper_rows():
    study = fit("chinchilla", 4)
    result = compare(paper_law(), study, ("paper", "study"))
    text = result.table(with_paper=True)
    lines = text.splitlines()
    assert "model exponent" in lines[1] and "data exponent" in lines[1]
    assert lines[2].startswith("paper ") and "0.5681" in lines[2]
    assert lines[4].startswith("study - paper")
    assert any(line.startswith("paper Cross-Attention") and "-0.0385" in line for line in lines)
    assert "multiply-add = 2 FLOPs" in lines[0]
    # Paper has no draws: the interval comes from the study's draws alone.
    row = result.rows[0]
    assert row.ci is not None and row.a_ci is None
    assert result.to_dict()["names"] == ["paper", "study"]


def test_paper_against_paper_has_no_intervals():
    result = compare(paper_law(), paper_law())
    assert all(r.ci is None and "cannot tell" in r.verdict for r in result.rows)
    assert [r.law for r in result.rows] == ["n_opt", "d_opt", "loss", "fid"]


def test_convention_mismatch_is_noted():
    a = fit("chinchilla", 5)
    points = synthetic_study(SURFACES["chinchilla"], PAPER_BUDGETS, np.random.default_rng(6))
    b = fit_laws(points, FitOptions(draws=100, approach3=False, convention="exact"))
    assert "not directly comparable" in compare(a, b).table()


def test_a_law_without_intervals_gives_no_verdict():
    from pathlib import Path

    from scaling.runs_table import read_runs

    runs = read_runs(Path(__file__).parent / "data" / "runs_2x3.csv")
    unknown = fit_laws(runs, FitOptions(draws=100, approach3=False, seed_noise=0))
    rows = {r.law: r for r in compare(fit("chinchilla", 7), unknown).rows}
    # Three sizes per budget and no assumed noise: nothing estimates the uncertainty.
    for law in ("loss", "n_opt"):
        assert rows[law].ci is None and "cannot tell" in rows[law].verdict


def test_a_study_against_itself_is_not_distinguishable_with_a_real_interval():
    # Same shape, same seed: draw j of both resamples the same runs. Paired as is, the difference
    # would be exactly 0 in every draw, a zero-width interval.
    study = fit("chinchilla", 8)
    for row in compare(study, study).rows:
        assert row.difference == 0 and row.ci[0] < 0 < row.ci[1]
        assert "not distinguishable" in row.verdict
