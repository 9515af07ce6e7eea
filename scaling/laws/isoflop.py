"""Approach 2, step 1: the compute-optimal size of one isoFLOP budget from a parabola in log N.

With x = log10 N, the losses of one budget are fitted by loss = c0 + c1 x + c2 x^2 (least squares);
the vertex x* = -c1 / (2 c2) is the optimum. Rules a researcher can rely on:

- A vertex outside the sampled sizes, or a parabola that opens downward, is refused: a minimum at
  the boundary is not an optimum. The budget is reported with the sizes to add.
- "Centred" means the vertex lies in the middle third of the sampled log-N range. Off-centre and
  wide grids bias the vertex even without noise (arXiv 2603.22339), so those budgets are flagged.
- Intervals come from bootstrap draws of the parabola's coefficients (`fit_budget_draws`):
  `fit_laws` gives parametric draws (see `fit.py`), the allocator's quick refits resampled runs
  (`fit_budget`, widened by the HC1 factor sqrt(n / (n - 3))). Each draw's minimum is its
  vertex; a draw whose minimum falls outside the range takes the range's edge (the share of such
  draws is reported). No floor tied to the grid's spacing by default (`floor_spacing` 0).
- Draws that do not vary at all say nothing about uncertainty: a budget of exactly three sizes
  resampled without seed noise gives the same three runs in every draw. Such an interval is
  reported as None with a message, never as a zero-width one. (`fit_laws` avoids the case by
  default: budgets with few sizes get seed noise, see `FitOptions.seed_noise`.)
- D_opt comes from the budget's own tokens: log10 D is fitted linearly in log10 N over its runs
  (exactly C / (6 N) under the 6ND convention). FID at the optimum is a parabola of log10 FID in
  log10 N evaluated at N_opt, from the runs that measured FID (at least 3 sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaling.laws.bootstrap import interval, spreads

EDGE_NOTE = 0.2  # share of edge draws above which the budget's interval is called truncated


@dataclass(frozen=True)
class BudgetFit:
    """One isoFLOP budget: its runs, parabola and optimum (None when refused), units as named.

    compute: budget in FLOPs. params, losses, fids: its runs (N in parameters; fid None if absent).
    parabola: (c0, c1, c2) with loss = c0 + c1 x + c2 x^2, x = log10 N; None if not fitted.
    n_opt (parameters), d_opt (tokens), loss_opt, fid_opt: the optimum, with 95% intervals `*_ci`.
    centred: the vertex lies in the middle third of the sampled log10 N range.
    edge_fraction: share of bootstrap draws whose minimum sat at the edge of the sampled sizes.
    suggested_sizes: sizes (parameters) to add to centre the grid on the optimum.
    message: why the budget was refused or flagged; empty when all is well.
    """

    compute: float
    params: tuple[float, ...]
    losses: tuple[float, ...]
    fids: tuple[float | None, ...]
    parabola: tuple[float, float, float] | None
    centred: bool
    n_opt: float | None = None
    n_opt_ci: tuple[float, float] | None = None
    d_opt: float | None = None
    d_opt_ci: tuple[float, float] | None = None
    loss_opt: float | None = None
    loss_opt_ci: tuple[float, float] | None = None
    fid_opt: float | None = None
    fid_opt_ci: tuple[float, float] | None = None
    edge_fraction: float = 0.0
    suggested_sizes: tuple[float, ...] = ()
    message: str = ""

    @property
    def points(self) -> int:
        return len(self.params)

    @property
    def refused(self) -> bool:
        return self.n_opt is None

    @property
    def log10_n_ci(self) -> tuple[float, float] | None:
        if self.n_opt_ci is None:
            return None
        return (math.log10(self.n_opt_ci[0]), math.log10(self.n_opt_ci[1]))


@dataclass(frozen=True)
class BudgetDraws:
    """Bootstrap draws of one budget's optimum in log10 units, shape [draws] each.

    standard: (log_n, log_d) draws of the parabola's own vertex when the draws above carry a
    window-bias shift (`fit_budget_draws`'s bias), else None (they are the same draws).
    inside: [draws] bool, whether the draw's parabola has its minimum inside the sampled sizes
    (elsewhere the values above sit at the window's edge); None: all are."""

    log_n: np.ndarray
    log_d: np.ndarray
    log_loss: np.ndarray
    log_fid: np.ndarray | None
    standard: tuple[np.ndarray, np.ndarray] | None = None
    inside: np.ndarray | None = None


def _quadratic_draws(xc: np.ndarray, counts: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weighted least-squares (c0, c1, c2) per draw from moment sums; counts, y: [draws, n]."""
    powers = xc[None, :] ** np.arange(5)[:, None]
    s = counts @ powers.T
    t = np.einsum("kn,jn->kj", counts * y, powers[:3])
    m = s[:, [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]
    return np.linalg.solve(m, t[..., None])[..., 0]


def _suggest(x: np.ndarray, losses: np.ndarray, vertex: float | None) -> tuple[float, ...]:
    """Sizes (parameters) that extend the grid, at its own spacing, until the vertex is centred."""
    lo, hi = x.min(), x.max()
    spacing = float(np.median(np.diff(np.unique(x))))
    if vertex is None:  # no minimum: extend beyond the best run, three steps
        upward, steps = x[np.argmin(losses)] > (lo + hi) / 2, 3
    else:
        upward = vertex > (lo + hi) / 2
        reach = lo + 1.5 * (vertex - lo) - hi if upward else lo - (hi - 1.5 * (hi - vertex))
        steps = int(np.clip(math.ceil(reach / spacing - 1e-9), 1, 6))
    edge, sign = (hi, 1) if upward else (lo, -1)
    return tuple(float(f"{10 ** (edge + sign * spacing * k):.2g}") for k in range(1, steps + 1))


def vandermonde(params: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean of x = log10 N, the [n, 3] matrix [1, x - mean, (x - mean)^2]) of one budget's runs."""
    x = np.log10(params)
    xc = x - x.mean()
    return float(x.mean()), np.stack([np.ones_like(xc), xc, xc * xc], 1)


def vertices(params: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """log10 N of the minimum of the least-squares parabola in log10 N through runs of `params`
    parameters (three or more sizes) with losses [..., runs], one per row; NaN where the parabola
    has no minimum between the smallest and largest size."""
    centre, v = vandermonde(np.asarray(params, dtype=float))
    coef = np.linalg.lstsq(v, np.moveaxis(np.asarray(losses, dtype=float), -1, 0)
                           .reshape(v.shape[0], -1), rcond=None)[0]  # [3, rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        at = np.where(coef[2] > 0, -coef[1] / (2 * coef[2]), np.nan)
    xc = np.log10(np.asarray(params, dtype=float)) - centre
    at[(at < xc.min()) | (at > xc.max())] = np.nan
    return (at + centre).reshape(np.shape(losses)[:-1])


def fit_budget(
    compute: float,
    params: np.ndarray,
    tokens: np.ndarray,
    losses: np.ndarray,
    fids: np.ndarray,
    counts: np.ndarray,
    noisy: np.ndarray,
    rng: np.random.Generator,
    floor_spacing: float = 0.0,
) -> tuple[BudgetFit, BudgetDraws | None]:
    """Fit one budget's parabola with a resampling (pairs) bootstrap, for quick refits.

    params, tokens, losses, fids: [n] arrays for its runs (fids NaN where not measured);
    counts, noisy: [draws, n] from `bootstrap.resample`. Pairs resampling spreads a least-squares
    estimate like the HC0 sandwich, too narrow by n / (n - 3) in variance for 3 coefficients, so
    the draws are widened as HC1 does. `floor_spacing` > 0 floors the sd of log10 N_opt at that
    fraction of the grid's log10 spacing (Porian et al. 2024's 0.33); 0, the default, does not:
    such a floor depends on the design, not on the data (`benchmarks/calibration.py`).
    Returns no draws when refused.
    """
    xc = np.log10(params) - np.log10(params).mean()
    coef = _quadratic_draws(xc, counts, noisy)
    has_fid = ~np.isnan(fids)
    fid_coef = None
    if np.unique(xc[has_fid]).size >= 3:
        fid_coef = _fid_coef_draws(xc, fids, has_fid, counts)
    return fit_budget_draws(compute, params, tokens, losses, fids, coef, fid_coef,
                            widen=xc.size > 3, floor_spacing=floor_spacing, rng=rng)


def fit_budget_draws(
    compute: float,
    params: np.ndarray,
    tokens: np.ndarray,
    losses: np.ndarray,
    fids: np.ndarray,
    coef: np.ndarray,
    fid_coef: np.ndarray | None = None,
    widen: bool = False,
    floor_spacing: float = 0.0,
    rng: np.random.Generator | None = None,
    bias: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[BudgetFit, BudgetDraws | None]:
    """One budget's optimum from bootstrap draws of its parabola's coefficients.

    coef: [draws, 3] coefficients (c0, c1, c2) in x - mean(x), x = log10 N (see `vandermonde`);
    fid_coef: the same for log10 FID, or None. widen: scale the draws by the HC1 factor (pairs
    resampling); floor_spacing: see `fit_budget`; bias: per-draw shifts [draws] subtracted from
    the draws of log10 N_opt and log10 loss_opt (a window bias the draws must carry). Returns no
    draws when refused.
    """
    x = np.log10(params)
    xbar = x.mean()
    xc = x - xbar
    lo, hi = xc.min(), xc.max()
    c0, c1, c2 = np.polynomial.polynomial.polyfit(xc, losses, 2)
    parabola = (c0 - c1 * xbar + c2 * xbar**2, c1 - 2 * c2 * xbar, c2)
    report = dict(
        compute=compute,
        params=tuple(float(n) for n in params),
        losses=tuple(float(v) for v in losses),
        fids=tuple(None if np.isnan(f) else float(f) for f in fids),
        parabola=tuple(float(c) for c in parabola),
    )
    where = f"budget {compute:.3g} FLOPs"
    if c2 <= 0:
        sizes = _suggest(x, losses, None)
        msg = (f"{where}: refused, the losses are not convex in log N (the parabola opens "
               f"downward), so there is no optimum; add sizes {_fmt(sizes)}")
        return BudgetFit(centred=False, suggested_sizes=sizes, message=msg, **report), None
    vertex = -c1 / (2 * c2)
    if not lo <= vertex <= hi:
        sizes = _suggest(x, losses, vertex + xbar)
        msg = (f"{where}: refused, the parabola's minimum (N ~ {10 ** (vertex + xbar):.3g}) lies "
               f"outside the sampled sizes {10 ** (lo + xbar):.3g} to {10 ** (hi + xbar):.3g}; "
               f"add sizes {_fmt(sizes)}")
        return BudgetFit(centred=False, suggested_sizes=sizes, message=msg, **report), None
    third = (hi - lo) / 3
    centred = bool(lo + third <= vertex <= hi - third)

    # Each draw's minimum within the sampled range.
    d0, d1, d2 = coef.T
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = np.where(d2 > 0, -d1 / (2 * d2), np.nan)
    at_lo = d0 + d1 * lo + d2 * lo**2 <= d0 + d1 * hi + d2 * hi**2
    edge = np.where(at_lo, lo, hi)
    inside = (d2 > 0) & (inner >= lo) & (inner <= hi)
    xm = np.where(inside, inner, edge)
    with np.errstate(invalid="ignore", divide="ignore"):  # a draw with loss <= 0 becomes NaN
        log_loss = np.log10(d0 + d1 * xm + d2 * xm**2)
    log_n = xm + xbar
    x_opt, loss_opt = vertex + xbar, c0 - c1**2 / (4 * c2)
    if widen:
        factor = math.sqrt(x.size / (x.size - 3))
        log_n = x_opt + factor * (log_n - x_opt)
        log_loss = math.log10(loss_opt) + factor * (log_loss - math.log10(loss_opt))
    if floor_spacing > 0:
        floor = floor_spacing * float(np.median(np.diff(np.unique(x))))
        sd = log_n.std()
        if sd < floor:
            jitter = rng or np.random.default_rng(0)
            log_n = log_n + jitter.normal(0.0, math.sqrt(floor**2 - sd**2), log_n.shape)
    slope, intercept = np.polyfit(x, np.log10(tokens), 1)
    standard = None
    if bias is not None:
        standard = (log_n, intercept + slope * log_n)
        log_n, log_loss = log_n - bias[0], log_loss - bias[1]
    log_d = intercept + slope * log_n
    log_fid, fid_opt = None, None
    has_fid = ~np.isnan(fids)
    if fid_coef is not None:
        full = np.polynomial.polynomial.polyfit(xc[has_fid], np.log10(fids[has_fid]), 2)
        xf = np.clip(log_n - xbar, lo, hi)
        log_fid = fid_coef[:, 0] + fid_coef[:, 1] * xf + fid_coef[:, 2] * xf**2
        fid_opt = float(10 ** np.polynomial.polynomial.polyval(vertex, full))

    edge_fraction = float(1 - inside.mean())
    messages = []
    sizes: tuple[float, ...] = ()
    if not centred:
        sizes = _suggest(x, losses, x_opt)
        messages.append(f"{where}: the grid is not centred on its optimum (N ~ {10**x_opt:.3g}, "
                        f"outside the middle third of the sampled log N); add sizes {_fmt(sizes)}")
    if edge_fraction > EDGE_NOTE:
        messages.append(f"{where}: in {edge_fraction:.0%} of bootstrap draws the minimum sat at "
                        "the edge of the sampled sizes, so its interval is truncated there")
    stacked = np.stack([log_n, log_d, log_loss], 1)
    ci = interval(stacked)
    varies = spreads(stacked)
    fid_varies = log_fid is not None and bool(spreads(log_fid))
    flat = [name for name, ok in (("N_opt", varies[0]), ("loss_opt", varies[2]),
                                  ("FID", fid_varies or log_fid is None)) if not ok]
    if flat:
        messages.append(f"{where}: the interval of {' and '.join(flat)} cannot be estimated: "
                        f"its bootstrap draws do not vary (its {x.size} runs, "
                        f"{np.unique(x).size} sizes, cannot be resampled apart or lie exactly on "
                        "the parabola); add sizes or seed noise (FitOptions.seed_noise)")
    fit = BudgetFit(
        centred=centred,
        n_opt=float(10**x_opt),
        n_opt_ci=_pair(ci[:, 0]) if varies[0] else None,
        d_opt=float(10 ** (intercept + slope * x_opt)),
        d_opt_ci=_pair(ci[:, 1]) if varies[1] else None,
        loss_opt=float(loss_opt),
        loss_opt_ci=_pair(ci[:, 2]) if varies[2] else None,
        fid_opt=fid_opt,
        fid_opt_ci=_pair(interval(log_fid)) if fid_varies else None,
        edge_fraction=edge_fraction,
        suggested_sizes=sizes,
        message="; ".join(messages),
        **report,
    )
    return fit, BudgetDraws(log_n, log_d, log_loss, log_fid, standard, inside)


def residual_ss(params: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """Sum of squared relative residuals of one budget's parabola and its degrees of freedom
    (runs - 3), for pooling the seed-to-seed noise over budgets; (0, 0) with 3 runs or fewer."""
    if params.size <= 3:
        return 0.0, 0
    x = np.log10(params)
    coef = np.polynomial.polynomial.polyfit(x - x.mean(), losses, 2)
    fitted = np.polynomial.polynomial.polyval(x - x.mean(), coef)
    return float((np.log(losses / np.maximum(fitted, 1e-300)) ** 2).sum()), int(params.size - 3)


def _fid_coef_draws(
    xc: np.ndarray, fids: np.ndarray, has_fid: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """[draws, 3] coefficients of the parabola of log10 FID in centred log10 N per resample; a
    draw with fewer than 3 distinct FID sizes keeps the full-data coefficients."""
    y = np.log10(np.where(has_fid, fids, 1.0))
    full = np.polynomial.polynomial.polyfit(xc[has_fid], y[has_fid], 2)
    masked = counts * has_fid
    sizes = np.unique(xc[has_fid])
    distinct = sum((masked[:, xc == s].sum(1) > 0) for s in sizes)
    ok = distinct >= 3
    coef = np.tile(full, (counts.shape[0], 1))
    if ok.any():
        coef[ok] = _quadratic_draws(xc, masked[ok], np.broadcast_to(y, masked[ok].shape))
    return coef


def _pair(log_ci: np.ndarray) -> tuple[float, float]:
    return (float(10 ** log_ci[0]), float(10 ** log_ci[1]))


def _fmt(sizes: tuple[float, ...]) -> str:
    return ", ".join(f"{n:.2g}" for n in sizes) + " parameters"
