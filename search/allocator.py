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
   at `target_budget`), under the parabolas fitted so far, with a window-bias term reckoned on
   the isoFLOP curve's shape as the trials so far show it (`curve_shape`) and sizes kept near
   each vertex (search/design.py). Trials still running count in the design, so with
   `speculate` (default) a budget's next size is chosen while its last ones run; without it, a
   budget with trials out waits for them.
The sizes of steps 1-2 are chosen in search/allocator_sizes.py; the study-wide choice of step 4
and the stop below in search/allocator_refine.py.
Never the same size twice at a budget. Study caps (`max_trials`, `max_flops` as the FLOPs the
trials train) stop new trials. With target "a" and `exponent_tolerance`, the study stops once the
N_opt exponent's 95% interval is within +- that and 3 budgets have optima; with target "n_opt", once
N_opt(target_budget)'s 95% interval is within +-tolerance. Either interval is the study's final fit
(`fit_laws` with the service's FitOptions) on the trials finished so far, so the stop and the
logged laws agree. Every decision is a `Decision`, kept in order with the interval before it and,
once the trials it added are back, after it. The state is plain data (`get_state`/`set_state`) for
Tune's restore.

With run reuse (`trainer.reuse = "cooldown"`) a size already issued at a larger budget is its
trunk: the same size at a smaller budget branches off it, restoring its checkpoint at the
branch's cooldown start and training only the cooldown, so it costs that share of its budget's
FLOPs. Step 4 weighs each candidate by what it would train, so a size that has a trunk buys about
1 / cooldown_fraction as much error reduction per FLOP. A branch is served once its trunk has
reported the branch step or ended (a branch whose trunk failed trains from scratch); every trunk
keeps a checkpoint at each smaller budget's branch point (`search.branches.trunk_points`), since
its branches are chosen while it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from scaling.laws.powerlaw import PowerLaw
from scaling.laws.varpro import fit_exponents
from search.allocator_refine import check_target, refine
from search.allocator_sizes import bracket, opening_sizes
from search.allocator_state import (  # noqa: F401  (re-exported)
    Budget,
    Decision,
    Point,
    flops_text,
    half_width,
    human,
    sizes_text,
)
from search.branches import branch_step, trunk_points
from search.catalogue import (  # noqa: F401  (re-exported: the allocator's public names)
    MIN_STEPS,
    Prior,
    SizeCatalogue,
    heuristic_prior,
    resolve_prior,
)
from search.design import (
    SHAPE,
    Z95,
    Parabola,
    debiased_vertex,
    fit_parabola,
    vertex_terms,
)
from search.grid import TrialSpec, plan, trial_config
from search.proposal import FINISHED  # what `suggest` returns when nothing is left to run
from search.records import BRANCH_OF, BRANCH_POINTS, BRANCH_STEP
from search.spec import StudySpec

LAW_EXPONENT_RANGE = (0.25, 0.9)  # a law through 2 close budgets can point anywhere: clamp it
PRIOR_NOISE = 0.005  # relative loss sd assumed before residuals say more (seed spread, ~0.5%)
PRIOR_DOF = 4  # weight of that assumption, in residual degrees of freedom
SHAPE_RUNS = 20  # finished trials before the study's own isoFLOP curve shape replaces the assumed
SHAPE_GROWTH = 1.5  # ... refitted each time the finished trials have grown by this factor
SHAPE_RANGE = (0.1, 1.0)  # exponents kept within this (a fit through a few budgets can run off)


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
        self._minima: dict[float, float] = {}  # budget -> its debiased vertex (`minimum`)
        self.shape: tuple[int, float, float] | None = None  # (runs, alpha, beta): `curve_shape`
        self.reuse = spec.trainer.reuse == "cooldown"
        self.reached: dict[str, int] = {}  # trial key -> last step it reported (run reuse)

    # -- Tune-facing ----------------------------------------------------------------------------
    def suggest(self) -> Point | str | None:
        """The next trial to start, None to wait for results, or FINISHED."""
        while True:
            for b in self.open_budgets():
                while self.stopped is None and (p := self._next_ready(b)) is not None:
                    cost = self.cost(b.compute, p)
                    if not self._affordable(cost):
                        break
                    b.queue.remove(p.key)
                    p.state = "running"
                    self.trials_issued += 1
                    self.flops_issued += cost
                    return p
            if self.stopped is None:
                waiting = [b for b in self.budgets.values() if b.status == "waiting"]
                if waiting:
                    self._start(waiting[0])
                    continue
                if refine(self):
                    continue
            if any(p.state == "running" for b in self.budgets.values()
                   for p in b.points.values()):
                return None
            for b in self.open_budgets():  # nothing left to add, or stopped: close what is open
                self.close(b, f"study stopped ({self.stopped})" if self.stopped else
                            "no size left that would narrow the target: done")
                self.record(b, "done", [], b.reason)
            return FINISHED

    def complete(self, key: str, loss: float | None) -> None:
        """A trial came back: its loss, or None when it failed or diverged."""
        b, p = self._find(key)
        if p.state in ("finished", "failed"):
            return  # a duplicate report (e.g. after a restore): already counted
        ok = loss is not None and math.isfinite(loss) and loss > 0
        p.state, p.loss = ("finished", float(loss)) if ok else ("failed", None)
        self._forget(b.compute)
        if b.status == "open" and not b.busy:
            self._decide(b)
        check_target(self)

    def config(self, p: Point) -> dict:
        """The trial config of an issued point (`search.grid.trial_config`), with its branch
        fields under run reuse: a branch's trunk and step, or the steps a trunk keeps."""
        compute, _ = self.trial_of(p.key)
        trial = self._trial(compute, p.index)
        config = trial_config(self.spec, self.catalogue.template, trial)
        if p.trunk is not None:
            config.update({BRANCH_OF: p.trunk, BRANCH_STEP: p.branch_step})
        elif self.reuse and (points := trunk_points(self.spec, self.catalogue.template, trial)):
            config[BRANCH_POINTS] = points
        return config

    def progress(self, key: str, step: int) -> None:
        """A running trial reported optimizer step `step` (its branches wait for it)."""
        self.reached[key] = max(self.reached.get(key, 0), int(step))

    def trial_of(self, key: str) -> tuple[float, Point]:
        b, p = self._find(key)
        return b.compute, p

    # -- run reuse --------------------------------------------------------------------------------
    def trunk_for(self, compute: float, index: int) -> tuple[str, int] | None:
        """With run reuse: (trunk key, branch step) for size `index` at budget `compute`, the same
        size issued and not failed at a larger budget (itself no branch): a finished one before a
        running one before a queued one, then the largest budget; None without one, or when the
        schedules do not allow a branch."""
        if not self.reuse:
            return None
        order = {"finished": 2, "running": 1, "queued": 0}
        found = [(order[p.state], c, p) for c, b in self.budgets.items() if c > compute
                 and (p := b.points.get(self._key(c, index))) is not None
                 and p.trunk is None and p.state in order and not self._gone(p)]
        if not found:
            return None
        _, c, trunk = max(found, key=lambda f: f[:2])
        step = branch_step(self.spec, self.catalogue.template, self._trial(compute, index),
                           self._trial(c, index))
        return None if step is None else (trunk.key, step)

    def cost(self, compute: float, p: Point) -> float:
        """FLOPs point `p` of budget `compute` trains: its budget's, or a branch's cooldown share
        of them."""
        if p.trunk is None or not p.branch_step:
            return compute
        steps = plan(self.spec, self.catalogue.template, self._trial(compute, p.index)).steps
        return compute * (steps - p.branch_step) / steps

    def candidate_cost(self, compute: float, index: int) -> float:
        """FLOPs a new trial of size `index` at budget `compute` would train (see `cost`)."""
        found = self.trunk_for(compute, index)
        point = Point("", index, int(self.catalogue.params[index]))
        if found is not None:
            point.trunk, point.branch_step = found
        return self.cost(compute, point)

    def _trial(self, compute: float, index: int) -> TrialSpec:
        return TrialSpec(compute, self.catalogue.shapes[index], int(self.catalogue.params[index]))

    def _gone(self, p: Point) -> bool:
        """A queued trial that will never run: its budget closed, or the study stopped."""
        return p.state == "queued" and not any(p.key in b.queue for b in self.budgets.values())

    def _next_ready(self, b: Budget) -> Point | None:
        """The first queued trial of `b` that can start: any but a branch whose trunk has not yet
        reported its branch step (a branch whose trunk failed trains from scratch)."""
        for key in b.queue:
            p = b.points[key]
            if p.trunk is None:
                return p
            trunk = next((other.points[p.trunk] for other in self.budgets.values()
                          if p.trunk in other.points), None)
            if trunk is None or trunk.state == "failed" or self._gone(trunk):
                p.trunk = p.branch_step = None
                return p
            if trunk.state == "finished" or self.reached.get(trunk.key, 0) >= p.branch_step:
                return p
        return None

    def waiting_branches(self) -> list[tuple[str, int]]:
        """(trunk key, branch step) of every queued branch still waiting for its trunk."""
        return [(p.trunk, p.branch_step) for b in self.open_budgets() for key in b.queue
                if (p := b.points[key]).trunk is not None]

    # -- refine: seed a finished study and reopen chosen budgets -------------------------------
    def seed(self, results: list[tuple[float, int, float | None]]) -> None:
        """Known results (budget FLOPs, catalogue index, loss or None) of an earlier run; a size
        trained with several seeds (model.seeds_per_size) is one point at their mean loss."""
        losses: dict[str, list[float]] = {}
        for budget, index, loss in results:
            b = self.budgets[float(budget)]
            key = self._key(budget, index)
            if loss is not None and math.isfinite(loss):
                losses.setdefault(key, []).append(float(loss))
            mean = sum(losses[key]) / len(losses[key]) if key in losses else None
            b.points[key] = Point(key, index, int(self.catalogue.params[index]),
                                  "finished" if mean is not None else "failed", mean)
            b.status = "done"
            b.centre = b.centre or float(self.catalogue.log_n[index])
        self._forget()

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
            "stopped": self.stopped, "tolerance": self.tolerance, "reached": dict(self.reached),
            "shape": None if self.shape is None else list(self.shape),
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
        self.reached = dict(state.get("reached", {}))
        self.shape = None if state.get("shape") is None else tuple(state["shape"])
        self._forget()

    # -- queries ----------------------------------------------------------------------------------
    def finished_points(self) -> list[tuple[float, Point]]:
        return [(b.compute, p) for b in self.budgets.values() for p in b.points.values()
                if p.state == "finished"]

    def law(self) -> PowerLaw | None:
        """The N_opt power law through the budgets with an optimum so far: the least-squares line
        of log N_opt on log C (no intervals; `allocator_refine.final_law` has the service's)."""
        kept = [(c, f.vertex) for c in self.budgets if (f := self.fit(c)) is not None and f.inside]
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
            f = self.fit(c)
            if f is not None and f.dof > 0:
                ss, dof = ss + f.residual, dof + f.dof
        return math.sqrt(ss / dof)

    def target_text(self) -> str:
        if self.a.target == "a":
            return "the N_opt exponent a"
        return f"N_opt at {flops_text(self.a.target_budget)} FLOPs"

    # -- internals --------------------------------------------------------------------------------
    def open_budgets(self) -> list[Budget]:
        return [b for b in self.budgets.values() if b.status == "open"]

    def _find(self, key: str) -> tuple[Budget, Point]:
        for b in self.budgets.values():
            if key in b.points:
                return b, b.points[key]
        raise KeyError(f"trial {key} was not proposed by this allocator")

    def _key(self, budget: float, index: int) -> str:
        s = self.catalogue.shapes[index]
        return f"C{budget:.4g}-d{s.depth}w{s.width}h{s.heads}".replace("+", "")

    def _affordable(self, flops: float) -> bool:
        a = self.a
        if a.max_trials and self.trials_issued >= a.max_trials:
            self.stop(f"trial cap {a.max_trials} reached")
            return False
        if a.max_flops and self.flops_issued + flops > a.max_flops * (1 + 1e-9):
            self.stop(f"FLOPs cap {a.max_flops:.3g} reached ({self.flops_issued:.3g} FLOPs "
                       "issued)")
            return False
        return True

    def record(self, b: Budget | None, action: str, sizes: list[int], reason: str,
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

    def stop(self, reason: str) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        skipped = [b for b in self.budgets.values() if b.status == "waiting"]
        for b in skipped:
            b.status, b.reason = "skipped", reason
        for b in self.open_budgets():
            b.queue.clear()
            for key in [k for k, p in b.points.items() if p.state == "queued"]:
                del b.points[key]
            if not b.busy:
                self.close(b, f"study stopped ({reason})")
        tail = (f"; skipping budgets {', '.join(flops_text(b.compute) for b in skipped)}"
                if skipped else "")
        self.record(None, "stop", [], f"stopping: {reason}{tail}")

    def close(self, b: Budget, reason: str) -> None:
        b.status, b.reason = "done", reason
        b.queue.clear()

    def propose(self, b: Budget, indices: list[int]) -> list[int]:
        sizes = []
        for i in indices:
            key = self._key(b.compute, i)
            if key in b.points:
                continue
            p = b.points[key] = Point(key, int(i), int(self.catalogue.params[i]))
            found = self.trunk_for(b.compute, int(i))
            if found is not None:
                p.trunk, p.branch_step = found
            b.queue.append(key)
            sizes.append(int(self.catalogue.params[i]))
        return sizes

    def _centre(self, b: Budget) -> tuple[float, str]:
        """Where a budget opens (log N) and why: the law fitted so far, else the prior."""
        law = self.law()
        if law is not None:
            e = float(np.clip(law.exponent, *LAW_EXPONENT_RANGE))
            k = law.coefficient if e == law.exponent else None
            if k is None:  # clamped: keep the law's value at its geometric-mean budget
                ref = math.exp(np.mean([math.log(c) for c in self.budgets
                                        if self.has_optimum(c)]))
                k = law(ref) / ref**e
            n = k * b.compute**e
            clamp = "" if e == law.exponent else f", exponent clamped from {law.exponent:.3f}"
            return math.log(n), (f"around N_opt {human(n)} from the law fitted so far (N_opt = "
                                 f"{k:.3g} C^{e:.3f} through {law.budgets} budgets{clamp})")
        n = self.prior(b.compute)
        return math.log(n), f"around the prior N_opt {human(n)} ({self.prior.source})"

    def has_optimum(self, c: float) -> bool:
        f = self.fit(c)
        return f is not None and f.inside

    def _start(self, b: Budget) -> None:
        b.status = "open"
        centre, why = self._centre(b)
        b.centre = centre
        taken = opening_sizes(self.catalogue, b, centre, self.a.initial_sizes, self.a.spacing)
        if len(taken) < 3:
            self.close(b, f"only {len(taken)} ladder sizes can train {flops_text(b.compute)} "
                           f"FLOPs for {MIN_STEPS} steps or more; an isoFLOP parabola needs 3")
            b.status = "skipped"
            self.record(b, "skip", [], b.reason)
            return
        sizes = self.propose(b, taken)
        self.record(b, "open", sizes, f"starting with {sizes_text(sizes)} {why}")

    def fit(self, c: float) -> Parabola | None:
        """This budget's parabola in ln N over its finished trials, cached until they change."""
        if c not in self._fits:
            pts = [p for p in self.budgets[c].points.values() if p.state == "finished"]
            self._fits[c] = fit_parabola(np.log([float(p.params) for p in pts]),
                                         np.array([p.loss for p in pts])) if pts else None
        return self._fits[c]

    def minimum(self, c: float) -> float:
        """ln N of the minimum this budget's parabola implies (it must have one): its vertex less
        the window bias of its finished sizes (`search.design.debiased_vertex`), cached with the
        fit."""
        if c not in self._minima:
            x = np.log([float(p.params) for p in self.budgets[c].points.values()
                        if p.state == "finished"])
            self._minima[c] = debiased_vertex(x, self.fit(c).vertex, self.curve_shape())
        return self._minima[c]

    def curve_shape(self) -> tuple[float, float]:
        """(alpha, beta) of the isoFLOP curve that window biases are reckoned on: those of the
        least-squares L(N, D) through the finished trials (D = C / 6N tokens) once there are
        SHAPE_RUNS of them, refitted as they grow by SHAPE_GROWTH, else the assumed
        `search.design.SHAPE`. The bias grows with beta - alpha, so a study whose curves are
        nearly symmetric must not balance the shifts of a lopsided assumed one."""
        done = self.finished_points()
        if len(done) < SHAPE_RUNS:
            return SHAPE
        if self.shape is None or len(done) >= SHAPE_GROWTH * self.shape[0]:
            try:
                fitted = fit_exponents(np.array([float(p.params) for _, p in done]),
                                       np.array([c / (6 * p.params) for c, p in done]),
                                       np.array([p.loss for _, p in done]))
            except (ValueError, np.linalg.LinAlgError):
                fitted = self.shape[1:] if self.shape is not None else SHAPE
            alpha, beta = (float(np.clip(e, *SHAPE_RANGE)) for e in fitted)
            self.shape = (len(done), alpha, beta)
            self._minima.clear()
        return self.shape[1], self.shape[2]

    def _forget(self, c: float | None = None) -> None:
        """Drop the cached fits of budget `c` (all when None): its finished trials changed."""
        for cache in (self._fits, self._minima):
            if c is None:
                cache.clear()
            else:
                cache.pop(c, None)

    def n_opt_interval(self, b: Budget, fit: Parabola, curvature: float | None = None
                  ) -> tuple[float, float]:
        """N_opt's 95% interval (parameters) from the finished trials' design (delta method)."""
        x = np.log([float(p.params) for p in b.points.values() if p.state == "finished"])
        var = vertex_terms(x - fit.vertex)[0][0]
        c2 = curvature or fit.curvature
        sd = math.sqrt(var) * self.noise() * fit.loss_opt / (2 * c2)
        sd = min(sd, 10.0)  # an interval past e^+-20 says only "unknown"
        return math.exp(fit.vertex - Z95 * sd), math.exp(fit.vertex + Z95 * sd)

    def budget_done(self, b: Budget, fit: Parabola | None) -> bool:
        """Target "a": the budget's N_opt is within +-tolerance on a centred window."""
        if self.a.target != "a" or fit is None or not fit.inside or b.interval is None:
            return False
        return half_width(b.interval) <= self.tolerance and fit.centred

    def _decide(self, b: Budget) -> None:
        """A budget's trials are all back: close it, extend it, or leave it to the study-wide
        choice (`search.allocator_refine.refine`)."""
        fit = self.fit(b.compute)
        tried = len(b.points)
        if fit is not None and fit.inside:
            b.n_opt, b.interval = math.exp(fit.vertex), self.n_opt_interval(b, fit)
        if b.last_decision is not None and b.interval is not None:
            last = self.decisions[b.last_decision]
            if last.action != "done":  # every size it added is back
                last.interval_after = list(b.interval)
        if self.stopped is not None:
            self.close(b, f"study stopped ({self.stopped})")
            return
        cap = b.cap or self.a.max_trials_per_budget
        h = half_width(b.interval) if fit is not None and fit.inside else None
        if self.budget_done(b, fit):
            self.close(b, f"N_opt {human(b.n_opt)}, interval +-{h:.0%} <= {self.tolerance:.0%} "
                           f"after {tried} trials: done")
            self.record(b, "done", [], b.reason)
            return
        if tried >= cap:
            state = (f"N_opt {human(b.n_opt)} +-{h:.0%}" if h is not None
                     else "no optimum inside the sampled sizes")
            self.close(b, f"trial cap {cap} reached ({state}): done")
            self.record(b, "done", [], b.reason)
            return
        if fit is not None and fit.inside:
            return  # refined by the study-wide choice
        action, indices, reason = bracket(self.catalogue, b, fit, self.a.spacing)
        sizes = self.propose(b, indices[: cap - tried])
        if not sizes:
            self.close(b, f"{reason}, but no unused ladder size is left there: done")
            self.record(b, "done", [], b.reason)
            return
        self.record(b, action, sizes, f"{reason}: adding {sizes_text(sizes)}")

    def line_budgets(self) -> list[Budget]:
        """The budgets the N_opt law will rest on: all but the skipped."""
        return [b for b in self.budgets.values() if b.status != "skipped"]
