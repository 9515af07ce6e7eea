"""Approach 2, step 2: power laws y = k C^e across budgets, and the saturating L = E + A C^-alpha.

The power law is the least-squares line in log10 space, log10 y = log10 k + e log10 C, through the
budgets' optima: unweighted by default, as Chinchilla (Hoffmann et al. 2022) and its replications
compute it, or weighted by 1 / sd^2 of each optimum's bootstrap draws (`weighted=True`), a variant
that lets the tightest budgets pull the line, and with them their parabolas' systematic bias.
Intervals propagate the per-budget uncertainty: bootstrap draw j refits the line on every budget's
draw j, so the 95% percentile intervals of (k, e) reflect how far each optimum could move.

Residuals still count: with 3 or more budgets, when the optima scatter about the line more than
their own intervals allow, significantly at the 95% level (under a true power law 5% of fits
widen), the draws are widened about the estimate by that excess, measured in the fit's own metric:
for the weighted line, chi-square of the residuals in units of each optimum's sd per degree of
freedom and its root, the Birge ratio that the Particle Data Group uses as its scale factor; for
the unweighted line, its residual sum of squares against those of the lines through the draws'
deviations (`_scatter`). Widening whenever the ratio exceeds 1 would widen half of all
fits of a true law, by a noisy factor (4 degrees of freedom on six budgets), and over-cover.
A law on 2 budgets passes through both exactly and cannot check this.

A law whose budgets' draws do not vary (see `bootstrap.spreads`) has no interval: it is reported
with `exponent_ci` and `coefficient_ci` None rather than with a zero-width interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling.laws.bootstrap import interval, spreads

SCATTER_LEVEL = 0.95  # widen only when the optima's scatter is significant at this level
SIGNIFICANT = 7  # digits kept in stored draws, so an object and its JSON predict identically
LINE_SHARE = 0.2  # below this share of draws with a line (see `inside`), a law has no interval


def rounded(values: np.ndarray) -> np.ndarray:
    """`values` rounded to SIGNIFICANT significant digits (as bootstrap draws are kept)."""
    return np.array([float(f"{v:.{SIGNIFICANT}g}") for v in values.ravel()]).reshape(values.shape)


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C^exponent with C in FLOPs; 95% intervals and bootstrap draws if fitted.

    draws: [draws, 2] array of (coefficient, exponent) pairs, kept together because the two are
    strongly correlated; None for a law quoted without intervals (the paper's).
    budgets: number of budgets the law was fitted on.
    scatter: the factor (>= 1) by which the draws were widened because the optima scatter about
    the line more than their intervals allow; 1 when they do not (or with only 2 budgets).
    excess: that factor whether applied or not (1 when the optima scatter as their intervals allow).
    """

    coefficient: float
    exponent: float
    coefficient_ci: tuple[float, float] | None = None
    exponent_ci: tuple[float, float] | None = None
    budgets: int = 0
    draws: np.ndarray | None = None
    scatter: float = 1.0
    excess: float = 1.0

    def __call__(self, compute: float | np.ndarray) -> np.ndarray:
        return self.coefficient * np.asarray(compute, dtype=float) ** self.exponent

    def values(self, compute: float | np.ndarray) -> np.ndarray | None:
        """The draws' y at `compute`, [draws, ...]; None without draws."""
        if self.draws is None:
            return None
        c = np.asarray(compute, dtype=float)
        values = self.draws[:, :1] * c.reshape(1, -1) ** self.draws[:, 1:]
        return values.reshape((-1, *c.shape))

    def interval(self, compute: float | np.ndarray) -> np.ndarray | None:
        """95% interval of y at `compute` from the draws, [2, ...] (lo, hi); None without draws."""
        values = self.values(compute)
        if values is None:
            return None
        c = np.asarray(compute, dtype=float)
        return interval(values.reshape(values.shape[0], -1)).reshape((2, *c.shape))


def weights_from_sd(sd: np.ndarray) -> np.ndarray:
    """1 / sd^2, with sd floored at a tenth of the median positive sd (or 1e-6 if none is positive)
    so that one budget whose draws happen not to spread cannot take all the weight."""
    positive = sd[sd > 0]
    floor = 0.1 * float(np.median(positive)) if positive.size else 1e-6
    return 1 / np.maximum(sd, floor) ** 2


def _wls_line(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted line y = b0 + b1 x; y may be [..., budgets]; returns (b0, b1)."""
    xm = (w * x).sum() / w.sum()
    ym = (y * w).sum(-1) / w.sum()
    slope = ((y - ym[..., None]) * w * (x - xm)).sum(-1) / (w * (x - xm) ** 2).sum()
    return ym - slope * xm, slope


def _masked_lines(x: np.ndarray, y: np.ndarray, w: np.ndarray,
                  keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted line per draw through the budgets `keep` [draws, budgets] holds; y [draws,
    budgets]. NaN for a draw that keeps fewer than 2 budgets at distinct compute."""
    weight = np.where(keep, w, 0.0)
    total = weight.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (weight * x).sum(1) / total
        ym = (weight * np.where(keep, y, 0.0)).sum(1) / total
        dx = x[None, :] - xm[:, None]
        sxx = (weight * dx**2).sum(1)
        slope = (weight * dx * (np.where(keep, y, 0.0) - ym[:, None])).sum(1) / sxx
    slope = np.where((keep.sum(1) >= 2) & (sxx > 0), slope, np.nan)
    return ym - slope * xm, slope


def fit_power_law(compute: np.ndarray, log_y: np.ndarray, log_draws: np.ndarray,
                  weighted: bool = False, widen: bool = True,
                  inside: np.ndarray | None = None) -> PowerLaw:
    """Fit y = k C^e from per-budget optima.

    compute: [budgets] FLOPs; log_y: [budgets] log10 of the optima; log_draws: [draws, budgets]
    their bootstrap draws. Needs at least 2 budgets. weighted False (the default): ordinary least
    squares of log10 y on log10 C, as Chinchilla and its replications fit; True: each budget
    weighted by 1 / sd^2 of its draws. widen: widen by the Birge ratio when the scatter is
    significant (see the module docstring); False for a law whose truth is the line through these
    budgets whatever their curvature (the loss at the optimum). inside: [draws, budgets] bool,
    whether a budget's draw has its minimum inside its sampled sizes; draw k's line then goes
    through those budgets only, as a study with draw k's losses would (it refuses the others), and
    is NaN where fewer than 2 remain, and the law has no interval when fewer than LINE_SHARE of
    the draws have a line. None: every draw of every budget counts.
    """
    if compute.size < 2:
        raise ValueError(f"a power law needs at least 2 budgets, got {compute.size}")
    x = np.log10(compute)
    # A bootstrap draw whose parabola has no positive minimum has no log value: it stays NaN in
    # the law's draws (so that draw k still pairs with draw k of Approach 3) and the intervals
    # ignore it, rather than let one NaN make the whole law NaN.
    finite = np.isfinite(log_draws).all(1)
    if finite.sum() < 2:
        log_draws = np.broadcast_to(log_y, (2, log_y.size))
        finite = np.ones(2, bool)
    sd = log_draws[finite].std(0)
    w = weights_from_sd(sd) if weighted else np.ones_like(sd)
    b0, b1 = _wls_line(x, log_y, w)
    if not spreads(log_draws[finite]).all():  # a budget's uncertainty unknown: the law's too
        return PowerLaw(coefficient=float(10**b0), exponent=float(b1), budgets=int(compute.size))
    scatter = excess = 1.0
    if compute.size > 2:
        ratio, significant = _scatter(x, log_y - b0 - b1 * x, log_draws[finite], w, weighted)
        # Reported even when not applied, so the fit can warn about it.
        scatter = ratio if widen and significant else 1.0
        excess = max(1.0, ratio)
    if inside is None:
        d0, d1 = _wls_line(x, log_draws, w)
    else:
        d0, d1 = _masked_lines(x, log_draws, w, inside & np.isfinite(log_draws))
        if np.isfinite(d1).mean() < LINE_SHARE:  # most repeats of the study would have no law
            return PowerLaw(coefficient=float(10**b0), exponent=float(b1),
                            budgets=int(compute.size), scatter=scatter, excess=excess)
    d0, d1 = b0 + scatter * (d0 - b0), b1 + scatter * (d1 - b1)
    draws = rounded(np.stack([10**d0, d1], 1))
    ci = interval(draws)
    return PowerLaw(
        coefficient=float(10**b0),
        exponent=float(b1),
        coefficient_ci=(float(ci[0, 0]), float(ci[1, 0])),
        exponent_ci=(float(ci[0, 1]), float(ci[1, 1])),
        budgets=int(compute.size),
        draws=draws,
        scatter=scatter,
        excess=excess,
    )


def _scatter(x: np.ndarray, residuals: np.ndarray, log_draws: np.ndarray, w: np.ndarray,
             weighted: bool) -> tuple[float, bool]:
    """(ratio, significant): how much more the optima scatter about their line than their draws
    allow, measured in the fit's own metric. Weighted: the Birge ratio sqrt(chi2 / dof) against
    chi-square. Unweighted: sqrt(RSS / mean RSS of the line through the draws' deviations), and
    significant when RSS exceeds the SCATTER_LEVEL quantile of those; a chi-square weighted by
    1 / sd^2 would let one tight budget set the factor applied to draws that the loose budgets
    spread (10x on a five-budget study of the built-in data, where the residual sums of squares
    say 2x)."""
    if weighted:
        from scipy.special import chdtri  # loaded only when fitting

        dof = x.size - 2
        chi2 = float((w * residuals**2).sum())
        return math.sqrt(chi2 / dof), chi2 > chdtri(dof, 1 - SCATTER_LEVEL)
    rss = float((residuals**2).sum())
    deviations = log_draws - log_draws.mean(0)
    n0, n1 = _wls_line(x, deviations, w)
    null = ((deviations - n0[:, None] - n1[:, None] * x) ** 2).sum(1)
    expected = float(null.mean())
    if expected <= 0:
        return 1.0, False
    return math.sqrt(rss / expected), rss > float(np.quantile(null, SCATTER_LEVEL))


@dataclass(frozen=True)
class SaturatingLaw:
    """L = E + A C^-alpha (C in FLOPs), E the irreducible loss; 95% intervals on E, A, alpha.

    ci[name] is None where the draws do not vary or the estimate sits on a bound; at_bound names
    the parameters on a bound (E at its floor 0, alpha at an end of its grid [1e-3, 2]).
    """

    E: float
    A: float
    alpha: float
    ci: dict[str, tuple[float, float] | None]
    budgets: int
    at_bound: tuple[str, ...] = ()

    def __call__(self, compute: float | np.ndarray) -> np.ndarray:
        return self.E + self.A * np.asarray(compute, dtype=float) ** -self.alpha


ALPHA_GRID = np.geomspace(1e-3, 2.0, 400)
BOUND_SHARE = 1e-3  # E below this share of the smallest loss counts as on its bound 0
FINE = 41  # points of the second, local grid around each draw's best coarse alpha


def _profile(
    log_alpha: np.ndarray, ratio: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variable projection: for each alpha, weighted least squares of y on [1, (C/C_ref)^-alpha].

    log_alpha: [draws, grid]; ratio: [budgets] C / C_ref; y: [draws, budgets]; w: [budgets].
    Returns E, A_ref (the coefficient at C_ref) and the residual sum of squares, each [draws, grid];
    the rss is inf where E < 0 or A <= 0.
    """
    z = ratio[None, None, :] ** -np.exp(log_alpha)[..., None]
    sw = w.sum()
    zm = (z * w).sum(-1) / sw
    ym = (y * w).sum(-1) / sw
    dz = z - zm[..., None]
    dy = (y - ym[:, None])[:, None, :]
    a = (w * dz * dy).sum(-1) / (w * dz**2).sum(-1)
    e = ym[:, None] - a * zm
    rss = (w * (dy - a[..., None] * dz) ** 2).sum(-1)
    return e, a, np.where((e >= 0) & (a > 0), rss, np.inf)


def _best(log_alpha: np.ndarray, rss: np.ndarray) -> np.ndarray:
    """The grid point of least rss per draw, refined by a parabola through its neighbours."""
    rows = np.arange(rss.shape[0])
    i = np.clip(np.argmin(rss, 1), 1, rss.shape[1] - 2)
    r0, r1, r2 = rss[rows, i - 1], rss[rows, i], rss[rows, i + 1]
    step = log_alpha[rows, i + 1] - log_alpha[rows, i]
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where(np.isfinite(r0 + r2) & (r0 + r2 > 2 * r1),
                         0.5 * (r0 - r2) / (r0 - 2 * r1 + r2), 0.0)
    return log_alpha[rows, i] + np.clip(shift, -1, 1) * step


def fit_saturating(compute: np.ndarray, loss: np.ndarray, loss_draws: np.ndarray,
                   weights: np.ndarray) -> SaturatingLaw:
    """Fit L = E + A C^-alpha by variable projection over alpha; needs at least 3 budgets.

    For each alpha, E and A are weighted linear least squares (E >= 0, A > 0 required); alpha is
    the best point of a 400-point grid over [1e-3, 2], then of a 41-point grid one coarse step
    either side, refined by a parabola. loss: [budgets]; loss_draws: [draws, budgets];
    weights: [budgets] (1 / sd^2 in loss units).
    """
    if compute.size < 3:
        raise ValueError(f"L = E + A C^-alpha needs at least 3 budgets, got {compute.size}")
    c_ref = float(np.exp(np.log(compute).mean()))
    ratio = compute / c_ref
    coarse = np.log(ALPHA_GRID)
    step = coarse[1] - coarse[0]

    def solve(y: np.ndarray) -> np.ndarray:
        grid = np.broadcast_to(coarse, (y.shape[0], coarse.size))
        *_, rss = _profile(grid, ratio, y, weights)
        feasible = np.isfinite(rss).any(1)
        centre = grid[np.arange(y.shape[0]), np.argmin(rss, 1)]
        fine = centre[:, None] + np.linspace(-step, step, FINE)[None, :]
        *_, rss = _profile(fine, ratio, y, weights)
        log_alpha = _best(fine, rss)
        e, a, _ = _profile(log_alpha[:, None], ratio, y, weights)
        alpha = np.exp(log_alpha)
        out = np.stack([e[:, 0], a[:, 0] * c_ref**alpha, alpha], 1)
        out[~feasible] = np.nan
        return out

    point = solve(loss[None, :])[0]
    draws = solve(loss_draws)
    ci = interval(draws)
    varies = spreads(draws, point)
    names = ("E", "A", "alpha")
    # E >= 0 is a constraint: an E below a thousandth of the smallest loss sits on it.
    at_bound = tuple(name for name, on in (
        ("E", point[0] < BOUND_SHARE * loss.min()),
        ("alpha", point[2] <= ALPHA_GRID[0] * 1.01 or point[2] >= ALPHA_GRID[-1] * 0.99)) if on)
    return SaturatingLaw(
        E=float(point[0]), A=float(point[1]), alpha=float(point[2]),
        ci={n: (float(ci[0, i]), float(ci[1, i])) if varies[i] and n not in at_bound else None
            for i, n in enumerate(names)},
        budgets=int(compute.size), at_bound=at_bound,
    )
