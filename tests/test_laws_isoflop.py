import math

import numpy as np
import pytest

from scaling.laws.bootstrap import resample
from scaling.laws.isoflop import fit_budget, residual_ss, vertices

C = 1e18


def budget(x_opt: float, x: np.ndarray, noise: float = 0.0, curvature: float = 0.05, seed=0,
           fids=None, floor_spacing=0.33, draws=400):
    """A budget whose loss is an exact parabola in log10 N with its vertex at x_opt."""
    rng = np.random.default_rng(seed)
    params = 10**x
    losses = (3.0 + curvature * (x - x_opt) ** 2) * np.exp(noise * rng.standard_normal(x.size))
    tokens = C / (6 * params)
    fids = np.full(x.size, np.nan) if fids is None else fids
    r = resample([np.arange(x.size)], params, losses, draws, rng)
    return fit_budget(C, params, tokens, losses, fids, r.counts, r.losses, rng, floor_spacing)


def test_exact_parabola_gives_its_vertex():
    x = np.linspace(7.0, 8.0, 9)
    fit, draws = budget(7.53, x)
    assert math.log10(fit.n_opt) == pytest.approx(7.53, abs=1e-9)
    assert fit.loss_opt == pytest.approx(3.0)
    assert fit.d_opt == pytest.approx(C / (6 * fit.n_opt))
    assert fit.centred and not fit.refused
    # Losses exactly on a parabola: the optimum's loss does not move in any draw.
    assert fit.loss_opt_ci is None and fit.n_opt_ci is not None
    assert fit.message.endswith("the interval of loss_opt cannot be estimated: its bootstrap "
                                "draws do not vary (its 9 runs, 9 sizes, cannot be resampled apart "
                                "or lie exactly on the parabola); add sizes or seed noise "
                                "(FitOptions.seed_noise)")
    assert fit.points == 9 and fit.suggested_sizes == ()
    c0, c1, c2 = fit.parabola
    assert c0 + c1 * 7.2 + c2 * 7.2**2 == pytest.approx(3.0 + 0.05 * 0.33**2)
    lo, hi = fit.log10_n_ci
    assert lo <= 7.53 <= hi
    assert draws.log_n.shape == (400,)


def test_interval_covers_the_truth_and_shrinks_with_more_points():
    widths = []
    for n in (5, 17):
        x = np.linspace(7.0, 8.0, n)
        hits, width = 0, []
        for seed in range(10):
            fit, _ = budget(7.5, x, noise=0.002, curvature=0.3, seed=seed, floor_spacing=0.0)
            lo, hi = fit.log10_n_ci
            hits += lo <= 7.5 <= hi
            width.append(hi - lo)
        assert hits >= 8
        widths.append(np.mean(width))
    assert widths[1] < 0.75 * widths[0]


def test_off_centre_grid_is_flagged_with_sizes_on_the_optimums_side():
    x = np.linspace(7.0, 8.0, 9)
    fit, _ = budget(7.85, x)
    assert not fit.refused and not fit.centred
    assert "budget 1e+18 FLOPs" in fit.message and "not centred" in fit.message
    assert fit.suggested_sizes and min(fit.suggested_sizes) > 1e8
    # Adding them puts the vertex in the middle third.
    grid = np.concatenate([x, np.log10(fit.suggested_sizes)])
    lo, hi = grid.min(), grid.max()
    assert lo + (hi - lo) / 3 <= 7.85 <= hi - (hi - lo) / 3 + 0.02


def test_minimum_outside_the_grid_is_refused():
    x = np.linspace(7.0, 8.0, 9)
    fit, draws = budget(6.7, x)
    assert fit.refused and draws is None
    assert fit.n_opt is None and fit.n_opt_ci is None
    assert "refused" in fit.message and "budget 1e+18 FLOPs" in fit.message
    assert "outside the sampled sizes" in fit.message
    assert fit.suggested_sizes and max(fit.suggested_sizes) < 1e7


def test_concave_losses_are_refused():
    x = np.linspace(7.0, 8.0, 9)
    fit, draws = budget(7.5, x, curvature=-0.05)
    assert fit.refused and draws is None
    assert "not convex" in fit.message and fit.suggested_sizes


def test_floor_on_the_optimums_spread():
    x = np.array([7.0, 7.5, 8.0])  # three runs: every resample is the same, no spread of its own
    fit, draws = budget(7.5, x, floor_spacing=0.33)
    assert draws.log_n.std() == pytest.approx(0.33 * 0.5, rel=0.15)
    assert fit.n_opt_ci is not None and fit.n_opt_ci[0] < fit.n_opt < fit.n_opt_ci[1]
    # Without the floor nothing spreads: no interval rather than a zero-width one.
    bare_fit, bare = budget(7.5, x, floor_spacing=0.0)
    assert bare.log_n.std() < 1e-12
    assert bare_fit.n_opt_ci is None and bare_fit.loss_opt_ci is None
    assert "interval of N_opt and loss_opt cannot be estimated" in bare_fit.message
    assert fit.loss_opt_ci is None and "loss_opt cannot be estimated" in fit.message


def test_residual_sum_of_squares_for_pooling():
    x = np.linspace(7.0, 8.0, 7)
    rng = np.random.default_rng(0)
    losses = (3.0 + 0.1 * (x - 7.5) ** 2) * np.exp(0.01 * rng.standard_normal(7))
    ss, dof = residual_ss(10**x, losses)
    assert dof == 4 and 0.003 < np.sqrt(ss / dof) < 0.03
    assert residual_ss(10 ** x[:3], losses[:3]) == (0.0, 0)


def test_edge_draws_are_reported():
    x = np.linspace(7.0, 8.0, 5)
    fit, _ = budget(7.95, x, noise=0.003, curvature=0.02, seed=3)
    assert fit.edge_fraction > 0.2
    assert "edge of the sampled sizes" in fit.message


def test_fid_at_the_optimum():
    x = np.linspace(7.0, 8.0, 9)
    fids = 10 ** (1.5 + 0.2 * (x - 7.0) ** 2)
    fids[::2] = np.nan  # FID measured on 4 sizes only
    fit, draws = budget(7.5, x, fids=fids)
    assert fit.fid_opt == pytest.approx(10 ** (1.5 + 0.2 * 0.25), rel=1e-9)
    assert draws.log_fid is not None
    assert fit.fids[0] is None and fit.fids[1] == pytest.approx(fids[1])
    lo, hi = fit.fid_opt_ci
    assert lo <= fit.fid_opt <= hi


def test_vertices_of_parabolas_through_runs():
    params = np.array([1e7, 2e7, 4e7, 8e7])
    x = np.log10(params)
    rows = np.stack([(x - 7.4) ** 2, -(x - 7.4) ** 2, (x - 9.0) ** 2])  # min, max, min outside
    got = vertices(params, rows)
    assert got[0] == pytest.approx(7.4) and np.isnan(got[1]) and np.isnan(got[2])
    assert float(vertices(params[:3], (x[:3] - 7.3) ** 2)) == pytest.approx(7.3)
