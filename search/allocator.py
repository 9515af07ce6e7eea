"""The adaptive allocator's decisions: which model size to train next at which budget.

Pure logic (no Ray, no MLflow): the Ray Tune `AllocatorSearcher` (search/searcher.py), `plan`
(search/plan.py) and `refine` all drive this one class, so a plan and a run decide alike.

Per budget (C in FLOPs, N in parameters, sizes always ladder shapes, see scaling/ladder.py):
1. Open it with `initial_sizes` sizes spaced x`spacing` in N around a centre: the power law
   through the optima found so far once two budgets have one, else the prior N_opt(C).
2. When all its trials are back (a "round"), refit its isoFLOP parabola with the fitting module
   (`scaling.laws.isoflop.fit_budget`, the same bootstrap as the final fit) and either
   - stop: its N_opt 95% interval is within +-tolerance, or its trial cap is reached, or no
     unused ladder size is left where one is needed;
   - extend: the minimum is at or beyond an edge (or the losses are not convex): add a size one
     step (x spacing) beyond that edge, two steps when the parabola points further;
   - centre: the minimum is inside but off-centre (outside the middle third of the sampled
     log N range): add one size beyond the near edge, mirroring the far edge, so the window is
     centred again (off-centre windows bias the vertex, arXiv 2603.22339);
   - refine: add one size on each side of the minimum at the interval's half-width (at least one
     ladder step, at most half a spacing step), so the window narrows around the minimum.
3. Budgets open in order of compute (allocator.order, ascending by default) whenever a trial
   slot is free and nothing is queued, so with few slots later budgets start on the law, with
   many they start at once.
4. Once every budget is open, a free slot with nothing queued does not idle (allocator.speculate,
   on by default): the costliest budget that is still refining, has a parabola and room under its
   cap gets its next sizes decided now, on the results it has, while the rest of its round runs.
   A budget refined round by round is a chain of trials one after another; without this its last
   rounds leave most of a large cluster idle. The price is a few trials placed on fewer results.
Study caps (`max_trials`, `max_flops` as the sum of trial budgets) stop new trials; with
`exponent_tolerance` the study stops once the N_opt exponent's 95% interval is within +- that and
3 budgets have optima; that interval is the study's final fit (`fit_laws` with the service's
FitOptions) on the trials finished so far, so the stop and the logged laws agree.
Every decision is a `Decision`, kept in order with the interval before it and, once the trials it
added are back, after it. The state is plain data (`get_state`/`set_state`) for Tune's restore.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from scaling.flops import plan_trial
from scaling.ladder import ladder
from scaling.laws.bootstrap import resample
from scaling.laws.fit import LawFitError, fit_laws
from scaling.laws.isoflop import BudgetFit, fit_budget
from scaling.laws.powerlaw import PowerLaw, fit_power_law
from scaling.laws.result import FEW_SIZES, FitOptions
from scaling.model import DiTConfig
from scaling.runs_table import RunPoint
from scaling.surface import PAPER_N_COEFFICIENT, PAPER_N_EXPONENT
from search.spec import StudySpec

FINISHED = "FINISHED"  # what `suggest` returns when the study has nothing left to run
MIN_STEPS = 10  # as search.grid: a trial shorter than this measures the warmup, not the model
FIT_DRAWS = 1000  # bootstrap draws per decision, as the final fit
FLOOR_SPACING = FitOptions().floor_spacing  # floor on an optimum's sd, x grid spacing
SEED_NOISE = FitOptions().seed_noise  # relative loss sd added to budgets with few sizes
MIN_OPTIMA_FOR_EXPONENT = 3
LAW_EXPONENT_RANGE = (0.25, 0.9)  # a law through 2 close budgets can point anywhere: clamp it
EDGE_RISE = 4.0  # refine where the loss rises this many noise sds above the minimum
MIN_NOISE = 1e-3  # relative loss noise assumed at least (real runs: ~0.5%)


def human(n: float) -> str:
    """A count with a K/M/B suffix: 4123456 -> '4.12M'."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def flops_text(c: float) -> str:
    return f"{c:.3g}".replace("e+", "e")


def half_width(interval: tuple[float, float] | None) -> float | None:
    """Relative half-width of an interval [lo, hi] in N: sqrt(hi / lo) - 1 (0.15 = +-15%)."""
    if interval is None:
        return None
    return math.sqrt(interval[1] / interval[0]) - 1


@dataclass(frozen=True)
class Prior:
    """A prior for the compute-optimal size: N_opt = coefficient * C^exponent (C in FLOPs)."""

    coefficient: float
    exponent: float
    source: str

    def __call__(self, budget: float) -> float:
        return self.coefficient * budget**self.exponent


def heuristic_prior(tokens_per_param: float) -> Prior:
    """C = 6 N D with D = r N: N = sqrt(C / (6 r)) = (6 r)^-1/2 C^1/2."""
    return Prior((6 * tokens_per_param) ** -0.5, 0.5,
                 f"6ND heuristic with D = {tokens_per_param:g} N")


def resolve_prior(spec: StudySpec,
                  study_law: Callable[[str], PowerLaw] | None = None) -> Prior:
    """The spec's prior; `study_law(name)` reads a fitted study's N_opt law (from MLflow)."""
    a = spec.allocator
    if a.prior == "paper":
        return Prior(PAPER_N_COEFFICIENT, PAPER_N_EXPONENT, "the paper's law")
    if a.prior == "explicit":
        return Prior(a.prior_coefficient, a.prior_exponent, "the spec's explicit law")
    if a.prior.startswith("study:"):
        name = a.prior.split(":", 1)[1]
        if study_law is None:
            raise ValueError(f"allocator.prior = {a.prior!r} needs the study's laws from MLflow")
        law = study_law(name)
        return Prior(law.coefficient, law.exponent, f"study {name}'s fitted law")
    return heuristic_prior(spec.model.tokens_per_param)


class SizeCatalogue:
    """The ladder's distinct shapes between model.min_params and model.max_params, by N, and
    which of them a budget can train for at least MIN_STEPS steps."""

    def __init__(self, spec: StudySpec, template: DiTConfig, extra_shapes=()):
        self.spec, self.template = spec, template
        shapes = ladder(template, spec.model.min_params, spec.model.max_params)
        shapes += [s for s in dict.fromkeys(extra_shapes) if s not in shapes]
        shapes.sort(key=self._count)
        self.shapes = shapes
        self.params = np.array([self._count(s) for s in shapes], dtype=np.int64)
        self.log_n = np.log(self.params.astype(float))
        self._usable: dict[float, np.ndarray] = {}

    def _count(self, shape) -> int:
        return plan_trial(replace(self.template, shape=shape), 1e30, 1).params

    def usable(self, budget: float) -> np.ndarray:
        """Indices of the sizes a budget can train (steps >= MIN_STEPS at the spec's batch)."""
        if budget not in self._usable:
            ok = [i for i, s in enumerate(self.shapes)
                  if plan_trial(replace(self.template, shape=s), budget,
                                self.spec.trainer.batch_size, self.spec.convention).steps
                  >= MIN_STEPS]
            self._usable[budget] = np.array(ok, dtype=np.int64)
        return self._usable[budget]


@dataclass
class Point:
    """One trial of a budget: a ladder size, its state and (when finished) its loss."""

    key: str
    index: int  # into the catalogue
    params: int
    state: str = "queued"  # queued | running | finished | failed
    loss: float | None = None


@dataclass
class Budget:
    compute: float  # FLOPs
    status: str = "waiting"  # waiting | open | done | skipped
    reason: str = ""
    centre: float | None = None  # log N the budget opened around
    points: dict[str, Point] = field(default_factory=dict)
    queue: list[str] = field(default_factory=list)
    n_opt: float | None = None
    interval: tuple[float, float] | None = None
    last_decision: int | None = None
    cap: int | None = None  # trials at most; None: allocator.max_trials_per_budget

    def count(self, state: str) -> int:
        return sum(p.state == state for p in self.points.values())

    @property
    def busy(self) -> bool:
        return any(p.state in ("queued", "running") for p in self.points.values())


@dataclass
class Decision:
    """One allocator decision; `line()` is its progress line."""

    time: float  # seconds since the epoch
    budget: float | None  # FLOPs; None for a study-wide decision
    action: str  # open | extend | centre | refine | retry | done | stop | skip
    sizes: list[int]  # parameters of the sizes added
    reason: str
    interval_before: list[float] | None = None  # N_opt 95% interval (parameters) when decided
    interval_after: list[float] | None = None  # ... once the sizes it added were back
    running: int = 0  # trials of the budget still running when decided (> 0: a speculation)

    def line(self) -> str:
        where = "study" if self.budget is None else flops_text(self.budget)
        return f"{where}: {self.reason}"


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
        self._fits: dict[float, tuple[BudgetFit, np.ndarray | None] | None] = {}

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
                if self.a.speculate and self._speculate():
                    continue
            if any(p.state == "running" for b in self.budgets.values()
                   for p in b.points.values()):
                return None
            for b in self._open():  # stopped with sizes still queued: close the budget
                self._close(b, f"study stopped ({self.stopped})")
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
        self._check_exponent()

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
        """The N_opt power law through the budgets with an optimum so far (bootstrap draws)."""
        kept = [(c, fit, draws) for c in self.budgets
                if (f := self._fit(c)) is not None and (fit := f[0]) and not fit.refused
                and (draws := f[1]) is not None]
        if len(kept) < 2:
            return None
        compute = np.array([c for c, _, _ in kept])
        return fit_power_law(compute, np.log10([f.n_opt for _, f, _ in kept]),
                             np.stack([d for _, _, d in kept], 1))

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
        return f is not None and not f[0].refused

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
        self._record(b, "open", sizes, f"starting with {_sizes(sizes)} {why}")

    def _fit(self, c: float) -> tuple[BudgetFit, np.ndarray | None] | None:
        """This budget's parabola and log10 N_opt draws, cached until its points change."""
        if c in self._fits:
            return self._fits[c]
        pts = sorted((p for p in self.budgets[c].points.values() if p.state == "finished"),
                     key=lambda p: p.params)
        out = None
        if len({p.params for p in pts}) >= 3:
            params = np.array([p.params for p in pts], dtype=float)
            losses = np.array([p.loss for p in pts])
            seed = zlib.crc32(f"{self.spec.seed}:{c:.6g}:{len(pts)}".encode())
            rng = np.random.default_rng(seed)
            # As the final fit (fit_laws' default FitOptions): with fewer than FEW_SIZES sizes,
            # resampling runs cannot spread the optimum, so the draws add seed noise.
            sigma = SEED_NOISE if len({p.params for p in pts}) < FEW_SIZES else 0.0
            draws = resample([np.arange(params.size)], params, losses, FIT_DRAWS, rng, sigma)
            fit, bd = fit_budget(c, params, c / (6 * params), losses,
                                 np.full(params.size, np.nan), draws.counts, draws.losses, rng,
                                 FLOOR_SPACING)
            out = (fit, None if bd is None else bd.log_n)
        self._fits[c] = out
        return out

    def _decide(self, b: Budget) -> None:
        """A budget's round is back: stop it, or queue the sizes that narrow its optimum."""
        fitted = self._fit(b.compute)
        fit = fitted[0] if fitted else None
        tried = len(b.points)
        if fit is not None and not fit.refused:
            b.n_opt, b.interval = fit.n_opt, tuple(fit.n_opt_ci)
        if self.stopped is not None:
            self._close(b, f"study stopped ({self.stopped})")
            return
        cap = b.cap or self.a.max_trials_per_budget
        h = half_width(b.interval) if fit is not None and not fit.refused else None
        if h is not None and h <= self.tolerance and fit.centred:
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
        action, indices, reason = self._next_sizes(b, fit, h)
        indices = indices[: cap - tried]
        sizes = self._propose(b, indices)
        if not sizes:
            self._close(b, f"{reason}, but no unused ladder size is left there: done")
            self._record(b, "done", [], b.reason)
            return
        self._record(b, action, sizes, f"{reason}: adding {_sizes(sizes)}")

    def _speculate(self) -> bool:
        """A trial slot is free, no size is queued and every budget is open: rather than idle,
        queue the next sizes of the costliest budget still refining, decided on the results it
        has while its round runs. True when something was queued."""
        for b in sorted(self._open(), key=lambda b: -b.compute):
            running = b.count("running")
            cap = b.cap or self.a.max_trials_per_budget
            if not running or b.queue or len(b.points) >= cap:
                continue
            fitted = self._fit(b.compute)
            if fitted is None:  # its first round is still out: nothing to decide on yet
                continue
            fit = fitted[0]
            h = None
            if not fit.refused:
                b.n_opt, b.interval = fit.n_opt, tuple(fit.n_opt_ci)
                h = half_width(b.interval)
                if h <= self.tolerance and fit.centred:
                    continue  # done once its running trials are back
            action, indices, reason = self._next_sizes(b, fit, h)
            sizes = self._propose(b, indices[: cap - len(b.points)])
            if sizes:
                self._record(b, action, sizes, f"{reason}: adding {_sizes(sizes)} ahead of "
                             f"{running} running trial{'s' * (running > 1)} (a slot is free)",
                             running)
                return True
        return False

    def _next_sizes(self, b: Budget, fit: BudgetFit | None,
                    h: float | None) -> tuple[str, list[int], str]:
        cat = self.catalogue
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
        x = np.log(np.array(fit.params))
        lo, hi = float(x.min()), float(x.max())
        window = f"[{human(math.exp(lo))}, {human(math.exp(hi))}]"
        if fit.refused:
            c0, c1, c2 = fit.parabola
            if c2 > 0:
                vertex = -c1 / (2 * c2) * math.log(10)  # the parabola is in log10 N
                up = vertex > hi
                beyond = (vertex - hi) if up else (lo - vertex)
                dist = step * (2 if beyond > 1.5 * step else 1)
                target = hi + dist if up else lo - dist
                side = "upper" if up else "lower"
                why = (f"minimum beyond the {side} edge of {window} (parabola's minimum at "
                       f"~{human(math.exp(vertex))})")
            else:
                best = math.log(min(finished, key=lambda p: p.loss).params)
                if best in (lo, hi):
                    up = best == hi
                    target = hi + step if up else lo - step
                    why = (f"no minimum in {window} (losses not convex in log N), lowest loss "
                           f"at the {'upper' if up else 'lower'} edge")
                else:
                    below = self._nearest_free(b, lo - step, -1, lo)
                    above = self._nearest_free(b, hi + step, +1, hi)
                    return "extend", [i for i in (below, above) if i is not None], (
                        f"no minimum in {window} (losses not convex in log N): widening")
            i = self._nearest_free(b, target, 1 if target > hi else -1, hi if target > hi else lo)
            return "extend", [] if i is None else [i], why
        vertex = math.log(fit.n_opt)
        interval = f"+-{h:.0%}"
        if not fit.centred:  # mirror the far edge across the vertex, at most one step out
            up = vertex - lo > hi - vertex
            target = (min(2 * vertex - lo, hi + step) if up else max(2 * vertex - hi, lo - step))
            i = self._nearest_free(b, target, 1 if up else -1, hi if up else lo)
            return "centre", [] if i is None else [i], (
                f"minimum {human(fit.n_opt)} inside {window} but off-centre, interval {interval}")
        # Refine at the edges of the signal window: the half-width W in log N where the parabola
        # rises EDGE_RISE noise sds above its minimum. Closer sizes cannot see the curvature
        # through the noise; wider ones bias the vertex (the isoFLOP curve is not a parabola).
        c2_ln = fit.parabola[2] / math.log(10) ** 2
        sigma = max(self.spec.trainer.noise, MIN_NOISE) * fit.loss_opt
        width = math.sqrt(EDGE_RISE * sigma / c2_ln)
        gaps = np.diff(cat.log_n)
        near = int(np.clip(np.searchsorted(cat.log_n, vertex), 1, max(1, gaps.size)))
        ladder_step = float(gaps[near - 1]) if gaps.size else 0.0
        width = min(max(width, ladder_step), 2 * step)
        below = self._nearest_free(b, vertex - width, -1, vertex)
        above = self._nearest_free(b, vertex + width, +1, vertex)
        return "refine", [i for i in (below, above) if i is not None], (
            f"minimum inside {window}, interval {interval} > {self.tolerance:.0%}")

    def _check_exponent(self) -> None:
        tol = self.a.exponent_tolerance
        if not tol or self.stopped is not None:
            return
        if sum(self._has_optimum(c) for c in self.budgets) < MIN_OPTIMA_FOR_EXPONENT:
            return
        law = self.law()  # cheap screen; the stop itself is decided on the final fit's interval
        lo, hi = law.exponent_ci
        if (hi - lo) / 2 > 1.5 * tol:
            return
        law = self.final_law()
        if law is None or law.exponent_ci is None:
            return
        lo, hi = law.exponent_ci
        if (hi - lo) / 2 <= tol:
            self._stop(f"N_opt exponent {law.exponent:.4f} [{lo:.4f}, {hi:.4f}] is within "
                       f"+-{tol:g} from {law.budgets} budgets")

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


def _sizes(sizes: list[int]) -> str:
    names = [human(n) for n in sizes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
