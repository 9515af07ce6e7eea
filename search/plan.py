"""`dit-scaling plan`: simulate a study in-process before any GPU is spent.

Each repeat runs the study's allocator (the same `Allocator` class a study's proposer drives) or
its fixed grid against a simulated trainer (`scaling.simulate`, the same function the Ray
trainable calls) on a virtual clock with `concurrency` trial slots, then fits the laws as the
service would. Repeats differ in the study seed, so in the noise of every simulated loss and in
the bootstrap. With `trainer.reuse = "cooldown"` the fixed grid trains as `run` would: each size
once as its trunk, the other budgets' points as cooldown branches that start once the trunk has
passed their branch step and cost only their cooldown. Units: FLOPs (multiply-add = 2 FLOPs),
GPU-hours at the spec's peak x MFU.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scaling.laws import LawFit, LawFitError, fit_laws
from scaling.laws.result import text_columns
from scaling.model import DiTConfig, ModelShape
from scaling.runs_table import RunPoint
from scaling.surface import SURFACES, LossSurface
from search.allocator import FINISHED, Allocator, Decision, Prior, SizeCatalogue
from search.branches import reuse_plan, with_branches
from search.grid import TrialSpec, trial_config
from search.records import BRANCH_OF, BRANCH_STEP
from search.simulated import SimContext, trained_flops
from search.spec import StudySpec
from search.study.proposers import grid_trials

STRATEGIES = ("adaptive", "fixed", "two_round")
FIRST_ROUND = (5, 2.0)  # two_round: sizes per budget and their spacing (x in N) around the prior
SECOND_ROUND = (3, math.sqrt(2))  # ... then around each budget's lowest observed loss
EXPONENTS = (("n_opt", "N_opt exponent a"), ("d_opt", "D_opt exponent b"),
             ("loss", "loss exponent"))


def simulated_template(spec: StudySpec) -> DiTConfig:
    """The model family of a study that trains nothing: dimensions from the spec alone (RGB
    images of data.image_size pixels, the built-in text encoder's 384-wide, 16-token features)."""
    return DiTConfig(shape=ModelShape(1, 16, 1), conditioning=spec.model.conditioning,
                     image_size=spec.data.image_size, in_channels=3,
                     patch_size=spec.model.patch_size, text_dim=384, text_len=16,
                     mlp_ratio=spec.model.mlp_ratio)


@dataclass(frozen=True)
class SimTrial:
    """One simulated trial: budget and FLOPs of its isoFLOP point (FLOPs), params N, tokens D,
    loss, GPUs, its virtual start and end (seconds), the FLOPs it trained (a cooldown branch's
    cooldown only) and the trial it branched off."""

    key: str
    budget: float
    params: int
    tokens: int
    flops: float
    loss: float
    gpus: int
    start: float
    end: float
    trained: float
    trunk: str | None = None  # the key of the trial it branched off (run reuse)


@dataclass(frozen=True)
class StudySimulation:
    """One simulated study: its trials, what they cost and the laws fitted on them."""

    strategy: str  # "adaptive", "fixed" or "two_round"
    trials: list[SimTrial]
    gpu_flops: float  # FLOPs per second per GPU
    fit: LawFit | None
    fit_error: str | None
    decisions: list[Decision] = field(default_factory=list)
    cluster_gpus: int = 0  # GPUs the trials were scheduled on (0: trial slots)

    @property
    def makespan_s(self) -> float:
        """Virtual seconds from the first trial's start to the last one's end."""
        return max(t.end for t in self.trials) - min(t.start for t in self.trials)

    @property
    def occupancy(self) -> float | None:
        """Share of the cluster's GPU-seconds over the makespan the trials computed."""
        if not self.cluster_gpus or not self.trials:
            return None
        busy = sum(t.gpus * (t.end - t.start) for t in self.trials)
        return busy / (self.cluster_gpus * self.makespan_s)

    @property
    def flops(self) -> float:
        """FLOPs the study trained."""
        return sum(t.trained for t in self.trials)

    @property
    def point_flops(self) -> float:
        """FLOPs of the study's isoFLOP points (more than it trained when branches reuse
        trunks)."""
        return sum(t.flops for t in self.trials)

    @property
    def gpu_hours(self) -> float:
        return self.flops / self.gpu_flops / 3600

    def exponent(self, law: str) -> tuple[float, float, float] | None:
        """(value, lo, hi) of a law's exponent, None when the laws were not fitted."""
        if self.fit is None or (x := self.fit.law(law)) is None or x.exponent_ci is None:
            return None
        return (x.exponent, *x.exponent_ci)


def simulate_study(spec: StudySpec, template: DiTConfig, prior: Prior, strategy: str,
                   surface: LossSurface, concurrency: int = 1,
                   catalogue: SizeCatalogue | None = None,
                   out: Callable[[str], None] | None = None, fit: bool = True,
                   draws: int = 1000, gpus: int = 0, approach3: bool = True) -> StudySimulation:
    """Run the study's trials against `surface` on a virtual clock with `concurrency` slots.

    strategy: "adaptive" (the allocator), "fixed" (the spec's [model] grid around the prior) or
    "two_round" (FIRST_ROUND sizes around the prior, then `refine_round` once all are back).

    With `gpus` > 0 the slots are GPUs instead, as the service schedules on a GPU cluster: up to
    `concurrency` trials are proposed at once, each starts when the GPUs its size asks for
    (resources.gpus_per_trial) are free, and waits otherwise (trials that fit may pass it).

    With `fit`, the laws are fitted as the service fits them (`StudySpec.fit_options`) with
    `draws` bootstrap draws; `approach3` False leaves out Approach 3 (0.35 s a fit), which a
    benchmark of the estimates alone may: they are the same, only the intervals differ."""
    ctx = SimContext(surface, spec.trainer.noise, 1, spec.seed, 0.0,
                     spec.resources.gpu_peak_flops * spec.resources.mfu,
                     cooldown_gap=spec.trainer.cooldown_gap)
    sim_spec = spec if spec.simulated else spec.model_copy(
        update={"trainer": spec.trainer.model_copy(update={"kind": "simulated"})})
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    allocator = None

    def configs(trials: list[TrialSpec]) -> list[dict]:
        return [trial_config(sim_spec, template, t) for t in trials]

    if strategy == "adaptive":
        allocator = Allocator(sim_spec, catalogue or SizeCatalogue(sim_spec, template), prior,
                              out)
        pending: list[dict] = []
    elif strategy == "two_round":
        pending = configs(grid_trials(sim_spec.model_copy(update={
            "model": sim_spec.model.model_copy(update={
                "sizes": None, "sizes_per_budget": FIRST_ROUND[0],
                "size_spacing": FIRST_ROUND[1]})}), template, prior))
    else:  # the grid `run` trains: the same centre rule and order, and branches
        grid = grid_trials(sim_spec, template, prior)
        pending = with_branches(configs(grid), reuse_plan(sim_spec, template, grid))
    second_round = strategy == "two_round"
    clock, seq, free = 0.0, 0, gpus
    running: list[tuple[float, int, dict, float]] = []
    waiting: list[dict] = []  # proposed, waiting for their GPUs
    trials: list[SimTrial] = []
    started: dict[str, tuple[float, float, int]] = {}  # key -> virtual start, end, steps

    def passes(trunk: str, step: int) -> float | None:
        """When a trunk passes `step` on the virtual clock (None while it has not started)."""
        if trunk not in started:
            return None
        start, end, steps = started[trunk]
        return start + (end - start) * step / steps

    def ready_at(config: dict) -> float | None:
        """When a pending trial may start: a branch once its trunk has passed its branch step
        (None while the trunk has not started)."""
        trunk = config.get(BRANCH_OF)
        return clock if trunk is None else passes(trunk, int(config[BRANCH_STEP]))

    while True:
        while len(running) + len(waiting) < concurrency:
            if allocator is None:
                index = next((i for i, c in enumerate(pending)
                              if (t := ready_at(c)) is not None and t <= clock), None)
                if index is None:
                    break
                waiting.append(pending.pop(index))
                continue
            for key, (start, end, steps) in started.items():  # what each trial has reached
                done = 1.0 if clock >= end else (clock - start) / (end - start)
                allocator.progress(key, math.floor(steps * done + 1e-9))
            point = allocator.suggest()
            if point is None or point == FINISHED:
                break
            waiting.append(allocator.config(point))
        for config in list(waiting):
            need = int(config["gpus"]) if gpus else 0
            if need > free:
                continue
            waiting.remove(config)
            free -= need
            run = ctx.run(config)
            loss = run.val_loss if spec.metric == "val_loss" else run.final_loss
            seq += 1
            end = clock + ctx.trial_seconds(config)
            heapq.heappush(running, (end, seq, config, loss))
            started[config["trial_key"]] = (clock, end, int(config["steps"]))
            trials.append(SimTrial(config["trial_key"], float(config["budget"]),
                                   int(config["params"]), int(config["tokens"]),
                                   float(config["flops"]), loss, int(config["gpus"]), clock, end,
                                   trained_flops(config), config.get(BRANCH_OF)))
        if not running:
            if second_round and not waiting:
                second_round = False
                pending = configs(refine_round(
                    sim_spec, catalogue or SizeCatalogue(sim_spec, template), trials))
                if pending:
                    continue
            break
        # a slot is free and a branch becomes ready before the next trial ends: start it then
        soon = [t for c in pending if (t := ready_at(c)) is not None and t > clock]
        if allocator is not None:
            soon += [t for trunk, step in allocator.waiting_branches()
                     if (t := passes(trunk, step)) is not None and t > clock]
        if soon and min(soon) < running[0][0] and len(running) + len(waiting) < concurrency:
            clock = min(soon)
            continue
        clock, _, config, loss = heapq.heappop(running)
        free += int(config["gpus"]) if gpus else 0
        if allocator is not None:
            allocator.complete(config["trial_key"], loss)
    law, error = None, None
    if fit:
        # In the order the service reads trial runs (search.results.trial_points), so the
        # bootstrap draws, and so the intervals, are the ones the service would log.
        points = [RunPoint(compute=t.budget, params=t.params, loss=t.loss, tokens=t.tokens,
                           budget=t.budget, trial=t.key)
                  for t in sorted(trials, key=lambda t: (t.budget, t.key))]
        try:
            law = fit_laws(points, spec.fit_options(draws=draws, approach3=approach3))
        except (LawFitError, ValueError) as err:
            error = str(err)
    return StudySimulation(strategy, trials, ctx.gpu_flops, law, error,
                           list(allocator.decisions) if allocator else [], gpus)


def refine_round(spec: StudySpec, catalogue: SizeCatalogue, trials: list[SimTrial]
                 ) -> list[TrialSpec]:
    """The two-round grid's second round: per budget, SECOND_ROUND[0] sizes spaced
    x SECOND_ROUND[1] in N around the size with the lowest observed loss, each the nearest ladder
    size the budget has not trained yet (so the centre one sits next to that minimum)."""
    out = []
    k, spacing = SECOND_ROUND
    for budget in sorted({t.budget for t in trials}):
        done = [t for t in trials if t.budget == budget]
        best = min(done, key=lambda t: t.loss)
        used = {t.params for t in done}
        usable = [int(i) for i in catalogue.usable(budget) if int(catalogue.params[i]) not in used]
        for j in range(k):
            if not usable:
                break
            target = math.log(best.params) + math.log(spacing) * (j - (k - 1) / 2)
            i = min(usable, key=lambda i: abs(catalogue.log_n[i] - target))
            usable.remove(i)
            out.append(TrialSpec(budget, catalogue.shapes[i], int(catalogue.params[i])))
    return out


def true_exponents(surface: LossSurface, budgets: list[float]) -> dict[str, float]:
    """The surface's N_opt and D_opt exponents, and the slope of its optimal loss over the
    budgets in log-log (a pure power law only approximates the saturating loss)."""
    ex = surface.exponents()
    c = np.array(sorted(budgets), dtype=float)
    loss = [surface.optimum(x).loss for x in c]
    slope = float(np.polyfit(np.log10(c), np.log10(loss), 1)[0]) if c.size > 1 else float("nan")
    return {"n_opt": ex.a, "d_opt": ex.b, "loss": slope}


@dataclass(frozen=True)
class PlanReport:
    """Repeated simulations of one study under both strategies."""

    spec: StudySpec
    surface: str
    concurrency: int
    runs: dict[str, list[StudySimulation]]
    truth: dict[str, float]
    gpus: int = 0  # scheduled on this many GPUs by the size rule (0: `concurrency` slots)

    def summary(self, strategy: str) -> dict:
        sims = self.runs[strategy]
        out = {"strategy": strategy, "repeats": len(sims),
               "trials_median": statistics.median(len(s.trials) for s in sims),
               "trials_range": [min(len(s.trials) for s in sims),
                                max(len(s.trials) for s in sims)],
               "flops_median": statistics.median(s.flops for s in sims),
               "point_flops_median": statistics.median(s.point_flops for s in sims),
               "gpu_hours_median": statistics.median(s.gpu_hours for s in sims),
               "fitted": sum(s.fit is not None for s in sims)}
        if self.gpus:
            out["makespan_hours_median"] = statistics.median(s.makespan_s for s in sims) / 3600
            out["occupancy_median"] = statistics.median(s.occupancy for s in sims)
        for law, _ in EXPONENTS:
            got = [e for s in sims if (e := s.exponent(law)) is not None]
            if not got:
                continue
            truth = self.truth[law]
            out[law] = {"median": statistics.median(e[0] for e in got),
                        "lo_median": statistics.median(e[1] for e in got),
                        "hi_median": statistics.median(e[2] for e in got),
                        "half_width_median": statistics.median((e[2] - e[1]) / 2 for e in got),
                        "covers_truth": sum(e[1] <= truth <= e[2] for e in got) / len(got),
                        "truth": truth}
        return out

    def text(self) -> str:
        s = self.spec
        r = s.resources
        head = [f"plan for study {s.name}: {len(s.budgets)} budgets "
                f"{', '.join(f'{b:.3g}' for b in sorted(s.budgets))} FLOPs "
                f"(C = {s.convention}, a multiply-add = 2 FLOPs)",
                f"simulated trainer: surface {self.surface}, noise {s.trainer.noise:.2%} of loss, "
                f"{len(next(iter(self.runs.values())))} repeats, "
                + (f"on {self.gpus} GPUs by resources.gpus_per_trial (up to {self.concurrency} "
                   "trials at a time)" if self.gpus else f"{self.concurrency} trials at a time")
                + f"; GPU-hours at {r.gpu_peak_flops:.3g} FLOP/s x MFU {r.mfu:g} per GPU",
                f"adaptive: {s.allocator.initial_sizes} initial sizes x{s.allocator.spacing:g}, "
                f"tolerance +-{s.allocator.tolerance:.0%}, per-budget cap "
                f"{s.allocator.max_trials_per_budget}; fixed grid: "
                + (f"the {len(s.model.sizes)} sizes of model.sizes at every budget"
                   if s.model.sizes else f"{s.model.sizes_per_budget} sizes "
                   f"x{s.model.size_spacing:g} around the same prior")
                + (f", each size trained once: the other budgets branch off it and train their "
                   f"cooldown ({s.trainer.cooldown_fraction:.0%} of their steps, loss gap "
                   f"{s.trainer.cooldown_gap:+.2%}); the allocator branches a size off its run at "
                   "a larger budget when it has one" if s.trainer.reuse == "cooldown" else "")]
        names = list(self.runs)
        sums = {n: self.summary(n) for n in names}
        rows = [("", *[{"adaptive": "adaptive allocator", "fixed": "fixed grid",
                         "two_round": "two-round grid"}[n]
                       for n in names])]
        rows.append(("trials (median, range)", *[
            f"{sums[n]['trials_median']:g} ({sums[n]['trials_range'][0]}-"
            f"{sums[n]['trials_range'][1]})" for n in names]))
        rows.append(("total FLOPs (median)", *[f"{sums[n]['flops_median']:.3g}" for n in names]))
        if s.trainer.reuse == "cooldown":
            rows.append(("  isoFLOP points' FLOPs (median)", *[
                f"{sums[n]['point_flops_median']:.3g}" for n in names]))
        rows.append(("GPU-hours (median)", *[f"{sums[n]['gpu_hours_median']:.4g}"
                                             for n in names]))
        if self.gpus:
            rows.append((f"makespan on {self.gpus} GPUs, hours (median)", *[
                f"{sums[n]['makespan_hours_median']:.4g}" for n in names]))
            rows.append(("GPU occupancy (median)", *[f"{sums[n]['occupancy_median']:.1%}"
                                                     for n in names]))
        rows.append(("laws fitted", *[f"{sums[n]['fitted']}/{sums[n]['repeats']}"
                                      for n in names]))
        for law, label in EXPONENTS:
            truth = self.truth[law]
            rows.append((f"{label} (true {truth:.4f})", *[
                f"{sums[n][law]['median']:.4f} [{sums[n][law]['lo_median']:.4f}, "
                f"{sums[n][law]['hi_median']:.4f}]" if law in sums[n] else "-" for n in names]))
            rows.append(("  95% half-width, covers truth", *[
                f"+-{sums[n][law]['half_width_median']:.4f}, "
                f"{sums[n][law]['covers_truth']:.0%}" if law in sums[n] else "-"
                for n in names]))
        note = ("exponent intervals: the median lower and upper 95% bounds over the repeats; "
                "'covers truth' is the share of repeats whose interval holds the surface's value")
        return "\n".join([*head, text_columns(rows), note])


def plan_study(spec: StudySpec, template: DiTConfig, prior: Prior, surface: str,
               repeats: int, concurrency: int = 1,
               progress: Callable[[str], None] | None = None,
               strategies: tuple[str, ...] = ("adaptive", "fixed"),
               gpus: int = 0) -> PlanReport:
    """Simulate the study `repeats` times per strategy (seeds spec.seed, spec.seed + 1, ...);
    with `gpus`, on that many GPUs by the spec's size rule (see `simulate_study`), `concurrency`
    trials proposed at once at most (default: as many as the smallest request fits)."""
    rule = spec.resources.gpus_per_trial
    if gpus:
        if not rule:
            raise ValueError("planning on GPUs needs the spec's resources.gpus_per_trial rule "
                             "(GPUs by model size)")
        most = max(t.gpus for t in rule)
        if most > gpus:
            raise ValueError(f"resources.gpus_per_trial asks up to {most} GPUs for one trial; "
                             f"the plan has {gpus}")
        concurrency = max(concurrency, gpus // min(t.gpus for t in rule))
    surf = SURFACES[surface]
    sim_spec = spec if spec.simulated else spec.model_copy(
        update={"trainer": spec.trainer.model_copy(update={"kind": "simulated"})})
    catalogue = SizeCatalogue(sim_spec, template)
    runs: dict[str, list[StudySimulation]] = {s: [] for s in strategies}
    for strategy in strategies:
        for i in range(repeats):
            seeded = spec.model_copy(update={"seed": spec.seed + i})
            sim = simulate_study(seeded, template, prior, strategy, surf, concurrency,
                                 catalogue, gpus=gpus)
            runs[strategy].append(sim)
            if progress:
                e = sim.exponent("n_opt")
                law = (f"a = {e[0]:.4f} [{e[1]:.4f}, {e[2]:.4f}]" if e
                       else f"laws not fitted ({sim.fit_error})")
                span = (f", makespan {sim.makespan_s / 3600:.3g} h at {sim.occupancy:.0%} GPU "
                        "occupancy" if gpus else "")
                spent = (f" ({sim.point_flops:.3g} of isoFLOP points)"
                         if sim.point_flops != sim.flops else "")
                progress(f"[{strategy} {i + 1}/{repeats}] {len(sim.trials)} trials, "
                         f"{sim.flops:.3g} FLOPs{spent}, {sim.gpu_hours:.4g} GPU-hours{span}, "
                         f"{law}")
    return PlanReport(spec, surface, concurrency, runs, true_exponents(surf, spec.budgets), gpus)
