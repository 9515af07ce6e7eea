"""`fit_laws`: runs of an isoFLOP study -> `LawFit` (Approach 2 laws, Approach 3 beside them).

Steps: drop exact duplicate runs (with a warning), group runs by budget
(`runs_table.group_by_budget`), fit each budget's parabola in log10 N and the Approach 3 surface
L(N, D) by variable projection (`varpro`) and by Huber (`parametric`), draw the parametric
bootstrap, keep the budgets with a real optimum, fit the power laws through their vertices by
ordinary least squares (`powerlaw.fit_power_law`; the weighted variant beside it) and decide the
Approach 2 / 3 verdict on the paired difference of their exponents over the same draws (Approach
2's standard vertices, without the window-bias shift its intervals may carry).

Intervals: a parametric bootstrap with estimated noise. Draw k replaces every loss by its fitted
value times exp(sigma * s_k * z[k, i]): for Approach 2 the fitted value is its budget's parabola
and sigma the relative residual sd pooled over all parabolas (sum of n - 3 degrees of freedom);
for Approach 3 it is the fitted surface and sigma that fit's residual sd (n - 5 dof). s_k scales
each draw by the estimated sigma's own chi-square spread (`bootstrap.NoiseDraws`), so that with
few residual degrees of freedom the draws are Student-t rather than too narrow. Both approaches
use the same z, so their difference over draws k is a paired difference.

Why this method, measured with `benchmarks/calibration.py` (truth known, error across seeded
repetitions; ratio = median half-width / (1.96 RMSE)):
- Resampling runs within a budget (the pairs bootstrap used before) cannot spread a budget of 3
  to 5 sizes (its draws repeat the same few runs, or leave out the points that fix the vertex),
  which is why a floor at a third of the grid's own spacing was needed; that floor depends on the
  design, not the data, and made wide grids report 5 to 24 times the real error. The parametric
  draws need no floor: their spread comes from the measured residuals, and a budget with 3 sizes
  borrows the noise the other budgets' parabolas measure.
- Residuals, not an assumed seed noise: the noise level differs between studies by 4x and more
  (0.5% to 2% in the calibration).
- A parabola's misfit over a wide window shows up in its residuals. When they are significantly
  larger than the surface's (`_misfit`, an F test), that excess is misfit, not noise: taken as
  noise it made intervals up to 26x wider than the error across seeds, while every seed's vertex
  was biased the same way, so they still missed the truth (coverage 0.30 on 9 sizes x4). Then
  Approach 2 is drawn with the surface's noise.
- Window bias with or without visible misfit: whenever the surface's residuals are not
  significantly larger than the parabolas', half of Approach 2's draws take the vertex
  correction the fitted surface implies (`_window_bias`), so its intervals hold its own estimate
  and the corrected one, and Approach 3 is only trusted as far as that. On x2 and x4 grids the
  parabolas fit within the noise, yet every vertex is shifted alike: the exponent keeps, but N_opt
  extrapolated to 1.5e21 FLOPs was covered in 82-87% of seeds (asymmetric surface, 2% noise) and
  83% (paper, 0.5%, 5 sizes x4); with the correction, 93-94%.
- Few sizes a budget leave the parabolas few residual dof (1 each with 4 sizes), and an estimate
  of sigma from so few is itself uncertain: its chi-square spread made intervals 1.5-3x wider than
  the error across seeds. When the surface's residuals estimate the same noise (not
  significantly larger) with at least twice the dof, Approach 2 is drawn with that estimate
  (`_surface_noise_is_better`): on the allocator's designs the widest ratio went from 3.25 to 2.5.
- Draws about a smooth curve. A budget's vertex is a ratio of its parabola's coefficients, so
  draws about its own noisy curvature and its own off-centre vertex spread by a noisy amount: on
  9 sizes x sqrt2 at 2% noise the half-widths of `a` varied 2.7x between seeds, and their median
  was 1.5-1.6x the error across seeds while only 95% covered. Where the surface describes the
  runs as well as the parabolas, a budget's draws are drawn about the surface's own losses at its
  runs and moved onto the budget's own vertex (`_Parabola.about`). Over the calibration's 384
  rows that brought 23 rows into both bands (ratios 1.51-1.76 to 1.25-1.43), took 3 out (one more
  seed of 100 covered: 0.99 to 1.00) and left the widest ratio at 1.55 (was 1.76). Not where the
  surface's curvature is within CURVATURE_T standard errors of zero (narrow windows on a flat
  surface): there a draw's minimum often leaves the window and the estimate exists only for the
  budgets whose minimum did not, which the own parabola's edge-bound draws follow and the smooth
  ones do not (1.7x too wide).
- A draw's law leaves out the budgets whose minimum left their sampled sizes in that draw, as a
  study with that draw's losses would refuse them, instead of counting them at the window's edge
  (up to half a window from the vertex, which on narrow windows gave the exponent's draws heavy
  tails). Draws with fewer than 2 budgets left have no law; a warning gives their share. Over the
  calibration's 144 rows of a, b and N_opt at 1.5e21 FLOPs the median |log ratio| went from 0.20
  to 0.14 (x sqrt2, x2 grids and the two-round grid at 2% noise: 1.26-1.55 to 1.00-1.27), the
  widest ratio from 1.55 to 1.48; 4 coverages went from 0.99 to 1.00 (one seed each), and where
  one seed's error sets the RMSE, ratios fell to 0.78. The loss exponent keeps every budget: its
  truth is the slope over the budgets the fit used.
- Profile likelihood would serve one parameter at a time; the laws, the extrapolated N_opt and the
  A2 / A3 difference all need joint draws, which the bootstrap gives at the cost of one matrix
  product per chunk of draws (memory: a chunk of draws x runs at a time, never all of them).
The calibration table is in benchmarks/calibration.py's output (its docstring gives the command).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from scaling.laws.bootstrap import NoiseDraws, interval
from scaling.laws.isoflop import BudgetDraws, BudgetFit, fit_budget_draws, vandermonde
from scaling.laws.parametric import ParametricFit, _Problem, fit_parametric, summarise
from scaling.laws.powerlaw import (
    LINE_SHARE,
    PowerLaw,
    fit_power_law,
    fit_saturating,
    weights_from_sd,
)
from scaling.laws.result import FEW_SIZES, FitOptions, LawFit
from scaling.laws.varpro import DrawRefitter, fit_point
from scaling.runs_table import RunPoint, group_by_budget

SCATTER_NOTE = 1.5  # widening of a law's interval worth a warning
BIAS_NOTE = "wide or off-centre isoFLOP grids bias Approach 2 (arXiv 2603.22339)"
WIDE_DECADES = 2.0  # an isoFLOP grid wider than this in log10 N biases its parabola noticeably
CURVATURE_T = 2.0  # draws follow the surface's curve where its curvature's t exceeds this
LAWLESS_NOTE = 0.05  # share of draws without a law (under 2 budgets inside) worth a warning


class LawFitError(ValueError):
    """The runs cannot support a law (too few budgets with an optimum); the message says why."""


def fit_laws(points: Sequence[RunPoint], options: FitOptions | None = None) -> LawFit:
    """Fit the compute-optimal laws of a study from its runs (see the module docstring)."""
    options = options or FitOptions()
    points, warnings = deduplicate(points)
    groups = group_by_budget(points)
    budgets = list(groups)
    runs = [p for b in budgets for p in groups[b]]
    params = np.array([p.params for p in runs])
    tokens = np.array([p.tokens for p in runs])
    losses = np.array([p.loss for p in runs])
    fids = np.array([np.nan if p.fid is None else p.fid for p in runs])
    bounds = np.cumsum([0] + [len(groups[b]) for b in budgets])
    members = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(budgets))]

    parabolas = [_Parabola.of(params[m], losses[m]) for m in members]
    sigma2, dof2, notes = _noise(budgets, members, params, losses, parabolas, options)
    warnings += notes
    fid_coef = _fid_draws(members, params, fids, options)

    approach3 = huber = None
    refit = None
    if options.approach3:
        if params.size < 5:
            warnings.append(f"Approach 3 needs at least 5 runs, got {params.size}; not fitted")
        else:
            problem = _Problem(params, tokens)
            theta, sse = fit_point(problem, losses)
            dof3 = params.size - 5
            sigma3 = options.noise_sigma or (math.sqrt(sse / dof3) if dof3 else options.seed_noise)
            dof3 = math.inf if options.noise_sigma or not dof3 else dof3
            refit = (problem, theta, sigma3, dof3, DrawRefitter(problem, theta))
            # From the least-squares optimum, near which the Huber optimum lies: six grid starts
            # cost more than the whole bootstrap.
            huber = fit_parametric(params, tokens, losses, starts=theta[None, :])

    noise = NoiseDraws(options.draws, params.size, options.seed)
    scale3 = refit[2] * noise.scale(refit[3]) if refit else None
    misfit = _misfit(sigma2, dof2, refit[2], refit[3]) if refit else []
    warnings.extend(misfit)
    # Misfit: the parabolas' excess residuals are not noise, so Approach 2 is drawn with the
    # surface's noise, as it is when the surface estimates the same noise with more dof.
    surface_noise = bool(misfit) or bool(
        refit and _surface_noise_is_better(sigma2, dof2, refit[2], refit[3]))
    draw_sigma2 = refit[2] if surface_noise else sigma2  # relative noise of Approach 2's draws
    run_noise = (float(draw_sigma2), float(refit[3] if surface_noise else dof2))
    scale2 = scale3 if surface_noise else sigma2 * noise.scale(dof2)
    bias = [None] * len(members)
    centres = parabolas
    if refit and not _significantly_larger(refit[2], refit[3], sigma2, dof2):
        # The surface describes the runs at least as well as the parabolas: Approach 2's draws
        # carry the window bias it implies, which is there whether or not the residuals show it,
        # and spread as the surface's smooth isoFLOP curves would, moved onto each budget's own
        # vertex.
        bias = _window_bias(refit[0], refit[1], params, tokens, members, options)
        fitted = _surface_losses(refit[0], refit[1], np.log10(params), np.log10(tokens))
        centres = [p.about(fitted[m], losses[m], draw_sigma2)
                   for m, p in zip(members, parabolas, strict=True)]
    coef = [np.empty((options.draws, 3)) for _ in members]
    thetas = np.empty((options.draws, 5)) if refit else None
    for where, z in noise.chunks():
        for m, centre, out in zip(members, centres, coef, strict=True):
            out[where] = centre.draws(z[:, m] * scale2[where, None])
        if refit:
            z *= scale3[where, None]
            thetas[where] = refit[4](z)

    fits: list[BudgetFit] = []
    kept: list[tuple[BudgetFit, BudgetDraws]] = []
    for i, (budget, m) in enumerate(zip(budgets, members, strict=True)):
        fit, bd = fit_budget_draws(budget, params[m], tokens[m], losses[m], fids[m], coef[i],
                                   fid_coef[i], bias=bias[i])
        fits.append(fit)
        if bd is not None:
            kept.append((fit, bd))
    warnings = [f.message for f in fits if f.message] + warnings
    if refit:
        approach3 = summarise(refit[0], refit[1], thetas, int(params.size))
        warnings.extend(f"Approach 3: {note}" for note in approach3.notes)
        warnings.extend(f"Approach 3 (Huber): {note}" for note in huber.notes)
    if len(kept) < 2:
        if len(budgets) < 2:
            raise LawFitError(f"the runs hold 1 budget ({budgets[0]:.3g} FLOPs); a law needs at "
                              "least 2 budgets with an optimum")
        raise LawFitError(" ".join([
            f"only {len(kept)} of {len(budgets)} budgets have an optimum inside their sampled "
            "sizes; a law needs at least 2.", "; ".join(f.message for f in fits if f.refused)
        ]).strip())

    compute = np.array([f.compute for f, _ in kept])
    # A draw's law leaves out the budgets whose minimum left their sizes, as a study with that
    # draw's losses would refuse them, rather than count them at their window's edge.
    inside = np.stack([d.inside for _, d in kept], 1)  # [draws, budgets]
    lawless = float((inside.sum(1) < 2).mean())
    if lawless > LAWLESS_NOTE:
        warnings.append(
            f"in {lawless:.0%} of bootstrap draws fewer than 2 budgets kept their minimum inside "
            "their sampled sizes, so a repeat of this study would often give no law; the laws' "
            "intervals hold the draws that give one" + (
                "" if lawless < 1 - LINE_SHARE else " and are not estimated when fewer than "
                f"{LINE_SHARE:.0%} do") + "; add sizes around each budget's optimum")

    def law(value: str, log_draws: str, weighted: bool = False,
            standard: bool = False) -> PowerLaw:
        """The power law through the budgets' optima; `standard`: from the draws of each
        parabola's own vertex, without the window-bias shift (for the A2 / A3 verdict)."""
        y = np.log10([getattr(f, value) for f, _ in kept])
        index = ("log_n", "log_d").index(log_draws) if standard else None
        draws = [getattr(d, log_draws) if index is None or d.standard is None
                 else d.standard[index] for _, d in kept]
        return fit_power_law(compute, y, np.stack(draws, 1), weighted, inside=inside)

    n_law, d_law = law("n_opt", "log_n"), law("d_opt", "log_d")
    # The loss exponent is the slope of the line through these budgets, curved or not: its
    # interval is that slope's, not widened for the curvature an irreducible loss gives.
    loss_law = fit_power_law(compute, np.log10([f.loss_opt for f, _ in kept]),
                             np.stack([d.log_loss for _, d in kept], 1), widen=False)
    if len(kept) == 2:
        warnings.append("the laws rest on 2 budgets: a line through 2 points cannot check its "
                        "own form, so their intervals come from the two optima's intervals alone")
    with_fid = [(f, d) for f, d in kept if d.log_fid is not None]
    fid_law = None
    if len(with_fid) >= 2:
        fid_law = fit_power_law(np.array([f.compute for f, _ in with_fid]),
                                np.log10([f.fid_opt for f, _ in with_fid]),
                                np.stack([d.log_fid for _, d in with_fid], 1),
                                inside=np.stack([d.inside for _, d in with_fid], 1))
    elif np.isfinite(fids).any():
        warnings.append(f"FID was measured, but only {len(with_fid)} budget(s) with an optimum "
                        "have FID at 3 or more sizes; no FID law (it needs 2 budgets)")

    saturating = None
    if options.saturating:
        if len(kept) < 3:
            warnings.append("the saturating loss L = E + A C^-alpha needs 3 budgets; not fitted")
        else:
            loss_draws = 10 ** np.stack([d.log_loss for _, d in kept], 1)
            saturating = fit_saturating(compute, np.array([f.loss_opt for f, _ in kept]),
                                        loss_draws, weights_from_sd(np.nanstd(loss_draws, 0)))
            if not np.isfinite(saturating.alpha):
                warnings.append("no saturating loss L = E + A C^-alpha with E >= 0 and A > 0 fits "
                                "the optima; not reported")
                saturating = None
            elif saturating.at_bound:
                warnings.append(f"saturating loss: {', '.join(saturating.at_bound)} ended on its "
                                "bound (E at 0, alpha at an end of [0.001, 2]); no interval for "
                                "it, do not trust this form")

    for name, x in (("N_opt", n_law), ("D_opt", d_law), ("loss", loss_law), ("FID", fid_law)):
        if x is not None and x.exponent_ci is None and lawless >= 1 - LINE_SHARE \
                and name != "loss":
            continue  # said above (the loss law keeps every budget in every draw)
        if x is not None and x.exponent_ci is None:
            warnings.append(f"the {name} law's interval cannot be estimated: some of its budgets' "
                            "bootstrap draws do not vary (see above)")
        elif x is not None and x.excess > SCATTER_NOTE:
            cause = (f"{BIAS_NOTE}; compare Approach 3" if name in ("N_opt", "D_opt") else
                     "the optima may not follow a pure power law: an irreducible loss bends it; "
                     "see the saturating form (FitOptions.saturating)")
            widened = (f"the law's interval is widened by {x.scatter:.2g}x" if x.scatter > 1 else
                       "the law's interval is not widened (" + (
                           "the interval is of the line through these budgets" if name == "loss"
                           else "not significant at the 95% level") + ")")
            warnings.append(f"the {name} optima scatter {x.excess:.2g}x more about their line "
                            f"than their own intervals allow; {widened} ({cause})")
    result = LawFit(
        n_opt=n_law, d_opt=d_law, loss=loss_law, fid=fid_law,
        compute_range=(float(compute.min()), float(compute.max())),
        budgets=tuple(fits), approach3=approach3, loss_saturating=saturating,
        convention=options.convention, warnings=tuple(warnings), options=options,
        approach3_huber=huber,
        weighted={"n_opt": law("n_opt", "log_n", True), "d_opt": law("d_opt", "log_d", True)},
        run_noise=run_noise if run_noise[0] > 0 else None,
    )
    if approach3 is not None:
        # The verdict weighs the standard Approach 2 estimate against Approach 3: with the
        # window-bias shift in half its draws, the difference's interval would span the very bias
        # it should detect.
        shifted = any(d.standard is not None for _, d in kept)
        standard = (law("n_opt", "log_n", standard=True), law("d_opt", "log_d", standard=True)
                    ) if shifted else (n_law, d_law)
        result = replace(result, paired=paired_differences(*standard, approach3))
    return replace(result, warnings=tuple(warnings + disagreements(result)))


def disagreements(fit: LawFit) -> list[str]:
    """A warning for each exponent on which Approaches 2 and 3 disagree: the 95% interval of their
    paired difference over the same bootstrap draws excludes 0. Names the gap and likely causes."""
    out = []
    agree = fit.agreement() or {}
    for name, what in (("a", "N_opt"), ("b", "D_opt")):
        if name in agree and not agree[name]["consistent"]:
            v2, v3 = agree[name]["approach2"], agree[name]["approach3"]
            d = agree[name]["difference"]
            out.append(
                f"Approaches 2 and 3 disagree on the {what} exponent {name}: {v2[0]:.4f} vs "
                f"{v3[0]:.4f}, Approach 2 - Approach 3 = {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] "
                f"over the same bootstrap draws; likely cause: {likely_cause(fit)}")
    return out


def likely_cause(fit: LawFit) -> str:
    """The plausible reasons for an Approach 2 / 3 gap that the fit itself shows."""
    causes = []
    off = [b for b in fit.budgets if not b.refused and not b.centred]
    wide = [b for b in fit.budgets if not b.refused
            and math.log10(max(b.params) / min(b.params)) > WIDE_DECADES]
    if off:
        causes.append(f"{len(off)} off-centre isoFLOP grid(s)")
    if wide:
        causes.append(f"{len(wide)} grid(s) wider than {WIDE_DECADES:g} decades of N")
    if off or wide:
        causes[-1] += f": parabola window bias ({BIAS_NOTE})"
    if fit.n_opt.scatter > SCATTER_NOTE:
        causes.append(f"the optima scatter {fit.n_opt.scatter:.2g}x beyond their intervals")
    if fit.approach3 is not None and fit.approach3.at_bound:
        causes.append(f"Approach 3 has {', '.join(fit.approach3.at_bound)} on a bound")
    return "; ".join(causes) or (f"the loss may not follow E + A/N^alpha + B/D^beta, or the "
                                 f"parabolas are biased even on centred grids ({BIAS_NOTE})")


def _misfit(sigma2: float, dof2: float, sigma3: float, dof3: float) -> list[str]:
    """A warning when the parabolas leave significantly larger residuals than the surface L(N, D)
    (F test at 99%): the isoFLOP curves are not parabolas over the sampled window, whose misfit
    Approach 2's intervals then carry as noise."""
    if not (sigma3 > 0 and _significantly_larger(sigma2, dof2, sigma3, dof3)):
        return []
    return [f"the isoFLOP parabolas leave residuals of {sigma2:.2%} relative sd where Approach 3's "
            f"surface leaves {sigma3:.2%}: over these windows the curves are not parabolas, so "
            f"Approach 2's vertices are biased ({BIAS_NOTE}); its intervals take the surface's "
            "noise and hold the vertices the surface implies as well as its own; narrow the "
            "grids or trust Approach 3"]


def _significantly_larger(sigma_a: float, dof_a: float, sigma_b: float, dof_b: float) -> bool:
    """Is residual sd `sigma_a` (dof_a degrees of freedom) significantly larger than `sigma_b`
    (dof_b)? An F test at 99%; False where either is known (infinite dof) or has no dof."""
    if not (math.isfinite(dof_a) and math.isfinite(dof_b) and dof_a > 0 and dof_b > 0):
        return False
    from scipy.special import fdtri  # the F quantile, without importing scipy.stats

    return sigma_a**2 > fdtri(dof_a, dof_b, 0.99) * sigma_b**2


def _surface_noise_is_better(sigma2: float, dof2: float, sigma3: float, dof3: float) -> bool:
    """True when the surface's residual sd estimates the same noise as the parabolas' with at
    least twice their degrees of freedom: it is not significantly larger, and the parabolas have
    few dof (4 sizes a budget leave 1 each, whose chi-square spread alone made intervals 1.5-3x
    wider than the error across seeds)."""
    return (math.isfinite(dof3) and sigma3 > 0 and dof3 >= 2 * dof2 > 0
            and not _significantly_larger(sigma3, dof3, sigma2, dof2))


def _window_bias(problem: _Problem, theta: np.ndarray, params: np.ndarray, tokens: np.ndarray,
                 members: Sequence[np.ndarray], options: FitOptions,
                 ) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per budget, per-draw shifts of log10 N_opt and log10 loss_opt: u_k x (the parabola's vertex
    on the fitted surface's own losses at the budget's runs - the surface's minimum along the
    budget's curve), u_k 0 or 1 with equal odds, shared by all budgets in draw k.

    The surface says how far the parabola's vertex sits from the curve's minimum over this window,
    but the surface may be wrong: half the draws take the correction and half do not, so Approach
    2's intervals hold its own estimate and the corrected one, each with its noise (a uniform
    share of the correction left the corrected end without its noise: coverage 0.35 on 4-decade
    grids). None for a budget whose surface parabola or minimum is not inside its sizes."""
    u = np.random.default_rng([options.seed, 3]).integers(0, 2, options.draws).astype(float)
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for m in members:
        x = np.log10(params[m])
        xc = x - x.mean()
        log_d = np.log10(tokens[m])
        losses = _surface_losses(problem, theta, x, log_d)
        c0, c1, c2 = np.polynomial.polynomial.polyfit(xc, losses, 2)
        slope, intercept = np.polyfit(x, log_d, 1)
        grid = np.linspace(x.min(), x.max(), 2001)
        curve = _surface_losses(problem, theta, grid, intercept + slope * grid)
        k = int(np.argmin(curve))
        if c2 <= 0 or not xc.min() <= -c1 / (2 * c2) <= xc.max() or k in (0, grid.size - 1):
            out.append(None)
            continue
        vertex = -c1 / (2 * c2) + x.mean()
        loss = c0 - c1**2 / (4 * c2)
        out.append((u * (vertex - grid[k]), u * math.log10(loss / curve[k])))
    return out


def _surface_losses(problem: _Problem, theta: np.ndarray, log_n: np.ndarray,
                    log_d: np.ndarray) -> np.ndarray:
    """The fitted surface E + A / N^alpha + B / D^beta at log10 N (parameters), log10 D (tokens)."""
    e, a, b, alpha, beta = (float(v) for v in problem.natural(theta[None, :])[0])
    return e + a / 10 ** (alpha * log_n) + b / 10 ** (beta * log_d)


def paired_differences(n_law: PowerLaw, d_law: PowerLaw,
                       approach3: ParametricFit) -> dict[str, tuple[float, float, float]] | None:
    """(Approach 2 - Approach 3, lo, hi) for a and b over the same bootstrap draws (draw k of
    both used the same random numbers), or None without draws."""
    if approach3.draws is None or n_law.draws is None or d_law.draws is None:
        return None
    alpha, beta = approach3.draws[:, 3], approach3.draws[:, 4]
    out = {}
    for name, law, three, point in (("a", n_law, beta / (alpha + beta), approach3.a),
                                    ("b", d_law, alpha / (alpha + beta), approach3.b)):
        diff = law.draws[:, 1] - three
        lo, hi = interval(diff)
        out[name] = (float(law.exponent - point), float(lo), float(hi))
    return out


def deduplicate(points: Sequence[RunPoint]) -> tuple[list[RunPoint], list[str]]:
    """The runs with exact repeats (same budget, size and loss) kept once, and a warning naming
    them: a copied row is not a second seed, and counting it twice would narrow the intervals."""
    seen: dict[tuple[float, float, float], int] = {}
    kept, repeats = [], []
    for i, p in enumerate(points):
        key = (p.group, p.params, p.loss)
        if key in seen:
            repeats.append((i, seen[key]))
        else:
            seen[key] = i
            kept.append(p)
    if not repeats:
        return list(points), []
    shown = ", ".join(f"{i + 1} (= {j + 1})" for i, j in repeats[:10])
    more = f" and {len(repeats) - 10} more" if len(repeats) > 10 else ""
    return kept, [f"{len(repeats)} run(s) repeat another run's budget, size and loss exactly and "
                  f"are counted once: runs {shown}{more} (counted from 1 in input order)"]


@dataclass(frozen=True)
class _Parabola:
    """One budget's least-squares parabola in centred log10 N: the projection `pinv` [3, n]
    (coefficients = pinv @ losses) and the fitted losses [n] its draws are drawn about, moved by
    `shift` (log10 N) and `lift` (loss) onto another parabola's minimum (see `about`)."""

    pinv: np.ndarray
    fitted: np.ndarray
    shift: float = 0.0
    lift: float = 0.0

    @classmethod
    def of(cls, params: np.ndarray, losses: np.ndarray) -> _Parabola:
        _, v = vandermonde(params)
        pinv = np.linalg.pinv(v)
        return cls(pinv, v @ (pinv @ losses))

    @property
    def dof(self) -> int:
        return max(self.fitted.size - 3, 0)

    def residual_ss(self, losses: np.ndarray) -> float:
        """Sum of squared relative (log) residuals."""
        return float((np.log(losses / np.maximum(self.fitted, 1e-300)) ** 2).sum())

    def about(self, smooth: np.ndarray, losses: np.ndarray, sigma: float) -> _Parabola:
        """Draws about `smooth` (the surface's losses at these runs) moved so that its parabola's
        minimum lands on this budget's own (from `losses`); self when either parabola has no
        minimum or the smooth curvature is within CURVATURE_T standard errors (relative loss
        noise `sigma`) of zero.

        The vertex of a parabola is a ratio of its coefficients: draws about a noisy curvature and
        an off-centre estimate spread by a noisy amount, draws about the smooth curve by what the
        estimator's own spread is. Where the curvature is barely resolved the vertex is not a
        smooth function of the noise (a draw's minimum often leaves the window, and the estimate
        exists only for the budgets whose minimum did not), and the own parabola's draws follow
        the estimator better."""
        own, smooth_coef = self.pinv @ losses, self.pinv @ smooth
        se = sigma * float(np.sqrt(((self.pinv[2] * smooth) ** 2).sum()))
        if own[2] <= 0 or smooth_coef[2] <= CURVATURE_T * se:
            return self
        (x_own, y_own), (x_smooth, y_smooth) = _minimum(own), _minimum(smooth_coef)
        return _Parabola(self.pinv, smooth, x_own - x_smooth, y_own - y_smooth)

    def draws(self, noise: np.ndarray) -> np.ndarray:
        """[k, 3] coefficients refitted on fitted * exp(noise), noise [k, n], each parabola moved
        right by `shift` and up by `lift`."""
        d0, d1, d2 = ((self.fitted * np.exp(noise, dtype=float)) @ self.pinv.T).T
        s = self.shift
        return np.stack([d0 - d1 * s + d2 * s * s + self.lift, d1 - 2 * d2 * s, d2], 1)


def _minimum(coef: np.ndarray) -> tuple[float, float]:
    """(vertex, value there) of c0 + c1 x + c2 x^2 with c2 > 0."""
    c0, c1, c2 = (float(c) for c in coef)
    return -c1 / (2 * c2), c0 - c1 * c1 / (4 * c2)


def _noise(
    budgets: Sequence[float], members: Sequence[np.ndarray], params: np.ndarray,
    losses: np.ndarray, parabolas: Sequence[_Parabola], options: FitOptions,
) -> tuple[float, float, list[str]]:
    """(relative loss sd, its degrees of freedom, notes) for Approach 2's parametric bootstrap.

    `noise_sigma` when given (known: infinite dof); else the relative residual sd pooled over the
    budgets' parabolas, with sum(n - 3) dof; with no residual dof at all, `seed_noise` (assumed).
    """
    if options.noise_sigma > 0:
        return options.noise_sigma, math.inf, []
    ss = sum(p.residual_ss(losses[m]) for m, p in zip(members, parabolas, strict=True))
    dof = sum(p.dof for p in parabolas)
    few = [i for i, m in enumerate(members) if np.unique(params[m]).size < FEW_SIZES]
    where = ", ".join(f"{budgets[i]:.3g}" for i in few)
    if dof:
        sigma = math.sqrt(ss / dof)
        notes = [] if not few else [
            f"budget(s) {where} FLOPs have fewer than {FEW_SIZES} sizes: their optimum's "
            f"uncertainty rests on the loss noise the parabolas leave, {sigma:.2%} relative sd "
            f"pooled over all budgets ({dof} degrees of freedom)"]
        return sigma, dof, notes
    if options.seed_noise == 0:
        return 0.0, math.inf, []
    return options.seed_noise, math.inf, [
        f"no budget has more than 3 runs, so the loss noise cannot be estimated from the "
        f"parabolas' residuals: the bootstrap assumes a relative sd of {options.seed_noise:.2%} "
        "(FitOptions.seed_noise)"]


def _fid_draws(members: Sequence[np.ndarray], params: np.ndarray, fids: np.ndarray,
               options: FitOptions) -> list[np.ndarray | None]:
    """Per budget, [draws, 3] coefficient draws of the parabola of log10 FID in centred log10 N,
    from its residual sd pooled over budgets (Gaussian, exact for a linear fit); None for a
    budget with FID at fewer than 3 sizes."""
    usable, ss, dof = [], 0.0, 0
    for m in members:
        has = ~np.isnan(fids[m])
        if np.unique(params[m][has]).size < 3:
            usable.append(None)
            continue
        xc = np.log10(params[m]) - np.log10(params[m]).mean()
        v = np.stack([np.ones(has.sum()), xc[has], xc[has] ** 2], 1)
        y = np.log10(fids[m][has])
        coef, *_ = np.linalg.lstsq(v, y, rcond=None)
        ss += float(((y - v @ coef) ** 2).sum())
        dof += max(int(has.sum()) - 3, 0)
        usable.append((v, coef))
    sigma = math.sqrt(ss / dof) if dof else 0.0
    rng = np.random.default_rng([options.seed, 2])
    out: list[np.ndarray | None] = []
    for item in usable:
        if item is None:
            out.append(None)
            continue
        v, coef = item
        cov = sigma**2 * np.linalg.pinv(v.T @ v)
        out.append(coef + rng.multivariate_normal(np.zeros(3), cov, options.draws,
                                                  method="eigh"))
    return out
