import numpy as np
import pytest
from scipy.optimize import minimize

from scaling.laws.bootstrap import resample
from scaling.laws.parametric import LOWER, UPPER, _Problem, fit_parametric
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study


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


def test_bootstrap_draws_match_scipy_lbfgsb_per_draw():
    fit, r, (params, tokens, losses) = fit_study("chinchilla", seed=5, draws=60)
    problem = _Problem(params, tokens)
    start = np.array([np.log(fit.E), np.log(fit.A) - fit.alpha * problem.cn,
                      np.log(fit.B) - fit.beta * problem.cd, fit.alpha, fit.beta])
    for k in range(0, 60, 6):
        w, y = r.counts[k : k + 1].astype(float), np.log(r.losses[k : k + 1])
        ref = minimize(lambda th, w=w, y=y: tuple(v[0] for v in problem(th[None], w, y)), start,
                       jac=True, method="L-BFGS-B", bounds=list(zip(LOWER, UPPER, strict=True)),
                       options={"ftol": 1e-14, "gtol": 1e-10})
        assert fit.draws[k, 3:] == pytest.approx(ref.x[3:], abs=1e-4)


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
    assert fit.draws.shape == (200, 5) and fit.at_bound == ()


def test_too_few_runs():
    with pytest.raises(ValueError, match="needs 5 runs, got 4"):
        fit_parametric(np.ones(4), np.ones(4), np.ones(4))
