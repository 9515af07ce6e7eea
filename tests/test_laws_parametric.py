from pathlib import Path

import numpy as np
import pytest

from scaling.laws.bootstrap import resample
from scaling.laws.parametric import fit_parametric
from scaling.runs_table import read_runs
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study

DATA = Path(__file__).parent / "data"


def arrays(points):
    params = np.array([p.params for p in points])
    tokens = np.array([p.tokens for p in points])
    losses = np.array([p.loss for p in points])
    groups = [np.flatnonzero(np.array([p.compute for p in points]) == c)
              for c in sorted({p.compute for p in points})]
    return params, tokens, losses, groups


def fit_study(name, seed, sizes=9, draws=200, rel_sigma=0.005):
    rng = np.random.default_rng(seed)
    points = synthetic_study(SURFACES[name], PAPER_BUDGETS, rng, sizes=sizes,
                             rel_sigma=rel_sigma)
    params, tokens, losses, groups = arrays(points)
    r = resample(groups, params, losses, draws, rng)
    return fit_parametric(params, tokens, losses, r.counts, r.losses), r, (params, tokens, losses)


@pytest.mark.parametrize("name", ["chinchilla", "asymmetric"])
def test_noise_free_surface_is_recovered(name):
    truth = SURFACES[name]
    points = synthetic_study(truth, PAPER_BUDGETS, np.random.default_rng(0), rel_sigma=0.0)
    params, tokens, losses, _ = arrays(points)
    fit = fit_parametric(params, tokens, losses)
    for field in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, field) == pytest.approx(getattr(truth, field), rel=1e-4)
    assert fit.a == pytest.approx(truth.exponents().a, rel=1e-5)
    assert fit.ci == {} and fit.draws is None and fit.points == 54
    assert fit.loss(1e8, 1e10) == pytest.approx(float(truth.loss(1e8, 1e10)), rel=1e-6)


def test_warm_started_draws_land_where_a_cold_fit_does():
    # Each draw starts from the full-data optimum; refitting the resampled runs from the grid of
    # starts must find the same optimum (the warm start does not trap a draw).
    fit, r, (params, tokens, losses) = fit_study("asymmetric", seed=5, draws=30)
    for k in range(0, 30, 6):
        rows = np.repeat(np.arange(params.size), r.counts[k])
        cold = fit_parametric(params[rows], tokens[rows], r.losses[k, rows])
        assert fit.draws[k, 3:] == pytest.approx([cold.alpha, cold.beta], abs=1e-4)


@pytest.mark.parametrize("name", ["chinchilla", "asymmetric"])
def test_intervals_cover_alpha_and_beta_in_90_percent_of_repetitions(name):
    truth = SURFACES[name]
    reps = 20
    hits = {"alpha": 0, "beta": 0}
    for seed in range(reps):
        fit, _, _ = fit_study(name, seed=100 + seed)
        for field in hits:
            lo, hi = fit.ci[field]
            hits[field] += lo <= getattr(truth, field) <= hi
    assert hits["alpha"] >= 0.9 * reps and hits["beta"] >= 0.9 * reps, hits


def test_intervals_shrink_when_points_are_added():
    widths = {}
    for sizes in (5, 15):
        w = []
        for seed in range(3):
            fit, _, _ = fit_study("chinchilla", seed=seed, sizes=sizes)
            w.append([fit.ci[f][1] - fit.ci[f][0] for f in ("alpha", "beta", "a")])
        widths[sizes] = np.mean(w, 0)
    assert np.all(widths[15] < 0.85 * widths[5]), widths


def test_implied_exponents_and_their_intervals():
    fit, _, _ = fit_study("chinchilla", seed=1)
    assert fit.a == pytest.approx(fit.beta / (fit.alpha + fit.beta))
    assert fit.b == pytest.approx(1 - fit.a)
    assert fit.ci["a"][0] <= fit.a <= fit.ci["a"][1]
    assert fit.ci["b"][0] == pytest.approx(1 - fit.ci["a"][1])
    assert fit.draws.shape == (200, 5) and fit.at_bound == () and fit.notes == ()


@pytest.mark.parametrize("name", ["chinchilla", "asymmetric"])
def test_the_loss_interval_at_a_budget_beyond_the_runs_covers_the_truth(name):
    # The surface's loss at 3x the largest budget's true optimum, as `validate` asks for it.
    truth = SURFACES[name]
    best = truth.optimum(3 * max(PAPER_BUDGETS))
    reps, hits = 20, 0
    for seed in range(reps):
        fit, _, _ = fit_study(name, seed=300 + seed)
        lo, hi = fit.loss_interval(best.n_opt, best.d_opt)
        assert lo < float(fit.loss(best.n_opt, best.d_opt)) < hi
        hits += lo <= best.loss <= hi
    assert hits >= 0.85 * reps, hits


def test_no_loss_interval_without_draws():
    truth = SURFACES["chinchilla"]
    points = synthetic_study(truth, PAPER_BUDGETS, np.random.default_rng(0), rel_sigma=0.0)
    params, tokens, losses, _ = arrays(points)
    assert fit_parametric(params, tokens, losses).loss_interval(1e8, 1e10) is None


def test_too_few_runs():
    with pytest.raises(ValueError, match="needs 5 runs, got 4"):
        fit_parametric(np.ones(4), np.ones(4), np.ones(4))


def test_vanished_irreducible_term_is_flagged_and_has_no_interval():
    # The CPU demo study's runs: their losses have no irreducible part at this scale, so E runs
    # to its bound 0, where its gradient vanishes and every draw stays (it used to print
    # "E 5.213e-14 [5.213e-14, 5.213e-14]").
    points = read_runs(DATA / "runs_3x5.csv")
    params, tokens, losses, groups = arrays(points)
    rng = np.random.default_rng(0)
    r = resample(groups, params, losses, 100, rng)
    fit = fit_parametric(params, tokens, losses, r.counts, r.losses)
    assert fit.E < 1e-6 * losses.min()
    assert fit.at_bound == ("E",) and fit.ci["E"] is None
    assert any(n.startswith("E ended on its bound (E ~ 0") for n in fit.notes)
    for name in ("A", "alpha", "beta", "a"):
        lo, hi = fit.ci[name]
        assert lo < getattr(fit, name) < hi


def test_draws_that_do_not_vary_give_no_interval():
    # Two budgets of three sizes resampled without noise: every draw is the data itself.
    rng = np.random.default_rng(4)
    points = synthetic_study(SURFACES["chinchilla"], (1e18, 1e19), rng, sizes=3)
    params, tokens, losses, groups = arrays(points)
    r = resample(groups, params, losses, 50, rng)
    fit = fit_parametric(params, tokens, losses, r.counts, r.losses)
    assert all(fit.ci[name] is None for name in ("alpha", "beta", "a", "b"))
    assert any("cannot be estimated: every bootstrap draw gives the same value" in n
               for n in fit.notes)
    noisy = resample(groups, params, losses, 50, rng, noise_sigma=0.005)
    fit = fit_parametric(params, tokens, losses, noisy.counts, noisy.losses)
    lo, hi = fit.ci["alpha"]
    assert lo < fit.alpha < hi
