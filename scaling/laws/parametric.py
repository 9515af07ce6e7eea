"""Approach 3: the parametric loss L(N, D) = E + A / N^alpha + B / D^beta fitted to every run.

The fit follows Besiroglu et al. 2024 (arXiv 2404.10102): in log space with the log-sum-exp form

    log L_hat = LSE(a - alpha log N, b - beta log D, e),   A = exp(a), B = exp(b), E = exp(e),

minimising the Huber loss (delta = 1e-3) of log L_hat - log L summed over runs (summed, not
averaged: averaging stops the optimiser early), with L-BFGS-B from a grid of starting points.

- Starting points: a grid over (alpha, beta) in [0.05, 2] where, by variable projection, E, A, B
  are the linear least-squares fit of L for that pair; the best `STARTS` grid points by the Huber
  objective start scipy's L-BFGS-B, and the lowest optimum wins.
- log N and log D are centred before fitting (a' = a - alpha mean log N) so that the coefficient
  and its exponent are not nearly collinear; the reported A and B are for N and D themselves.
- Bootstrap: each draw (the shared resamples of `bootstrap.resample`, weights = counts) restarts
  from the optimum (and any other local optimum the grid found) with the same objective and bounds,
  solved by the vectorised L-BFGS of `batched_lbfgs`.
- a = beta / (alpha + beta) and b = alpha / (alpha + beta) are the implied exponents of N_opt and
  D_opt (C = 6 N D), with intervals from the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from scaling.laws.batched_lbfgs import minimize_batched
from scaling.laws.bootstrap import interval

HUBER_DELTA = 1e-3
GRID = np.arange(0.05, 2.0001, 0.05)
STARTS = 6
# Bounds on (e, a', b', alpha, beta): exponents positive and finite, log-coefficients loose.
LOWER = np.array([-50.0, -50.0, -50.0, 1e-3, 1e-3])
UPPER = np.array([50.0, 50.0, 50.0, 4.0, 4.0])
NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")


@dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, N in parameters, D in tokens; 95% intervals in `ci`.

    draws: [draws, 5] bootstrap draws of (E, A, B, alpha, beta); points: runs fitted;
    at_bound: names of exponents that ended on their bound (the fit is then not trustworthy).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    ci: dict[str, tuple[float, float]]
    points: int
    draws: np.ndarray | None = None
    at_bound: tuple[str, ...] = ()

    @property
    def a(self) -> float:
        """Exponent of N_opt ~ C^a: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt ~ C^b: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    def loss(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta


class _Problem:
    """The summed Huber objective in centred coordinates, theta = (e, a', b', alpha, beta)."""

    def __init__(self, params: np.ndarray, tokens: np.ndarray) -> None:
        log_n, log_d = np.log(params), np.log(tokens)
        self.cn, self.cd = log_n.mean(), log_d.mean()
        self.u, self.v = log_n - self.cn, log_d - self.cd

    def __call__(
        self, theta: np.ndarray, weights: np.ndarray, log_loss: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """theta [K, 5]; weights, log_loss [K, n] or broadcastable -> (f [K], gradient [K, 5])."""
        t1 = theta[:, 1:2] - theta[:, 3:4] * self.u
        t2 = theta[:, 2:3] - theta[:, 4:5] * self.v
        t3 = theta[:, 0:1]
        top = np.maximum(np.maximum(t1, t2), t3)
        e1, e2, e3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(t3 - top)
        total = e1 + e2 + e3
        r = top + np.log(total) - log_loss
        # Huber / delta: r^2 / (2 delta) inside, |r| - delta / 2 outside; same minimiser.
        ar = np.abs(r)
        h = np.where(ar <= HUBER_DELTA, 0.5 * r * r / HUBER_DELTA, ar - 0.5 * HUBER_DELTA)
        dr = weights * np.clip(r / HUBER_DELTA, -1.0, 1.0) / total
        grad = np.stack(
            [(dr * e3).sum(1), (dr * e1).sum(1), (dr * e2).sum(1),
             -(dr * e1 * self.u).sum(1), -(dr * e2 * self.v).sum(1)], 1)
        return (weights * h).sum(1), grad

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """(e, a', b', alpha, beta) [K, 5] -> (E, A, B, alpha, beta) [K, 5]."""
        e, a, b, alpha, beta = theta.T
        return np.stack([np.exp(e), np.exp(a + alpha * self.cn), np.exp(b + beta * self.cd),
                         alpha, beta], 1)

    def grid_starts(self, losses: np.ndarray) -> np.ndarray:
        """The best grid points (alpha, beta), E, A, B from linear least squares: [STARTS, 5]."""
        al, be = (g.ravel() for g in np.meshgrid(GRID, GRID, indexing="ij"))
        cols = np.stack([np.ones((al.size, self.u.size)), np.exp(-al[:, None] * self.u),
                         np.exp(-be[:, None] * self.v)], 2)
        norm = np.linalg.norm(cols, axis=1, keepdims=True)
        x = cols / norm
        coef = np.linalg.solve(np.einsum("gni,gnj->gij", x, x),
                               np.einsum("gni,n->gi", x, losses)[..., None])[..., 0] / norm[:, 0]
        # A negative coefficient is not a valid start; a small positive one is.
        coef = np.maximum(coef, 1e-3 * losses.min())
        theta = np.concatenate([np.log(coef), al[:, None], be[:, None]], 1)
        f, _ = self(theta, np.ones((1, self.u.size)), np.log(losses))
        return theta[np.argsort(f)[:STARTS]]


def fit_parametric(
    params: np.ndarray,
    tokens: np.ndarray,
    losses: np.ndarray,
    counts: np.ndarray | None = None,
    noisy: np.ndarray | None = None,
) -> ParametricFit:
    """Fit E, A, B, alpha, beta to runs (N parameters, D tokens, loss) with bootstrap intervals.

    counts, noisy: [draws, n] resamples from `bootstrap.resample`; without them, no intervals.
    """
    if params.size < 5:
        raise ValueError(f"Approach 3 fits 5 parameters: it needs 5 runs, got {params.size}")
    problem = _Problem(params, tokens)
    log_loss = np.log(losses)
    ones = np.ones((1, params.size))

    def scalar(theta: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = problem(theta[None, :], ones, log_loss)
        return float(f[0]), g[0]

    optima: list[tuple[float, np.ndarray]] = []
    for start in problem.grid_starts(losses):
        res = minimize(scalar, start, jac=True, method="L-BFGS-B",
                       bounds=list(zip(LOWER, UPPER, strict=True)),
                       options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 2000})
        optima.append((float(res.fun), res.x))
    optima.sort(key=lambda item: item[0])
    best = optima[0][1]
    distinct = [best] + [x for _, x in optima[1:]
                         if np.abs(x[3:] - best[3:]).max() > 1e-3][:2]
    nat = problem.natural(best[None, :])[0]
    at_bound = tuple(name for name, i in (("alpha", 3), ("beta", 4))
                     if best[i] <= LOWER[i] * 1.01 or best[i] >= UPPER[i] * 0.99)

    draws, ci = None, {}
    if counts is not None and noisy is not None:
        w, y = counts.astype(float), np.log(noisy)
        x_best, f_best = None, None
        for start in distinct:
            x, f, _ = minimize_batched(lambda th, rows: problem(th, w[rows], y[rows]),
                                       np.tile(start, (w.shape[0], 1)), LOWER, UPPER)
            if x_best is None:
                x_best, f_best = x, f
            else:
                better = f < f_best
                x_best[better], f_best[better] = x[better], f[better]
        draws = problem.natural(x_best)
        s = draws[:, 3] + draws[:, 4]
        full = np.concatenate([draws, (draws[:, 4] / s)[:, None], (draws[:, 3] / s)[:, None]], 1)
        bounds = interval(full)
        ci = {name: (float(bounds[0, i]), float(bounds[1, i])) for i, name in enumerate(NAMES)}
    return ParametricFit(
        E=float(nat[0]), A=float(nat[1]), B=float(nat[2]), alpha=float(nat[3]),
        beta=float(nat[4]), ci=ci, points=int(params.size), draws=draws, at_bound=at_bound,
    )
