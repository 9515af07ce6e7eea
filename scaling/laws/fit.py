"""`fit_laws`: runs of an isoFLOP study -> `LawFit` (Approach 2 laws, Approach 3 cross-check).

Steps: group runs by budget (`runs_table.group_by_budget`), draw the shared bootstrap resamples,
fit each budget's parabola (`isoflop.fit_budget`), keep the budgets with a real optimum, fit the
power laws through their optima (`powerlaw.fit_power_law`), optionally the saturating loss, then
the parametric surface on every run (`parametric.fit_parametric`) and compare the exponents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from scaling.laws.bootstrap import resample
from scaling.laws.isoflop import BudgetDraws, BudgetFit, fit_budget
from scaling.laws.parametric import fit_parametric
from scaling.laws.powerlaw import PowerLaw, fit_power_law, fit_saturating, weights_from_sd
from scaling.laws.result import FitOptions, LawFit
from scaling.runs_table import RunPoint, group_by_budget

BIAS_NOTE = "wide or off-centre isoFLOP grids bias Approach 2 (arXiv 2603.22339)"


class LawFitError(ValueError):
    """The runs cannot support a law (too few budgets with an optimum); the message says why."""


def fit_laws(points: Sequence[RunPoint], options: FitOptions | None = None) -> LawFit:
    """Fit the compute-optimal laws of a study from its runs (see the module docstring)."""
    options = options or FitOptions()
    groups = group_by_budget(points)
    budgets = list(groups)
    runs = [p for b in budgets for p in groups[b]]
    params = np.array([p.params for p in runs])
    tokens = np.array([p.tokens for p in runs])
    losses = np.array([p.loss for p in runs])
    fids = np.array([np.nan if p.fid is None else p.fid for p in runs])
    bounds = np.cumsum([0] + [len(groups[b]) for b in budgets])
    members = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(budgets))]

    rng = np.random.default_rng(options.seed)
    draws = resample(members, params, losses, options.draws, rng, options.noise_sigma)
    fits: list[BudgetFit] = []
    kept: list[tuple[BudgetFit, BudgetDraws]] = []
    for budget, m in zip(budgets, members, strict=True):
        fit, bd = fit_budget(budget, params[m], tokens[m], losses[m], fids[m], draws.counts[:, m],
                             draws.losses[:, m], rng, options.floor_spacing)
        fits.append(fit)
        if bd is not None:
            kept.append((fit, bd))
    warnings = [f.message for f in fits if f.message]
    if len(kept) < 2:
        raise LawFitError(
            f"only {len(kept)} of {len(budgets)} budgets have an optimum inside their sampled "
            "sizes; a law needs at least 2. " + "; ".join(f.message for f in fits if f.refused)
        )

    compute = np.array([f.compute for f, _ in kept])

    def law(value: str, log_draws: str) -> PowerLaw:
        y = np.log10([getattr(f, value) for f, _ in kept])
        return fit_power_law(compute, y, np.stack([getattr(d, log_draws) for _, d in kept], 1))

    n_law, d_law, loss_law = law("n_opt", "log_n"), law("d_opt", "log_d"), law("loss_opt",
                                                                              "log_loss")
    with_fid = [(f, d) for f, d in kept if d.log_fid is not None]
    fid_law = None
    if len(with_fid) >= 2:
        fid_law = fit_power_law(np.array([f.compute for f, _ in with_fid]),
                                np.log10([f.fid_opt for f, _ in with_fid]),
                                np.stack([d.log_fid for _, d in with_fid], 1))
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
                                        loss_draws, weights_from_sd(loss_draws.std(0)))
            if not np.isfinite(saturating.alpha):
                warnings.append("no saturating loss L = E + A C^-alpha with E >= 0 and A > 0 fits "
                                "the optima; not reported")
                saturating = None

    approach3 = None
    if options.approach3:
        if params.size < 5:
            warnings.append(f"Approach 3 needs at least 5 runs, got {params.size}; not fitted")
        else:
            approach3 = fit_parametric(params, tokens, losses, draws.counts, draws.losses)
            if approach3.at_bound:
                warnings.append(f"Approach 3: {', '.join(approach3.at_bound)} ended on its bound; "
                                "the parametric fit is not trustworthy")

    result = LawFit(
        n_opt=n_law, d_opt=d_law, loss=loss_law, fid=fid_law,
        compute_range=(float(compute.min()), float(compute.max())),
        budgets=tuple(fits), approach3=approach3, loss_saturating=saturating,
        convention=options.convention, warnings=tuple(warnings), options=options,
    )
    agree = result.agreement() or {}
    for name, what in (("a", "N_opt"), ("b", "D_opt")):
        if name in agree and not agree[name]["consistent"]:
            v2, v3 = agree[name]["approach2"], agree[name]["approach3"]
            warnings.append(
                f"Approaches 2 and 3 disagree on the {what} exponent {name}: {v2[0]:.4f} "
                f"[{v2[1]:.4f}, {v2[2]:.4f}] vs {v3[0]:.4f} [{v3[1]:.4f}, {v3[2]:.4f}]; {BIAS_NOTE}"
            )
    return replace(result, warnings=tuple(warnings))
