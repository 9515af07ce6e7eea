"""The adaptive allocator's decisions: which model size to train next at which budget.

Pure logic (no Ray, no MLflow): the study's `AllocatorProposer` (search/study/proposers.py), `plan`
(search/plan.py) and `refine` all drive this one class, so a plan and a run decide alike.

Per budget (C in FLOPs, N in parameters, sizes always ladder shapes, see scaling/ladder.py):
1. Open it with `initial_sizes` sizes spaced x`spacing` in N around a centre: the power law
   through the optima found so far once two budgets have one, else the prior N_opt(C).
2. When all its trials are back, refit its parabola in ln N (search/design.py) and
   - stop: its N_opt 95% interval is within +-tolerance and its window centred (target "a"), or
     its trial cap is reached;
   - extend: the minimum is at or beyond an edge (or the losses are not convex): add a size one
     step (x spacing) beyond that edge, two steps when the parabola points further;
   - otherwise it refines by the study-wide choice below.
3. Budgets open in order of compute (allocator.order) whenever a trial slot is free and nothing is
   queued, so every budget has a parabola before any is refined.
4. A free slot with nothing queued then trains the (budget, size) that most reduces the expected
   squared error of the spec's target per FLOP (`allocator.target`: the N_opt exponent a, or N_opt
   at `target_budget`), under the parabolas fitted so far, with a window-bias term and sizes kept
   near each vertex (search/design.py). Trials still running count in the design, so with
   `speculate` (default) a budget's next size is chosen while its last ones run; without it, a
   budget with trials out waits for them.
Never the same size twice at a budget. Study caps (`max_trials`, `max_flops` as the sum of trial
budgets) stop new trials. With target "a" and `exponent_tolerance`, the study stops once the N_opt
exponent's 95% interval is within +- that and 3 budgets have optima; with target "n_opt", once
N_opt(target_budget)'s 95% interval is within +-tolerance. Either interval is the study's final fit
(`fit_laws` with the service's FitOptions) on the trials finished so far, so the stop and the
logged laws agree. Every decision is a `Decision`, kept in order with the interval before it and,
once the trials it added are back, after it. The state is plain data (`get_state`/`set_state`) for
Tune's restore.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from scaling.laws.fit import LawFitError, fit_laws
from scaling.laws.powerlaw import PowerLaw
from scaling.laws.result import FitOptions
from scaling.runs_table import RunPoint
from search import design
from search.allocator_state import (  # noqa: F401  (re-exported)
    Budget,
    Decision,
    Point,
    flops_text,
    half_width,
    human,
    sizes_text,
)
from search.catalogue import (  # noqa: F401  (re-exported: the allocator's public names)
    MIN_STEPS,
    Prior,
    SizeCatalogue,
    heuristic_prior,
    resolve_prior,
)
from search.design import (
    Z95,
    BudgetDesign,
    Parabola,
    choose,
    fit_parabola,
    shrink_curvatures,
    target_sd,
    target_weights,
    vertex_terms,
)
from search.spec import StudySpec

FINISHED = "FINISHED"  # what `suggest` returns when the study has nothing left to run
MIN_OPTIMA_FOR_EXPONENT = 3
LAW_EXPONENT_RANGE = (0.25, 0.9)  # a law through 2 close budgets can point anywhere: clamp it
PRIOR_NOISE = 0.005  # relative loss sd assumed before residuals say more (seed spread, ~0.5%)
PRIOR_DOF = 4  # weight of that assumption, in residual degrees of freedom
SCREEN = 1.5  # the final fit is run once the design's own interval is within this x the goal


class Allocator:
    """Adaptive isoFLOP allocation over a study's budgets (see the module docstring)."""

    def __init__(self, spec: StudySpec, catalogue: SizeCatalogue, prior: Prior,
                 out: Callable[[str], None] | None = None):
        self.spec, self.catalogue, self.prior = spec, catalogue, prior
        self.a = spec.allocator
        self.out = out
        self.tolerance = self.a.tolerance
        order = sorted(spec.budgets, reverse=self.a.order == "descending")
        self.budgets = {float(c): Budget(float(c)) for c in order}
        self.decisions: list[Decision] = []
        self.trials_issued = 0
        self.flops_issued = 0.0
        self.stopped: str | None = None
        self._fits: dict[float, Parabola | None] = {}

    # -- Tune-facing ----------------------------------------------------------------------------
    def suggest(self) -> Point | str | None:
        """The next trial to start, None to wait for results, or FINISHED."""
        while True:
            for b in self._open():
                while b.queue and self.stopped is None:
                    if not self._affordable(b.compute):
                        break
                    p = b.points[b.queue.pop(0)]
                    p.state = "running"
                    self.trials_issued += 1
                    self.flops_issued += b.compute
                    return p
            if self.stopped is None:
                waiting = [b for b in self.budgets.values() if b.status == "waiting"]
                if waiting:
                    self._start(waiting[0])
                    continue
                if self._refine():
                    continue
            if any(p.state == "running" for b in self.budgets.values()
                   for p in b.points.values()):
                return None
            for b in self._open():  # nothing left to add, or stopped: close what is open
                self._close(b, f"study stopped ({self.stopped})" if self.stopped else
                            "no size left that would narrow the target: done")
                self._record(b, "done", [], b.reason)
            return FINISHED

    def complete(self, key: str, loss: float | None) -> None:
        """A trial came back: its loss, or None when it failed or diverged."""
        b, p = self._find(key)
        if p.state in ("finished", "failed"):
            return  # a duplicate report (e.g. after a restore): already counted
        ok = loss is not None and math.isfinite(loss) and loss > 0
        p.state, p.loss = ("finished", float(loss)) if ok else ("failed", None)
        self._fits.pop(b.compute, None)
        if b.status == "open" and not b.busy:
            self._decide(b)
        self._check_target()

    def trial_of(self, key: str) -> tuple[float, Point]:
        b, p = self._find(key)
        return b.compute, p

    # -- refine: seed a finished study and reopen chosen budgets -------------------------------
    def seed(self, results: list[tuple[float, int, float | None]]) -> None:
        """Known results (budget FLOPs, catalogue index, loss or None) of an earlier run."""
        for budget, index, loss in results:
            b = self.budgets[float(budget)]
            key = self._key(budget, index)
            ok = loss is not None and math.isfinite(loss)
            b.points[key] = Point(key, index, int(self.catalogue.params[index]),
                                  "finished" if ok else "failed", loss if ok else None)
            b.status = "done"
            b.centre = b.centre or float(self.catalogue.log_n[index])
        self._fits.clear()

    def reopen(self, budgets: list[float], tolerance: float | None = None) -> None:
        """Refine these budgets (all when empty) to `tolerance`, each with room for
        max_trials_per_budget more trials; the others stay as they are."""
        if tolerance is not None:
            self.tolerance = tolerance
        chosen = [float(c) for c in budgets] or list(self.budgets)
        for c in self.budgets:
            b = self.budgets[c]
            if c in chosen:
                b.status = "open"
                # A refined budget may add up to max_trials_per_budget trials to those it has.
                b.cap = len(b.points) + self.a.max_trials_per_budget
                if not b.points:
                    self._start(b)
                else:
                    self._decide(b)
            elif b.status == "waiting":
                b.status, b.reason = "skipped", "not chosen for refinement"

    # -- state ------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {
            "budgets": [{**asdict(b), "points": [asdict(p) for p in b.points.values()]}
                        for b in self.budgets.values()],
            "decisions": [asdict(d) for d in self.decisions],
            "trials_issued": self.trials_issued, "flops_issued": self.flops_issued,
            "stopped": self.stopped, "tolerance": self.tolerance,
        }

    def set_state(self, state: dict) -> None:
        self.budgets = {}
        for raw in state["budgets"]:
            raw = dict(raw)
            points = {p["key"]: Point(**p) for p in raw.pop("points")}
            interval = raw.pop("interval")
            b = Budget(**raw, points=points)
            b.interval = None if interval is None else tuple(interval)
            self.budgets[b.compute] = b
        self.decisions = [Decision(**d) for d in state["decisions"]]
        self.trials_issued = state["trials_issued"]
        self.flops_issued = state["flops_issued"]
        self.stopped = state["stopped"]
        self.tolerance = state["tolerance"]
        self._fits.clear()

    # -- queries ----------------------------------------------------------------------------------
    def finished_points(self) -> list[tuple[float, Point]]:
        return [(b.compute, p) for b in self.budgets.values() for p in b.points.values()
                if p.state == "finished"]

    def law(self) -> PowerLaw | None:
        """The N_opt power law through the budgets with an optimum so far: the least-squares line
        of log N_opt on log C (no intervals; `final_law` has the service's)."""
        kept = [(c, f.vertex) for c in self.budgets if (f := self._fit(c)) is not None and f.inside]
        if len(kept) < 2:
            return None
        slope, intercept = np.polyfit(np.log([c for c, _ in kept]), [x for _, x in kept], 1)
        return PowerLaw(float(math.exp(intercept)), float(slope), budgets=len(kept))

    def noise(self) -> float:
        """Relative sd of a loss: the parabolas' residuals pooled with PRIOR_DOF degrees of
        freedom of the assumed seed spread (the simulated trainer's noise when simulated)."""
        s0 = self.spec.trainer.noise if self.spec.simulated else PRIOR_NOISE
        ss, dof = PRIOR_DOF * max(s0, 1e-4) ** 2, PRIOR_DOF
        for c in self.budgets:
            f = self._fit(c)
            if f is not None and f.dof > 0:
                ss, dof = ss + f.residual, dof + f.dof
        return math.sqrt(ss / dof)

    def target_text(self) -> str:
        if self.a.target == "a":
            return "the N_opt exponent a"
        return f"N_opt at {flops_text(self.a.target_budget)} FLOPs"

    # -- internals --------------------------------------------------------------------------------
    def _open(self) -> list[Budget]:
        return [b for b in self.budgets.values() if b.status == "open"]

    def _find(self, key: str) -> tuple[Budget, Point]:
        for b in self.budgets.values():
            if key in b.points:
                return b, b.points[key]
        raise KeyError(f"trial {key} was not proposed by this allocator")

    def _key(self, budget: float, index: int) -> str:
        s = self.catalogue.shapes[index]
        return f"C{budget:.4g}-d{s.depth}w{s.width}h{s.heads}".replace("+", "")

    def _affordable(self, budget: float) -> bool:
        a = self.a
        if a.max_trials and self.trials_issued >= a.max_trials:
            self._stop(f"trial cap {a.max_trials} reached")
            return False
        if a.max_flops and self.flops_issued + budget > a.max_flops * (1 + 1e-9):
            self._stop(f"FLOPs cap {a.max_flops:.3g} reached ({self.flops_issued:.3g} FLOPs "
                       "issued)")
            return False
        return True

    def _record(self, b: Budget | None, action: str, sizes: list[int], reason: str,
                running: int = 0) -> None:
        before = None if b is None or b.interval is None else list(b.interval)
        d = Decision(time.time(), None if b is None else b.compute, action, sizes, reason, before,
                     running=running)
        self.decisions.append(d)
        if b is not None:
            if b.last_decision is not None and self.decisions[b.last_decision].action != "done":
                self.decisions[b.last_decision].interval_after = before
            b.last_decision = len(self.decisions) - 1
        if self.out is not None:
            self.out(d.line())

    def _stop(self, reason: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        skipped = [b for b in self.budgets.values() if b.status == "waiting"]
        for b in skipped:
            b.status, b.reason = "skipped", reason
        for b in self._open():
            b.queue.clear()
            for key in [k for k, p in b.points.items() if p.state == "queued"]:
                del b.points[key]
            if not b.busy:
                self._close(b, f"study stopped ({reason})")
        tail = (f"; skipping budgets {', '.join(flops_text(b.compute) for b in skipped)}"
                if skipped else "")
        self._record(None, "stop", [], f"stopping: {reason}{tail}")

    def _close(self, b: Budget, reason: str) -> None:
        b.status, b.reason = "done", reason
        b.queue.clear()

    def _propose(self, b: Budget, indices: list[int]) -> list[int]:
        sizes = []
        for i in indices:
            key = self._key(b.compute, i)
            if key in b.points:
                continue
            b.points[key] = Point(key, int(i), int(self.catalogue.params[i]))
            b.queue.append(key)
            sizes.append(int(self.catalogue.params[i]))
        return sizes

    def _free(self, b: Budget) -> np.ndarray:
        """Catalogue indices usable at this budget and not yet tried there."""
        used = {p.index for p in b.points.values()}
        return np.array([i for i in self.catalogue.usable(b.compute) if i not in used],
                        dtype=np.int64)

    def _nearest_free(self, b: Budget, target: float, side: int = 0,
                      pivot: float | None = None, taken: set[int] | None = None) -> int | None:
        """The free size nearest log N = `target`; side +1 / -1 keeps it above / below `pivot`."""
        free = [i for i in self._free(b) if not taken or i not in taken]
        if side:
            free = [i for i in free if side * (self.catalogue.log_n[i] - pivot) > 1e-9]
        if not free:
            return None
        return int(min(free, key=lambda i: abs(self.catalogue.log_n[i] - target)))

    def _centre(self, b: Budget) -> tuple[float, str]:
        """Where a budget opens (log N) and why: the law fitted so far, else the prior."""
        law = self.law()
        if law is not None:
            e = float(np.clip(law.exponent, *LAW_EXPONENT_RANGE))
            k = law.coefficient if e == law.exponent else None
            if k is None:  # clamped: keep the law's value at its geometric-mean budget
                ref = math.exp(np.mean([math.log(c) for c in self.budgets
                                        if self._has_optimum(c)]))
                k = law(ref) / ref**e
            n = k * b.compute**e
            clamp = "" if e == law.exponent else f", exponent clamped from {law.exponent:.3f}"
            return math.log(n), (f"around N_opt {human(n)} from the law fitted so far (N_opt = "
                                 f"{k:.3g} C^{e:.3f} through {law.budgets} budgets{clamp})")
        n = self.prior(b.compute)
        return math.log(n), f"around the prior N_opt {human(n)} ({self.prior.source})"

    def _has_optimum(self, c: float) -> bool:
        f = self._fit(c)
        return f is not None and f.inside

    def _start(self, b: Budget) -> None:
        b.status = "open"
        centre, why = self._centre(b)
        b.centre = centre
        k, step = self.a.initial_sizes, math.log(self.a.spacing)
        taken: set[int] = set()
        for j in range(k):
            i = self._nearest_free(b, centre + step * (j - (k - 1) / 2), taken=taken)
            if i is not None:
                taken.add(i)
        if len(taken) < 3:
            self._close(b, f"only {len(taken)} ladder sizes can train {flops_text(b.compute)} "
                           f"FLOPs for {MIN_STEPS} steps or more; an isoFLOP parabola needs 3")
            b.status = "skipped"
            self._record(b, "skip", [], b.reason)
            return
        sizes = self._propose(b, sorted(taken, key=lambda i: self.catalogue.params[i]))
        self._record(b, "open", sizes, f"starting with {sizes_text(sizes)} {why}")

    def _fit(self, c: float) -> Parabola | None:
        """This budget's parabola in ln N over its finished trials, cached until they change."""
        if c not in self._fits:
            pts = [p for p in self.budgets[c].points.values() if p.state == "finished"]
            self._fits[c] = fit_parabola(np.log([float(p.params) for p in pts]),
                                         np.array([p.loss for p in pts])) if pts else None
        return self._fits[c]

    def _interval(self, b: Budget, fit: Parabola, curvature: float | None = None
                  ) -> tuple[float, float]:
        """N_opt's 95% interval (parameters) from the finished trials' design (delta method)."""
        x = np.log([float(p.params) for p in b.points.values() if p.state == "finished"])
        var = vertex_terms(x - fit.vertex)[0][0]
        c2 = curvature or fit.curvature
        sd = math.sqrt(var) * self.noise() * fit.loss_opt / (2 * c2)
        sd = min(sd, 10.0)  # an interval past e^+-20 says only "unknown"
        return math.exp(fit.vertex - Z95 * sd), math.exp(fit.vertex + Z95 * sd)

    def _budget_done(self, b: Budget, fit: Parabola | None) -> bool:
        """Target "a": the budget's N_opt is within +-tolerance on a centred window."""
        if self.a.target != "a" or fit is None or not fit.inside or b.interval is None:
            return False
        return half_width(b.interval) <= self.tolerance and fit.centred

    def _decide(self, b: Budget) -> None:
        """A budget's trials are all back: close it, extend it, or leave it to `_refine`."""
        fit = self._fit(b.compute)
        tried = len(b.points)
        if fit is not None and fit.inside:
            b.n_opt, b.interval = math.exp(fit.vertex), self._interval(b, fit)
        if b.last_decision is not None and b.interval is not None:
            last = self.decisions[b.last_decision]
            if last.action != "done":  # every size it added is back
                last.interval_after = list(b.interval)
        if self.stopped is not None:
            self._close(b, f"study stopped ({self.stopped})")
            return
        cap = b.cap or self.a.max_trials_per_budget
        h = half_width(b.interval) if fit is not None and fit.inside else None
        if self._budget_done(b, fit):
            self._close(b, f"N_opt {human(b.n_opt)}, interval +-{h:.0%} <= {self.tolerance:.0%} "
                           f"after {tried} trials: done")
            self._record(b, "done", [], b.reason)
            return
        if tried >= cap:
            state = (f"N_opt {human(b.n_opt)} +-{h:.0%}" if h is not None
                     else "no optimum inside the sampled sizes")
            self._close(b, f"trial cap {cap} reached ({state}): done")
            self._record(b, "done", [], b.reason)
            return
        if fit is not None and fit.inside:
            return  # refined by the study-wide choice (`_refine`)
        action, indices, reason = self._bracket(b, fit)
        sizes = self._propose(b, indices[: cap - tried])
        if not sizes:
            self._close(b, f"{reason}, but no unused ladder size is left there: done")
            self._record(b, "done", [], b.reason)
            return
        self._record(b, action, sizes, f"{reason}: adding {sizes_text(sizes)}")

    def _bracket(self, b: Budget, fit: Parabola | None) -> tuple[str, list[int], str]:
        """Sizes that bring a budget's minimum inside its window (or replace failed trials)."""
        step = math.log(self.a.spacing)
        finished = [p for p in b.points.values() if p.state == "finished"]
        if fit is None:  # fewer than 3 distinct sizes came back (failures)
            need = 3 - len({p.params for p in finished})
            taken: set[int] = set()
            for _ in range(need):
                i = self._nearest_free(b, b.centre, taken=taken)
                if i is not None:
                    taken.add(i)
            return "retry", sorted(taken), (f"only {len(finished)} of {len(b.points)} trials "
                                            "finished, a parabola needs 3 sizes")
        lo, hi = fit.lo, fit.hi
        window = f"[{human(math.exp(lo))}, {human(math.exp(hi))}]"
        if fit.curvature > 0:
            up = fit.vertex > hi
            beyond = (fit.vertex - hi) if up else (lo - fit.vertex)
            dist = step * (2 if beyond > 1.5 * step else 1)
            target = hi + dist if up else lo - dist
            why = (f"minimum beyond the {'upper' if up else 'lower'} edge of {window} "
                   f"(parabola's minimum at ~{human(math.exp(fit.vertex))})")
        else:
            best = math.log(min(finished, key=lambda p: p.loss).params)
            if best not in (lo, hi):
                below = self._nearest_free(b, lo - step, -1, lo)
                above = self._nearest_free(b, hi + step, +1, hi)
                return "extend", [i for i in (below, above) if i is not None], (
                    f"no minimum in {window} (losses not convex in log N): widening")
            up = best == hi
            target = hi + step if up else lo - step
            why = (f"no minimum in {window} (losses not convex in log N), lowest loss at the "
                   f"{'upper' if up else 'lower'} edge")
        i = self._nearest_free(b, target, 1 if target > hi else -1, hi if target > hi else lo)
        return "extend", [] if i is None else [i], why

    def _line(self) -> list[Budget]:
        """The budgets the N_opt law will rest on: all but the skipped."""
        return [b for b in self.budgets.values() if b.status != "skipped"]

    def _designs(self, eligible: list[Budget]) -> tuple[list[BudgetDesign], list[Budget],
                                                         list[np.ndarray]]:
        """The criterion's view of every budget with an optimum; `eligible` ones get
        candidates (free sizes within `design.window` of the centre)."""
        line = self._line()
        weights = dict(zip([b.compute for b in line], target_weights(
            np.log([b.compute for b in line]), self.a.target,
            None if self.a.target_budget is None else math.log(self.a.target_budget)),
            strict=True))
        with_fit = [(b, f) for b in line if (f := self._fit(b.compute)) is not None and f.inside]
        sigma = self.noise()
        curvatures = shrink_curvatures([f for _, f in with_fit], sigma)
        centres = self._centres([b.compute for b, _ in with_fit], [f.vertex for _, f in with_fit])
        designs, budgets, indices = [], [], []
        for (b, f), c2, centre in zip(with_fit, curvatures, centres, strict=True):
            x = np.log([float(p.params) for p in b.points.values() if p.state != "failed"])
            free = self._free(b) if b in eligible else np.zeros(0, dtype=np.int64)
            # Within the window of the centre, or as far as the design already reaches on the
            # other side: a size that far out can only be balanced by its mirror image.
            reach = max(design.window(sigma), float(np.max(np.abs(x - centre))))
            free = free[np.abs(self.catalogue.log_n[free] - centre) <= reach]
            designs.append(BudgetDesign(b.compute, weights[b.compute], x, centre, c2,
                                        sigma * f.loss_opt, self.catalogue.log_n[free]))
            budgets.append(b)
            indices.append(free)
        return designs, budgets, indices

    @staticmethod
    def _centres(compute: list[float], vertices: list[float]) -> list[float]:
        """Where each budget's design is centred (ln N): on the least-squares line through the
        vertices once 3 budgets have one (a budget's own vertex from a few noisy runs moves more
        than the law does, and a window off-centre on the true minimum biases it), else on its
        own vertex."""
        if len(compute) < MIN_OPTIMA_FOR_EXPONENT:
            return list(vertices)
        c = np.log(compute)
        slope, intercept = np.polyfit(c, vertices, 1)
        return [float(intercept + slope * x) for x in c]

    def _refine(self) -> bool:
        """A slot is free and nothing is queued: queue the size that most reduces the target's
        expected squared error per FLOP. True when something was queued."""
        def eligible(b: Budget) -> bool:
            fit = self._fit(b.compute)
            if fit is None or not fit.inside or b.queue:
                return False
            if len(b.points) >= (b.cap or self.a.max_trials_per_budget):
                return False
            if b.busy and not self.a.speculate:
                return False
            if self.a.max_flops and self.flops_issued + b.compute > self.a.max_flops * (1 + 1e-9):
                return False  # what is left of the FLOPs cap buys cheaper budgets' trials
            return not (b.busy and self._budget_done(b, fit))

        ready = [b for b in self._open() if eligible(b)]
        if not ready:
            return False
        designs, budgets, indices = self._designs(ready)
        choice = choose(designs)
        if choice is None:
            for b in ready:
                if not b.busy:
                    self._close(b, "no unused ladder size near its minimum would narrow "
                                   f"{self.target_text()}: done")
                    self._record(b, "done", [], b.reason)
            return False
        b = budgets[choice.budget]
        fit = self._fit(b.compute)
        b.n_opt, b.interval = math.exp(fit.vertex), self._interval(b, fit)
        sizes = self._propose(b, [int(indices[choice.budget][choice.candidate])])
        running = b.count("running")
        unit = "" if self.a.target == "a" else " (relative)"
        ahead = (f" ahead of {running} running trial{'s' * (running > 1)} (a slot is free)"
                 if running else "")
        self._record(b, "refine", sizes, (
            f"minimum {human(b.n_opt)} inside [{human(math.exp(fit.lo))}, "
            f"{human(math.exp(fit.hi))}], interval +-{half_width(b.interval):.0%}: adding "
            f"{sizes_text(sizes)}{ahead}, the most reduction per FLOP of {self.target_text()}'s "
            f"expected error{unit} ({choice.sd_before:.3g} -> {choice.sd_after:.3g}) of "
            f"{choice.candidates} candidates"), running)
        return True

    def _check_target(self) -> None:
        """Stop the study once the target is known well enough (see the module docstring)."""
        if self.stopped is not None:
            return
        if self.a.target == "a":
            tol = self.a.exponent_tolerance
        else:
            tol = self.tolerance
        if not tol:
            return
        optima = sum(self._has_optimum(c) for c in self.budgets)
        if optima < MIN_OPTIMA_FOR_EXPONENT or optima < len(self._line()):
            return
        designs, _, _ = self._designs([])
        sd = target_sd(designs)
        goal = tol if self.a.target == "a" else math.log1p(tol)
        if Z95 * sd > SCREEN * goal:  # cheap screen; the stop is decided on the final fit
            return
        law = self.final_law()
        if law is None or law.exponent_ci is None:
            return
        if self.a.target == "a":
            lo, hi = law.exponent_ci
            if (hi - lo) / 2 <= tol:
                self._stop(f"N_opt exponent {law.exponent:.4f} [{lo:.4f}, {hi:.4f}] is within "
                           f"+-{tol:g} from {law.budgets} budgets")
            return
        c = self.a.target_budget
        interval = law.interval(c)
        if interval is None:
            return
        lo, hi = (float(v) for v in interval)
        if half_width((lo, hi)) <= tol:
            self._stop(f"N_opt at {flops_text(c)} FLOPs {human(float(law(c)))} "
                       f"[{human(lo)}, {human(hi)}] is within +-{tol:.0%} from {law.budgets} "
                       "budgets")

    def final_law(self) -> PowerLaw | None:
        """The N_opt law the study's final fit (`fit_laws`, the service's FitOptions) would give on
        the trials finished so far, points in the order the service reads them."""
        points = sorted(((c, p) for c, p in self.finished_points()), key=lambda x: (x[0], x[1].key))
        try:
            fit = fit_laws([RunPoint(compute=c, params=p.params, loss=p.loss,
                                     tokens=c / (6 * p.params), budget=c, trial=p.key)
                            for c, p in points],
                           FitOptions(convention=self.spec.convention, seed=self.spec.seed,
                                      approach3=False))
        except (LawFitError, ValueError):
            return None
        return fit.n_opt
