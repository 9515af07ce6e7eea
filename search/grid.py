"""The fixed isoFLOP grid: for every budget, the spec's sizes or k sizes spaced in log N around
the 6ND heuristic, rounded to the model ladder, planned into steps, and served in order by
`GridProposer` (a `search.proposal.Proposer`).

Every trial config is plain data (budget in FLOPs, depth, width, heads, N), so Tune can save and
restore it and a trial is reproducible from it and the study spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from scaling.flops import TrialPlan, plan_trial
from scaling.ladder import nearest
from scaling.model import DiTConfig, ModelShape
from search.proposal import FINISHED, Proposer
from search.spec import StudySpec

MIN_STEPS = 10  # a trial shorter than this measures the warmup, not the model


class GridError(ValueError):
    """The spec's budgets and sizes do not give a usable isoFLOP grid."""


@dataclass(frozen=True)
class TrialSpec:
    """One point of the study: a model shape trained for one budget."""

    budget: float  # FLOPs in the study's convention
    shape: ModelShape
    params: int  # N, total DiT parameters
    repeat: int = 0  # which of model.seeds_per_size: trains with the study's seed + repeat

    @property
    def key(self) -> str:
        s = self.shape
        key = f"C{self.budget:.4g}-d{s.depth}w{s.width}h{s.heads}".replace("+", "")
        return f"{key}-r{self.repeat}" if self.repeat else key

    def seed(self, study_seed: int) -> int:
        """The training seed: the study's, plus which of model.seeds_per_size this trial is."""
        return study_seed + self.repeat

    def config(self) -> dict:
        s = self.shape
        config = {"trial_key": self.key, "budget": self.budget, "depth": s.depth,
                  "width": s.width, "heads": s.heads, "params": self.params}
        if self.repeat:
            config["repeat"] = self.repeat
        return config

    @staticmethod
    def from_config(config: dict) -> TrialSpec:
        shape = ModelShape(int(config["depth"]), int(config["width"]), int(config["heads"]))
        return TrialSpec(float(config["budget"]), shape, int(config["params"]),
                         int(config.get("repeat", 0)))


def heuristic_params(budget: float, tokens_per_param: float) -> float:
    """N with D = r N and C = 6 N D, i.e. N = sqrt(C / (6 r))."""
    return math.sqrt(budget / (6.0 * tokens_per_param))


def plan(spec: StudySpec, template: DiTConfig, trial: TrialSpec) -> TrialPlan:
    cfg = replace(template, shape=trial.shape)
    return plan_trial(cfg, trial.budget, spec.trainer.batch_size, spec.convention)


def trial_config(spec: StudySpec, template: DiTConfig, trial: TrialSpec) -> dict:
    """The trial's Tune config: its shape, and for simulated trials what they need to run without
    the model code: tokens D, steps, FLOPs in the study's convention and GPUs by the size rule."""
    config = trial.config()
    if spec.simulated:
        p = plan(spec, template, trial)
        config.update(tokens=p.tokens, steps=p.steps,
                      flops=p.compute_6nd if spec.convention == "6ND" else p.compute_exact,
                      gpus=spec.resources.gpus_for(trial.params))
    return config


def budget_trials(spec: StudySpec, template: DiTConfig, budget: float,
                  centre: float | None = None) -> list[TrialSpec]:
    """The distinct ladder sizes one budget trains, smallest first, spaced around `centre`
    (parameters; default the 6ND heuristic with model.tokens_per_param)."""
    m = spec.model
    if m.sizes:
        targets = list(m.sizes)
    else:
        centre = centre or heuristic_params(budget, m.tokens_per_param)
        k = m.sizes_per_budget
        targets = [centre * m.size_spacing ** (i - (k - 1) / 2) for i in range(k)]
    targets = [min(max(t, m.min_params), m.max_params) for t in targets]
    seen: dict[ModelShape, TrialSpec] = {}
    for target in targets:
        shape, n = nearest(target, template, m.depth)
        seen.setdefault(shape, TrialSpec(budget, shape, n))
    return sorted(seen.values(), key=lambda t: t.params)


def fixed_grid(spec: StudySpec, template: DiTConfig,
               centre: Callable[[float], float] | None = None) -> list[TrialSpec]:
    """All trials of the study; refuses budgets whose grid cannot locate an optimum.
    `centre(budget)` gives each budget's grid centre in parameters (default: the heuristic)."""
    trials, problems = [], []
    for i, budget in enumerate(spec.budgets):
        middle = centre(budget) if centre else None
        usable = [t for t in budget_trials(spec, template, budget, middle)
                  if plan(spec, template, t).steps >= MIN_STEPS]
        if len(usable) < 3:
            problems.append(f"budgets[{i}]: {budget:g} FLOPs gives {len(usable)} distinct model "
                            f"sizes with at least {MIN_STEPS} steps at batch "
                            f"{spec.trainer.batch_size}; an isoFLOP parabola needs 3 or more "
                            "(raise the budget, lower the batch size or the sizes)")
        trials.extend(replace(t, repeat=r) for t in usable
                      for r in range(spec.model.seeds_per_size))
    if problems:
        raise GridError("\n  ".join(["the study grid is unusable:", *problems]))
    return trials


class GridProposer(Proposer):
    """Serves a fixed list of trials in order. `trials` are TrialSpecs or ready trial configs
    (see `trial_config`)."""

    def __init__(self, trials: list[TrialSpec] | list[dict]):
        self.configs = [t if isinstance(t, dict) else t.config() for t in trials]
        self.next_index = 0
        self.issued: dict[str, str] = {}  # trial id -> trial key

    def suggest(self, trial_id: str) -> dict | str:
        if self.next_index >= len(self.configs):
            return FINISHED
        config = self.configs[self.next_index]
        self.next_index += 1
        self.issued[trial_id] = config["trial_key"]
        return dict(config)

    def get_state(self) -> dict:
        return {"configs": self.configs, "next_index": self.next_index, "issued": self.issued}

    def set_state(self, state: dict) -> None:
        self.configs = state["configs"]
        self.next_index = state["next_index"]
        self.issued = state["issued"]
