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
from scaling.laws.isoflop import BudgetDraws, BudgetFit, fit_budget, residual_ss
from scaling.laws.parametric import fit_parametric
from scaling.laws.powerlaw import PowerLaw, fit_power_law, fit_saturating, weights_from_sd
from scaling.laws.result import FEW_SIZES, FitOptions, LawFit
from scaling.runs_table import RunPoint, group_by_budget

SCATTER_NOTE = 1.5  # widening of a law's interval worth a warning
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
    sigma, warnings = _noise(budgets, members, params, losses, options)
    draws = resample(members, params, losses, options.draws, rng, sigma)
    fits: list[BudgetFit] = []
    kept: list[tuple[BudgetFit, BudgetDraws]] = []
    for budget, m in zip(budgets, members, strict=True):
        fit, bd = fit_budget(budget, params[m], tokens[m], losses[m], fids[m], draws.counts[:, m],
                             draws.losses[:, m], rng, options.floor_spacing)
        fits.append(fit)
        if bd is not None:
            kept.append((fit, bd))
    warnings = [f.message for f in fits if f.message] + warnings
    if len(kept) < 2:
        if len(budgets) < 2:
            raise LawFitError(f"the runs hold 1 budget ({budgets[0]:.3g} FLOPs); a law needs at "
                              "least 2 budgets with an optimum")
        raise LawFitError(" ".join([
            f"only {len(kept)} of {len(budgets)} budgets have an optimum inside their sampled "
            "sizes; a law needs at least 2.", "; ".join(f.message for f in fits if f.refused)
        ]).strip())

    compute = np.array([f.compute for f, _ in kept])

    def law(value: str, log_draws: str) -> PowerLaw:
        y = np.log10([getattr(f, value) for f, _ in kept])
        return fit_power_law(compute, y, np.stack([getattr(d, log_draws) for _, d in kept], 1))

    n_law, d_law, loss_law = law("n_opt", "log_n"), law("d_opt", "log_d"), law("loss_opt",
                                                                              "log_loss")
    if len(kept) == 2:
        warnings.append("the laws rest on 2 budgets: a line through 2 points cannot check its "
                        "own form, so their intervals come from the two optima's intervals alone")
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
            elif saturating.at_bound:
                warnings.append(f"saturating loss: {', '.join(saturating.at_bound)} ended on its "
                                "bound (E at 0, alpha at an end of [0.001, 2]); no interval for "
                                "it, do not trust this form")

    approach3 = None
    if options.approach3:
        if params.size < 5:
            warnings.append(f"Approach 3 needs at least 5 runs, got {params.size}; not fitted")
        else:
            approach3 = fit_parametric(params, tokens, losses, draws.counts, draws.losses)
            warnings.extend(f"Approach 3: {note}" for note in approach3.notes)

    for name, x in (("N_opt", n_law), ("D_opt", d_law), ("loss", loss_law), ("FID", fid_law)):
        if x is not None and x.exponent_ci is None:
            warnings.append(f"the {name} law's interval cannot be estimated: some of its budgets' "
                            "bootstrap draws do not vary (see above)")
        elif x is not None and x.scatter > SCATTER_NOTE:
            cause = (f"{BIAS_NOTE}; compare Approach 3" if name in ("N_opt", "D_opt") else
                     "the optima may not follow a pure power law: an irreducible loss bends it; "
                     "see the saturating form (FitOptions.saturating)")
            warnings.append(f"the {name} optima scatter {x.scatter:.2g}x more about their line "
                            "than their own intervals allow; the law's interval is widened by "
                            f"that factor ({cause})")
    result = LawFit(
        n_opt=n_law, d_opt=d_law, loss=loss_law, fid=fid_law,
        compute_range=(float(compute.min()), float(compute.max())),
        budgets=tuple(fits), approach3=approach3, loss_saturating=saturating,
        convention=options.convention, warnings=tuple(warnings), options=options,
    )
    return replace(result, warnings=tuple(warnings + disagreements(result)))


def disagreements(fit: LawFit) -> list[str]:
    """A warning for each exponent on which Approaches 2 and 3 disagree beyond their intervals."""
    out = []
    agree = fit.agreement() or {}
    for name, what in (("a", "N_opt"), ("b", "D_opt")):
        if name in agree and not agree[name]["consistent"]:
            v2, v3 = agree[name]["approach2"], agree[name]["approach3"]
            out.append(
                f"Approaches 2 and 3 disagree on the {what} exponent {name}: {v2[0]:.4f} "
                f"[{v2[1]:.4f}, {v2[2]:.4f}] vs {v3[0]:.4f} [{v3[1]:.4f}, {v3[2]:.4f}]; {BIAS_NOTE}"
            )
    return out


def _noise(
    budgets: Sequence[float], members: Sequence[np.ndarray], params: np.ndarray,
    losses: np.ndarray, options: FitOptions,
) -> tuple[np.ndarray, list[str]]:
    """Relative noise sd per run for the bootstrap: `noise_sigma` everywhere, and on budgets with
    fewer than FEW_SIZES distinct sizes at least max(seed_noise, pooled parabola residual sd)."""
    sigma = np.full(params.size, options.noise_sigma)
    few = [i for i, m in enumerate(members) if np.unique(params[m]).size < FEW_SIZES]
    if not few or options.seed_noise == 0:
        return sigma, []
    ss, dof = (sum(v) for v in zip(*(residual_ss(params[m], losses[m]) for m in members),
                                   strict=True))
    pooled = float(np.sqrt(ss / dof)) if dof else 0.0
    added = max(options.seed_noise, pooled)
    for i in few:
        sigma[members[i]] = np.maximum(sigma[members[i]], added)
    where = ", ".join(f"{budgets[i]:.3g}" for i in few)
    residual = (f"the parabolas of budgets with more runs leave {pooled:.2%}" if dof
                else "no budget has more than 3 runs to estimate it from")
    return sigma, [f"budget(s) {where} FLOPs have fewer than {FEW_SIZES} sizes: resampling their "
                   "runs cannot estimate the optimum's uncertainty, so their bootstrap draws add "
                   f"loss noise of relative sd {added:.2%} (seed_noise {options.seed_noise:g}; "
                   f"{residual})"]
