"""The study-wide half of the adaptive allocator (`search.allocator.Allocator`): once budgets
have parabolas, which (budget, size) most reduces the expected squared error of the spec's target
per FLOP (`refine`, under the criterion of `search.design`), and when the target is known well
enough to stop the study (`check_target`, decided on the study's own final fit, `final_law`).

C in FLOPs, N in parameters; sizes are catalogue indices (`search.catalogue.SizeCatalogue`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from scaling.laws.fit import LawFitError, fit_laws
from scaling.laws.powerlaw import PowerLaw
from scaling.runs_table import RunPoint
from search import design
from search.allocator_sizes import free_sizes
from search.allocator_state import Budget, flops_text, half_width, human, sizes_text
from search.design import (
    Z95,
    BudgetDesign,
    choose,
    shrink_curvatures,
    target_sd,
    target_weights,
)

if TYPE_CHECKING:
    from search.allocator import Allocator

MIN_OPTIMA_FOR_EXPONENT = 3
SCREEN = 1.5  # the final fit is run once the design's own interval is within this x the goal


def study_designs(alloc: Allocator, eligible: list[Budget]
                  ) -> tuple[list[BudgetDesign], list[Budget], list[np.ndarray]]:
    """The criterion's view of every budget with an optimum; `eligible` ones get
    candidates (free sizes within `design.window` of the centre)."""
    line = alloc.line_budgets()
    weights = dict(zip([b.compute for b in line], target_weights(
        np.log([b.compute for b in line]), alloc.a.target,
        None if alloc.a.target_budget is None else math.log(alloc.a.target_budget)),
        strict=True))
    with_fit = [(b, f) for b in line if (f := alloc.fit(b.compute)) is not None and f.inside]
    sigma = alloc.noise()
    shape = alloc.curve_shape()  # first: a refit of the shape resets the budgets' minima
    curvatures = shrink_curvatures([f for _, f in with_fit], sigma)
    # A budget's fitted vertex carries its own window's bias: the criterion's biases are
    # reckoned about the minimum that vertex implies, or lopsided windows look balanced.
    centres = centres_on_line([b.compute for b, _ in with_fit],
                              [alloc.minimum(b.compute) for b, _ in with_fit])
    designs, budgets, indices = [], [], []
    for (b, f), c2, centre in zip(with_fit, curvatures, centres, strict=True):
        x = np.log([float(p.params) for p in b.points.values() if p.state != "failed"])
        free = free_sizes(alloc.catalogue, b) if b in eligible else np.zeros(0, dtype=np.int64)
        # Within the window of the centre, or as far as the design already reaches on the
        # other side: a size that far out can only be balanced by its mirror image.
        reach = max(design.window(sigma), float(np.max(np.abs(x - centre))))
        free = free[np.abs(alloc.catalogue.log_n[free] - centre) <= reach]
        costs = np.array([alloc.candidate_cost(b.compute, int(i)) for i in free])
        if alloc.a.max_flops:  # what is left of the FLOPs cap
            keep = alloc.flops_issued + costs <= alloc.a.max_flops * (1 + 1e-9)
            free, costs = free[keep], costs[keep]
        designs.append(BudgetDesign(b.compute, weights[b.compute], x, centre, c2,
                                    sigma * f.loss_opt, alloc.catalogue.log_n[free], costs,
                                    shape))
        budgets.append(b)
        indices.append(free)
    return designs, budgets, indices


def centres_on_line(compute: list[float], vertices: list[float]) -> list[float]:
    """Where each budget's design is centred (ln N): on the least-squares line through the
    vertices once 3 budgets have one (a budget's own vertex from a few noisy runs moves more
    than the law does, and a window off-centre on the true minimum biases it), else on its
    own vertex."""
    if len(compute) < MIN_OPTIMA_FOR_EXPONENT:
        return list(vertices)
    c = np.log(compute)
    slope, intercept = np.polyfit(c, vertices, 1)
    return [float(intercept + slope * x) for x in c]


def refine(alloc: Allocator) -> bool:
    """A slot is free and nothing is queued: queue the size that most reduces the target's
    expected squared error per FLOP. True when something was queued."""
    def eligible(b: Budget) -> bool:
        fit = alloc.fit(b.compute)
        if fit is None or not fit.inside or b.queue:
            return False
        if len(b.points) >= (b.cap or alloc.a.max_trials_per_budget):
            return False
        if b.busy and not alloc.a.speculate:
            return False
        least = b.compute * (alloc.spec.trainer.cooldown_fraction if alloc.reuse else 1.0)
        if alloc.a.max_flops and alloc.flops_issued + least > alloc.a.max_flops * (1 + 1e-9):
            return False  # what is left of the FLOPs cap buys cheaper trials
        return not (b.busy and alloc.budget_done(b, fit))

    ready = [b for b in alloc.open_budgets() if eligible(b)]
    if not ready:
        return False
    designs, budgets, indices = study_designs(alloc, ready)
    choice = choose(designs)
    if choice is None:
        for b in ready:
            if not b.busy:
                alloc.close(b, "no unused ladder size near its minimum would narrow "
                               f"{alloc.target_text()}: done")
                alloc.record(b, "done", [], b.reason)
        return False
    b = budgets[choice.budget]
    fit = alloc.fit(b.compute)
    b.n_opt, b.interval = math.exp(fit.vertex), alloc.n_opt_interval(b, fit)
    sizes = alloc.propose(b, [int(indices[choice.budget][choice.candidate])])
    running = b.count("running")
    unit = "" if alloc.a.target == "a" else " (relative)"
    ahead = (f" ahead of {running} running trial{'s' * (running > 1)} (a slot is free)"
             if running else "")
    alloc.record(b, "refine", sizes, (
        f"minimum {human(b.n_opt)} inside [{human(math.exp(fit.lo))}, "
        f"{human(math.exp(fit.hi))}], interval +-{half_width(b.interval):.0%}: adding "
        f"{sizes_text(sizes)}{ahead}, the most reduction per FLOP of {alloc.target_text()}'s "
        f"expected error{unit} ({choice.sd_before:.3g} -> {choice.sd_after:.3g}) of "
        f"{choice.candidates} candidates"), running)
    return True


def check_target(alloc: Allocator) -> None:
    """Stop the study once the target is known well enough (see the module docstring)."""
    if alloc.stopped is not None:
        return
    if alloc.a.target == "a":
        tol = alloc.a.exponent_tolerance
    else:
        tol = alloc.tolerance
    if not tol:
        return
    optima = sum(alloc.has_optimum(c) for c in alloc.budgets)
    if optima < MIN_OPTIMA_FOR_EXPONENT or optima < len(alloc.line_budgets()):
        return
    designs, _, _ = study_designs(alloc, [])
    sd = target_sd(designs)
    goal = tol if alloc.a.target == "a" else math.log1p(tol)
    if Z95 * sd > SCREEN * goal:  # cheap screen; the stop is decided on the final fit
        return
    law = final_law(alloc)
    if law is None or law.exponent_ci is None:
        return
    if alloc.a.target == "a":
        lo, hi = law.exponent_ci
        if (hi - lo) / 2 <= tol:
            alloc.stop(f"N_opt exponent {law.exponent:.4f} [{lo:.4f}, {hi:.4f}] is within "
                       f"+-{tol:g} from {law.budgets} budgets")
        return
    c = alloc.a.target_budget
    interval = law.interval(c)
    if interval is None:
        return
    lo, hi = (float(v) for v in interval)
    if half_width((lo, hi)) <= tol:
        alloc.stop(f"N_opt at {flops_text(c)} FLOPs {human(float(law(c)))} "
                   f"[{human(lo)}, {human(hi)}] is within +-{tol:.0%} from {law.budgets} "
                   "budgets")


def final_law(alloc: Allocator) -> PowerLaw | None:
    """The N_opt law the study's final fit (`fit_laws`, the service's FitOptions) would give on
    the trials finished so far, points in the order the service reads them."""
    points = sorted(((c, p) for c, p in alloc.finished_points()), key=lambda x: (x[0], x[1].key))
    try:
        fit = fit_laws([RunPoint(compute=c, params=p.params, loss=p.loss,
                                 tokens=c / (6 * p.params), budget=c, trial=p.key)
                        for c, p in points],
                       alloc.spec.fit_options())
    except (LawFitError, ValueError):
        return None
    return fit.n_opt
