import numpy as np
import pytest
from scipy.optimize import minimize

from scaling.laws.batched_lbfgs import minimize_batched


def rosenbrock(x: np.ndarray, rows: np.ndarray, shift: np.ndarray):
    """Shifted Rosenbrock, one shift per problem: minimum at (1 + s, 1 + s)."""
    s = shift[rows]
    a, b = x[:, 0] - s, x[:, 1] - s
    f = (1 - a) ** 2 + 100 * (b - a**2) ** 2
    g = np.stack([-2 * (1 - a) - 400 * a * (b - a**2), 200 * (b - a**2)], 1)
    return f, g


def test_independent_problems_each_reach_their_minimum():
    shift = np.linspace(-0.5, 0.5, 7)
    x, f, ok = minimize_batched(lambda x, r: rosenbrock(x, r, shift), np.zeros((7, 2)),
                                np.full(2, -np.inf), np.full(2, np.inf), max_iter=2000)
    assert ok.all()
    assert np.allclose(x, 1 + shift[:, None], atol=1e-5)
    assert np.all(f < 1e-10)


def test_bounds_hold_and_match_scipy():
    shift = np.array([0.0, 0.3])
    lower, upper = np.array([-2.0, -2.0]), np.array([0.8, 0.9])
    x, _, _ = minimize_batched(lambda x, r: rosenbrock(x, r, shift), np.zeros((2, 2)), lower,
                               upper, max_iter=2000)
    assert np.all(x >= lower) and np.all(x <= upper)
    for k in range(2):
        ref = minimize(lambda z, k=k: tuple(v[0] for v in rosenbrock(z[None], np.array([k]),
                                                                     shift)),
                       np.zeros(2), jac=True, method="L-BFGS-B",
                       bounds=list(zip(lower, upper, strict=True)))
        assert x[k] == pytest.approx(ref.x, abs=1e-5)
