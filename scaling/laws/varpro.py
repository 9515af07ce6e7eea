"""Approach 3 by variable projection: L(N, D) = E + A / N^alpha + B / D^beta, least squares on
log loss, and its parametric bootstrap.

For fixed (alpha, beta) the loss is linear in (E, A, B), so the fit is a search over two
exponents with the three coefficients solved exactly (the idea of arXiv 2603.22339 and
Open-Athena's vpnls):

1. Grid: alpha, beta in `GRID`; for each pair, E, A, B >= 0 by nonnegative least squares of the
   loss on [1, N^-alpha, D^-beta] with weights 1 / loss (relative residuals, close to residuals
   of log loss). The Gram matrices of all pairs come from one matrix product, so the grid costs
   O(grid x runs) arithmetic and O(grid + runs) memory.
2. Refinement: the best `STARTS` grid points start scipy's L-BFGS-B on all five parameters
   (centred log coordinates, as `parametric._Problem`), minimising the sum of squared residuals
   of log loss; the lowest optimum wins.
3. Parametric bootstrap: draw k replaces the observed log losses by the fitted ones plus
   sigma * scale_k * z[k] (`bootstrap.NoiseDraws`, sigma the residual sd with n - 5 degrees of
   freedom) and refits from the optimum: first by the Gauss-Newton step of the linearised model
   (exact to first order, one matrix product), then, for tables up to `ITERATED_RUNS` runs, by
   Levenberg-Marquardt iterations vectorised over the draws, so that a small study's nonlinear
   spread is kept. Above that, the linearised draws are used: their error shrinks as 1 / runs.

Least squares, not Huber: with the loss noise of real runs (0.5% of the loss) every residual
exceeds a Huber delta of 1e-3 on log loss, which makes that objective least absolute deviations,
less efficient for Gaussian noise and without a linear solve for E, A, B. The Huber fit of
Besiroglu et al. (`parametric.fit_parametric`) stands beside this one as a point estimate.
"""

from __future__ import annotations

import numpy as np

from scaling.laws.parametric import BOUNDS, LOWER, TOLERANCES, UPPER, _Problem, _residuals

STARTS = 3  # grid points refined by L-BFGS-B
ITERATED_RUNS = 5000  # up to this many runs, bootstrap draws are iterated to convergence
LM_ITERATIONS = 30
LM_CELLS = 500_000  # draws x runs per Levenberg-Marquardt batch (its Jacobian is 5x that)


def _sse(theta: np.ndarray, u: np.ndarray, v: np.ndarray,
         y: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum of squared log residuals and its gradient for one theta (e, a', b', alpha, beta)."""
    r, p1, p2, p3 = _residuals(theta, u, v, y)
    g1, g2 = r * p1, r * p2
    grad = 2 * np.array([r @ p3, g1.sum(), g2.sum(), -(g1 @ u), -(g2 @ v)])
    return float(r @ r), grad


def fit_point(problem: _Problem, losses: np.ndarray) -> tuple[np.ndarray, float]:
    """The least-squares optimum theta [5] (centred coordinates) and its sum of squares."""
    y = np.log(losses)
    best = None
    for start in problem.grid_starts(losses, STARTS):
        from scipy.optimize import minimize  # loaded only when fitting

        res = minimize(_sse, start, args=(problem.u, problem.v, y), jac=True,
                       method="L-BFGS-B", bounds=BOUNDS, options=TOLERANCES)
        if best is None or res.fun < best[1]:
            best = (res.x, float(res.fun))
    return best


def fit_exponents(params: np.ndarray, tokens: np.ndarray, losses: np.ndarray
                  ) -> tuple[float, float]:
    """(alpha, beta) of the least-squares L(N, D) through runs of N parameters, D tokens and
    these losses (at least 5 runs; no bootstrap): the exponents alone, for callers that need
    the surface's shape, not its intervals."""
    params, tokens, losses = (np.asarray(v, dtype=float) for v in (params, tokens, losses))
    if params.size < 5:
        raise ValueError(f"fitting L(N, D) needs at least 5 runs, got {params.size}")
    theta, _ = fit_point(_Problem(params, tokens), losses)
    return float(theta[3]), float(theta[4])


def _jacobian(theta: np.ndarray, u: np.ndarray, v: np.ndarray,
              y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals [K, n] and Jacobian [K, n, 5] of log L_hat - y for thetas [K, 5]."""
    r, p1, p2, p3 = _residuals(theta, u, v, y)
    jac = np.stack([p3, p1, p2, -p1 * u, -p2 * v], -1)
    return r, jac


class DrawRefitter:
    """Refits bootstrap draws from the optimum `theta` (see the module docstring, step 3).

    Called with d [k, runs], the draws' log losses minus the fitted ones, it returns their thetas
    [k, 5]; `iterate` None iterates when the table has at most ITERATED_RUNS runs."""

    def __init__(self, problem: _Problem, theta: np.ndarray, iterate: bool | None = None):
        self.problem, self.theta = problem, theta
        u, v = problem.u, problem.v
        r0, jac = _jacobian(theta[None, :], u, v, np.zeros_like(u))
        self.fitted, self.jac = r0[0], jac[0]  # log L_hat at theta and its Jacobian [runs, 5]
        hess = self.jac.T @ self.jac
        scale = np.sqrt(np.diag(hess)) + 1e-300
        self.inverse = np.linalg.pinv(hess / np.outer(scale, scale)) / np.outer(scale, scale)
        self.iterate = u.size <= ITERATED_RUNS if iterate is None else iterate

    def __call__(self, d: np.ndarray) -> np.ndarray:
        linear = np.clip(self.theta + (d @ self.jac) @ self.inverse, LOWER, UPPER)
        if not self.iterate:
            return linear
        u, v = self.problem.u, self.problem.v
        out = np.empty_like(linear)
        batch = max(1, LM_CELLS // u.size)
        for b in range(0, d.shape[0], batch):
            out[b:b + batch] = _levenberg_marquardt(linear[b:b + batch], u, v,
                                                    self.fitted + d[b:b + batch])
        return out


def _levenberg_marquardt(theta: np.ndarray, u: np.ndarray, v: np.ndarray,
                         y: np.ndarray) -> np.ndarray:
    """Least squares of log loss per row of y [K, n], from thetas [K, 5], vectorised over K."""
    theta = theta.copy()
    r, jac = _jacobian(theta, u, v, y)
    f = (r * r).sum(1)
    lam = np.full(theta.shape[0], 1e-3)
    eye = np.eye(5)
    for _ in range(LM_ITERATIONS):
        g = np.einsum("kni,kn->ki", jac, r)
        h = np.einsum("kni,knj->kij", jac, jac)
        damped = h + lam[:, None, None] * (h * eye + 1e-12 * eye)
        try:
            step = -np.linalg.solve(damped, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        cand = np.clip(theta + step, LOWER, UPPER)
        rc, jc = _jacobian(cand, u, v, y)
        fc = (rc * rc).sum(1)
        better = fc < f
        theta[better], r[better], jac[better], f[better] = cand[better], rc[better], \
            jc[better], fc[better]
        lam = np.where(better, lam / 10, lam * 10)
        if np.all(np.abs(step).max(1) < 1e-9) or np.all(lam > 1e8):
            break
    return theta
