"""L-BFGS with box bounds, vectorised over many independent small problems (bootstrap draws).

Each row of x is its own problem with its own history, step length and stopping test; only the
array arithmetic is shared, which makes 1,000 bootstrap refits cost about as much as a few dozen
scipy calls. Bounds are handled by projection: a step is clipped to the box and a variable at a
bound whose gradient pushes outward is held there. That is the L-BFGS-B iteration without its
generalised Cauchy point, enough when bounds rarely bind; `tests/test_laws_parametric.py` checks
that it lands where scipy's L-BFGS-B does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# fun(x[rows], rows) -> (f [rows], gradient [rows, p]) for the problems `rows`.
Objective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("kp,kp->k", a, b)


def minimize_batched(
    fun: Objective,
    x0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    max_iter: int = 500,
    memory: int = 10,
    ftol: float = 1e-11,
    gtol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise every row of x0 [K, p] within [lower, upper] [p]; returns (x, f, converged)."""
    x = np.clip(np.array(x0, dtype=float), lower, upper)
    k, p = x.shape
    f, g = fun(x, np.arange(k))
    s_hist = np.zeros((k, memory, p))
    y_hist = np.zeros((k, memory, p))
    rho = np.zeros((k, memory))
    stored = np.zeros(k, dtype=np.int64)
    active = np.ones(k, bool)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xi, gi, fi, n = x[idx], g[idx], f[idx], stored[idx]
        # Two-loop recursion over each row's own history, newest pair first.
        q = gi.copy()
        alphas = []
        for j in range(memory):
            slot = (n - 1 - j) % memory
            r = rho[idx, slot] * (j < n)
            a = r * _dot(s_hist[idx, slot], q)
            q -= a[:, None] * y_hist[idx, slot]
            alphas.append((a, slot, r))
        newest = (n - 1) % memory
        sl, yl = s_hist[idx, newest], y_hist[idx, newest]
        first = 0.1 / np.maximum(np.abs(gi).max(1), 1e-300)
        q *= np.where(n > 0, _dot(sl, yl) / np.maximum(_dot(yl, yl), 1e-300), first)[:, None]
        for a, slot, r in reversed(alphas):
            b = r * _dot(y_hist[idx, slot], q)
            q += (a - b)[:, None] * s_hist[idx, slot]
        step = -q
        blocked = ((xi <= lower) & (step < 0)) | ((xi >= upper) & (step > 0))
        step[blocked] = 0
        uphill = _dot(gi, step) >= 0
        if uphill.any():  # lost curvature information: restart as steepest descent
            sd = -gi[uphill] * first[uphill, None]
            sd[((xi[uphill] <= lower) & (sd < 0)) | ((xi[uphill] >= upper) & (sd > 0))] = 0
            step[uphill] = sd
            stored[idx[uphill]] = 0
        # Backtracking (Armijo) line search along the projected path, per row.
        t = np.ones(idx.size)
        xn = np.clip(xi + step, lower, upper)
        fn, gn = fun(xn, idx)
        for _ in range(40):
            fail = ~(fn <= fi + 1e-4 * _dot(gi, xn - xi))
            if not fail.any():
                break
            t[fail] *= 0.5
            xn[fail] = np.clip(xi[fail] + t[fail, None] * step[fail], lower, upper)
            fn[fail], gn[fail] = fun(xn[fail], idx[fail])
        stuck = ~(fn <= fi)  # no decrease found along the step: stay put, count as converged
        xn[stuck], fn[stuck], gn[stuck] = xi[stuck], fi[stuck], gi[stuck]
        s, y = xn - xi, gn - gi
        sy = _dot(s, y)
        keep = sy > 1e-10 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)
        rows, slot = idx[keep], stored[idx[keep]] % memory
        s_hist[rows, slot], y_hist[rows, slot], rho[rows, slot] = s[keep], y[keep], 1 / sy[keep]
        stored[rows] += 1
        free_g = np.where(((xn <= lower) & (gn > 0)) | ((xn >= upper) & (gn < 0)), 0, gn)
        scale = np.maximum(np.maximum(np.abs(fi), np.abs(fn)), 1)
        done = ((fi - fn) <= ftol * scale) | (np.abs(free_g).max(1) <= gtol)
        x[idx], f[idx], g[idx] = xn, fn, gn
        active[idx[done]] = False
    return x, f, ~active
