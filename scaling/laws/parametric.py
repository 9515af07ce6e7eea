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
- Bootstrap: each draw (the shared resamples of `bootstrap.resample`, weights = counts) is refitted
  by scipy's L-BFGS-B warm-started from the full-data optimum, and also from any other local
  optimum of the grid runs whose objective is within `CLOSE` of the best (a draw may prefer it);
  the lower of the two wins. Runs a draw leaves out are dropped from its objective.
- a = beta / (alpha + beta) and b = alpha / (alpha + beta) are the implied exponents of N_opt and
  D_opt (C = 6 N D), with intervals from the same draws.

Bounds. The exponents are boxed in [1e-3, 4]; E, A and B are positive by construction, and their
natural bound is 0: a term whose share of every fitted loss is below 1e-6 has left the fit (its
log-coefficient drifts towards -infinity, where its gradient vanishes, so bootstrap draws started
there cannot leave and would print a zero-width interval). Any parameter on a bound is named in
`at_bound`, its interval is None (with the exponent or coefficient it carries), and the fit is
flagged as not trustworthy. An interval whose draws do not vary at all is None too, never
zero-width; and when more than 2.5% of draws end on a bound, a note says the interval's end there
is the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.laws.bootstrap import CHUNK_CELLS, interval, spreads

HUBER_DELTA = 1e-3
GRID = np.arange(0.05, 2.0001, 0.05)
STARTS = 6
# Bounds on (e, a', b', alpha, beta): exponents positive and finite, log-coefficients loose.
LOWER = np.array([-50.0, -50.0, -50.0, 1e-3, 1e-3])
UPPER = np.array([50.0, 50.0, 50.0, 4.0, 4.0])
BOUNDS = list(zip(LOWER, UPPER, strict=True))
NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")
PROBE = 2000  # runs on which a term's share of the loss is checked in a large table
NEGLIGIBLE = 1e-6  # a term below this share of every fitted loss has left the fit
CLOSE = 0.1  # a second local optimum also starts the draws when within 10% of the best objective
BOUND_DRAWS = 0.025  # share of draws on a bound above which the 95% interval ends on it
TOLERANCES = {"ftol": 1e-12, "gtol": 1e-8, "maxiter": 2000}


@dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, N in parameters, D in tokens; 95% intervals in `ci`.

    ci[name] is None where the interval cannot be estimated (see the module docstring).
    draws: [draws, 5] bootstrap draws of (E, A, B, alpha, beta); points: runs fitted;
    at_bound: names of parameters that ended on a bound (the fit is then not trustworthy);
    notes: plain-text reasons for every missing or truncated interval.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    ci: dict[str, tuple[float, float] | None]
    points: int
    draws: np.ndarray | None = None
    at_bound: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

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

    def loss_draws(self, N: float, D: float) -> np.ndarray | None:
        """The bootstrap draws of L at N parameters and D tokens [draws]; None without draws,
        with a parameter on a bound, or when the draws do not vary."""
        if self.draws is None or self.at_bound:
            return None
        E, A, B, alpha, beta = (self.draws[:, i] for i in range(5))
        values = E + A / float(N) ** alpha + B / float(D) ** beta
        if not np.isfinite(values).any() or not spreads(values[:, None],
                                                         float(self.loss(N, D)))[0]:
            return None
        return values

    def loss_interval(self, N: float, D: float) -> tuple[float, float] | None:
        """95% interval of L at N parameters and D tokens over the bootstrap draws; None as
        `loss_draws`."""
        values = self.loss_draws(N, D)
        if values is None:
            return None
        lo, hi = interval(values)
        return float(lo), float(hi)


def _residuals(
    theta: np.ndarray, u: np.ndarray, v: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """theta [..., 5] = (e, a', b', alpha, beta); u, v centred log N, log D; y log loss, [n].

    Returns r = log L_hat - log L [..., n] and the shares of the A, B and E terms in L_hat."""
    e, a, b, alpha, beta = (theta[..., i, None] for i in range(5))
    t1, t2 = a - alpha * u, b - beta * v
    top = np.maximum(np.maximum(t1, t2), e)
    e1, e2, e3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = e1 + e2 + e3
    return top + np.log(total) - y, e1 / total, e2 / total, e3 / total


def _huber(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Huber / delta and its derivative: r^2 / (2 delta) inside, |r| - delta / 2 outside."""
    ar = np.abs(r)
    h = np.where(ar <= HUBER_DELTA, 0.5 * r * r / HUBER_DELTA, ar - 0.5 * HUBER_DELTA)
    return h, np.clip(r / HUBER_DELTA, -1.0, 1.0)


def _objective(
    theta: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """Weighted Huber sum and its gradient for one theta [5]; w: copies of each run.

    `_residuals` and `_huber` written out for a single theta: scipy calls this ~40 times per
    bootstrap draw, and the general forms cost twice as much."""
    e, a, b, alpha, beta = theta
    t1, t2 = a - alpha * u, b - beta * v
    top = np.maximum(np.maximum(t1, t2), e)
    e1, e2, e3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = e1 + e2 + e3
    r = top + np.log(total) - y
    ar = np.abs(r)
    inside = ar <= HUBER_DELTA
    h = np.where(inside, 0.5 * r * r / HUBER_DELTA, ar - 0.5 * HUBER_DELTA)
    dr = w * np.where(inside, r / HUBER_DELTA, np.sign(r)) / total
    g1, g2 = dr * e1, dr * e2
    return float(w @ h), np.array([dr @ e3, g1.sum(), g2.sum(), -(g1 @ u), -(g2 @ v)])


def _lbfgsb(start: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray,
            y: np.ndarray) -> tuple[float, np.ndarray]:
    from scipy.optimize import minimize  # scipy loads only when fitting, not for queries

    res = minimize(_objective, start, args=(u, v, w, y), jac=True, method="L-BFGS-B",
                   bounds=BOUNDS, options=TOLERANCES)
    return float(res.fun), res.x


class _Problem:
    """Centred coordinates of the runs: theta = (e, a', b', alpha, beta) with a' = a - alpha cn."""

    def __init__(self, params: np.ndarray, tokens: np.ndarray) -> None:
        log_n, log_d = np.log(params), np.log(tokens)
        self.cn, self.cd = log_n.mean(), log_d.mean()
        self.u, self.v = log_n - self.cn, log_d - self.cd

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """(e, a', b', alpha, beta) [K, 5] -> (E, A, B, alpha, beta) [K, 5]."""
        e, a, b, alpha, beta = theta.T
        return np.stack([np.exp(e), np.exp(a + alpha * self.cn), np.exp(b + beta * self.cd),
                         alpha, beta], 1)

    def grid_starts(self, losses: np.ndarray, starts: int = STARTS) -> np.ndarray:
        """The `starts` best (alpha, beta) grid points, E, A, B >= 0 by nonnegative least squares
        of the loss with weights 1 / loss, as thetas [starts, 5] (centred coordinates), best first.

        The Gram matrices of every grid pair come from matrix products over the runs, so memory is
        O(grid + runs), not O(grid x runs)."""
        w = 1.0 / losses
        ea = np.exp(-GRID[:, None] * self.u[None, :])  # [grid, runs]
        eb = np.exp(-GRID[:, None] * self.v[None, :])
        w2 = w * w
        g = len(GRID)
        # Gram entries for every pair (i: alpha, j: beta), columns [1, ea_i, eb_j], weights w^2.
        s11 = float(w2.sum())
        s1a, s1b = ea @ w2, eb @ w2
        saa, sbb = (ea * ea) @ w2, (eb * eb) @ w2
        sab = (ea * w2) @ eb.T
        ty = w2 * losses
        t1, ta, tb = float(ty.sum()), ea @ ty, eb @ ty
        yy = float(w2 @ (losses * losses))
        gram = np.empty((g, g, 3, 3))
        gram[..., 0, 0] = s11
        gram[..., 0, 1] = gram[..., 1, 0] = s1a[:, None]
        gram[..., 0, 2] = gram[..., 2, 0] = s1b[None, :]
        gram[..., 1, 1] = saa[:, None]
        gram[..., 2, 2] = sbb[None, :]
        gram[..., 1, 2] = gram[..., 2, 1] = sab
        rhs = np.stack(np.broadcast_arrays(t1, ta[:, None], tb[None, :]), -1)
        ridge = 1e-12 * np.trace(gram, axis1=-2, axis2=-1)[..., None, None] * np.eye(3)
        coef = np.linalg.solve(gram + ridge, rhs[..., None])[..., 0]  # unconstrained first
        from scipy.optimize import nnls  # loaded only when fitting

        for i, j in zip(*np.nonzero((coef < 0).any(-1)), strict=True):
            # min c'Mc - 2 c'h over c >= 0 is nnls(R, R^-T h) with M = R'R.
            try:
                chol = np.linalg.cholesky(gram[i, j] + ridge[i, j])
            except np.linalg.LinAlgError:
                coef[i, j] = np.nan
                continue
            coef[i, j] = nnls(chol.T, np.linalg.solve(chol, rhs[i, j]))[0]
        rss = (yy - 2 * np.einsum("ijk,ijk->ij", coef, rhs)
               + np.einsum("ijk,ijkl,ijl->ij", coef, gram, coef))
        rss = np.where(np.isfinite(rss), rss, np.inf)
        order = np.argsort(rss, axis=None)[:starts]
        ii, jj = np.unravel_index(order, rss.shape)
        c = np.maximum(coef[ii, jj], 1e-3 * losses.min())  # log of a zero coefficient: a small one
        return np.concatenate([np.log(c), GRID[ii, None], GRID[jj, None]], 1)

    def probe(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) of at most PROBE runs where a term's share of the loss is checked: all of them
        in a small table, else the extremes of log N and log D and an even sample between (a
        share below 1e-6 everywhere is not a fine question)."""
        if self.u.size <= PROBE:
            return self.u, self.v
        rows = np.unique(np.concatenate([
            np.argsort(self.u)[np.linspace(0, self.u.size - 1, PROBE // 2).astype(int)],
            np.argsort(self.v)[np.linspace(0, self.v.size - 1, PROBE // 2).astype(int)]]))
        return self.u[rows], self.v[rows]

    def on_bound(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Booleans [..., 5] each: `gone`, the E, A or B term is below NEGLIGIBLE of every fitted
        loss (its coefficient is on its natural bound 0); `edge`, within 1% of the box.
        Thetas [K, 5] are taken in chunks: their shares are [K, runs] arrays."""
        gone = np.zeros(theta.shape, bool)
        flat, out = theta.reshape(-1, 5), gone.reshape(-1, 5)
        u, v = self.probe()
        step = max(1, CHUNK_CELLS // max(u.size, 1))
        for k in range(0, flat.shape[0], step):
            _, p1, p2, p3 = _residuals(flat[k:k + step], u, v, np.zeros_like(u))
            out[k:k + step, :3] = np.stack([p3.max(-1), p1.max(-1), p2.max(-1)], -1) < NEGLIGIBLE
        edge = (theta <= LOWER + 0.01 * np.abs(LOWER)) | (theta >= UPPER - 0.01 * np.abs(UPPER))
        return gone, edge


def fit_parametric(
    params: np.ndarray,
    tokens: np.ndarray,
    losses: np.ndarray,
    counts: np.ndarray | None = None,
    noisy: np.ndarray | None = None,
    starts: np.ndarray | None = None,
) -> ParametricFit:
    """Fit E, A, B, alpha, beta to runs (N parameters, D tokens, loss) with bootstrap intervals.

    counts, noisy: [draws, n] resamples from `bootstrap.resample`; without them, no intervals.
    starts: [k, 5] starting thetas in the centred coordinates of `_Problem` (e.g. the
    least-squares optimum, see `varpro`); default the `STARTS` best points of the grid.
    """
    if params.size < 5:
        raise ValueError(f"Approach 3 fits 5 parameters: it needs 5 runs, got {params.size}")
    problem = _Problem(params, tokens)
    u, v, log_loss = problem.u, problem.v, np.log(losses)
    ones = np.ones(params.size)
    optima = sorted((_lbfgsb(start, u, v, ones, log_loss)
                     for start in (problem.grid_starts(losses) if starts is None else starts)),
                    key=lambda item: item[0])
    f_best, best = optima[0]
    # Another local optimum restarts the draws only when a draw could plausibly prefer it.
    starts = [best] + [x for f, x in optima[1:] if np.abs(x[3:] - best[3:]).max() > 1e-3
                       and f <= (1 + CLOSE) * f_best][:1]
    fitted = None
    if counts is not None and noisy is not None:
        log_noisy = np.log(noisy)
        fitted = np.empty((counts.shape[0], 5))
        for k in range(counts.shape[0]):
            keep = counts[k] > 0
            args = (u[keep], v[keep], counts[k, keep].astype(float), log_noisy[k, keep])
            fitted[k] = min((_lbfgsb(s, *args) for s in starts), key=lambda item: item[0])[1]
    return summarise(problem, best, fitted, int(params.size))


def summarise(problem: _Problem, best: np.ndarray, fitted: np.ndarray | None,
              points: int, notes: tuple[str, ...] = ()) -> ParametricFit:
    """A ParametricFit from the optimum `best` and bootstrap thetas `fitted` [draws, 5] (centred
    coordinates; None: no intervals): natural parameters, intervals, bounds and notes."""
    nat = problem.natural(best[None, :])[0]
    gone, edge = problem.on_bound(best)
    at_bound = tuple(NAMES[i] for i in range(5) if gone[i] or edge[i])
    notes = list(notes) + [
        f"{NAMES[i]} ended on its bound ({_bound_text(i, gone[i])}); its interval is not "
        "reported and the fit is not trustworthy" for i in range(5) if gone[i] or edge[i]]

    draws, ci = None, {}
    if fitted is not None:
        draws = problem.natural(fitted)
        full = np.concatenate([draws, (draws[:, 4] / draws[:, 3:].sum(1))[:, None],
                               (draws[:, 3] / draws[:, 3:].sum(1))[:, None]], 1)
        point = np.array([*nat, nat[4] / nat[3:].sum(), nat[3] / nat[3:].sum()])
        bounds = interval(full)
        varies = spreads(full, point)
        unknown = set(at_bound) | {NAMES[i] for i in range(7) if not varies[i]}
        unknown |= {"alpha"} if "A" in unknown else set()  # A gone: alpha carries nothing
        unknown |= {"beta"} if "B" in unknown else set()
        unknown |= {"a", "b"} if unknown & {"alpha", "beta"} else set()
        flat = [name for name in NAMES if not varies[NAMES.index(name)] and name not in at_bound]
        if flat:
            notes.append(f"the interval of {', '.join(flat)} cannot be estimated: every bootstrap "
                         "draw gives the same value (too few runs per budget to resample and no "
                         "seed noise)")
        gone, edge = problem.on_bound(fitted)
        for i in np.flatnonzero((gone | edge).mean(0) > BOUND_DRAWS):
            if NAMES[i] not in unknown:
                notes.append(f"{NAMES[i]} ended on a bound in {(gone | edge)[:, i].mean():.0%} "
                             "of bootstrap draws: its interval ends at the bound")
        ci = {name: None if name in unknown else (float(bounds[0, i]), float(bounds[1, i]))
              for i, name in enumerate(NAMES)}
    return ParametricFit(
        E=float(nat[0]), A=float(nat[1]), B=float(nat[2]), alpha=float(nat[3]),
        beta=float(nat[4]), ci=ci, points=points, draws=draws, at_bound=at_bound,
        notes=tuple(notes),
    )


def _bound_text(i: int, gone: bool) -> str:
    if gone:
        return f"{NAMES[i]} ~ 0: its term is below {NEGLIGIBLE:g} of every fitted loss"
    return f"at the edge of its box [{LOWER[i]:g}, {UPPER[i]:g}]" + (" in log" if i < 3 else "")
