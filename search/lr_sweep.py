"""Learning rate by size: the spec's rule, and the LR sweep that fits it before the study trains.

Without `trainer.lr_sweep` every trial takes its LR and warmup from the spec's rule
(`trainer.lr` at `trainer.lr_rule.ref_width`, scaled by the width exponents; see
`scaling.hparams`). With it, the study runs in two phases through the same Tune driver:

1. sweep: a few sizes (default: the smallest, middle and largest of the grid) each train one
   budget (default: the smallest) at every `factors` multiple of the rule's LR;
2. study: once every sweep trial has ended, each size's best LR is found (a parabola in log LR),
   the rule's base LR and exponent are fitted to those optima, and the grid's trials are served
   with the fitted rule's LR and warmup in their config.

`LRSweepProposer` wraps the study's own proposer (the fixed grid or an allocator), so phase 2 is
that proposer unchanged. Sweep trials are MLflow runs under the study run with param
`phase = lr_sweep`; the law fit leaves them out, and the fitted rule is logged on the study run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scaling.hparams import LRRule, SweepPoint, fit_lr_rule
from scaling.ladder import nearest
from scaling.model import DiTConfig
from search.grid import MIN_STEPS, GridError, TrialSpec, plan
from search.proposal import Proposer
from search.spec import StudySpec

SWEEP = "lr_sweep"
STUDY = "study"


def spec_rule(spec: StudySpec) -> LRRule:
    """The LR and warmup rule the spec states (before any sweep)."""
    t = spec.trainer
    return LRRule(base_lr=t.lr, ref_width=t.lr_rule.ref_width, lr_exponent=t.lr_rule.lr_exponent,
                  warmup_steps=t.warmup_steps, warmup_exponent=t.lr_rule.warmup_exponent)


def sweep_configs(spec: StudySpec, template: DiTConfig, grid: list[TrialSpec]) -> list[dict]:
    """The phase-1 trial configs: sizes x LR factors at the sweep budget."""
    sweep = spec.trainer.lr_sweep
    if sweep is None:
        return []
    budget = sweep.budget or min(spec.budgets)
    if sweep.sizes:
        targets = list(sweep.sizes)
    else:
        sizes = sorted({t.params for t in grid})
        targets = [sizes[0], math.sqrt(sizes[0] * sizes[-1]), sizes[-1]]
    shapes = {}
    for target in targets:
        shape, n = nearest(target, template, spec.model.depth)
        shapes.setdefault(shape, n)
    rule = spec_rule(spec)
    configs, short = [], []
    for shape, n in sorted(shapes.items(), key=lambda item: item[1]):
        trial = TrialSpec(budget, shape, n)
        steps = plan(spec, template, trial).steps
        if steps < MIN_STEPS:
            short.append(f"{n} parameters ({steps} steps)")
            continue
        for factor in sorted(set(sweep.factors)):
            lr = factor * rule.lr(shape.width)
            configs.append({**trial.config(), "trial_key": f"{SWEEP}-{trial.key}-x{factor:g}",
                            "phase": SWEEP, "lr": lr, "warmup_steps": rule.warmup(shape.width)})
    if short:
        raise GridError(f"trainer.lr_sweep: at {budget:g} FLOPs these sizes train fewer than "
                        f"{MIN_STEPS} steps: {', '.join(short)}; raise lr_sweep.budget")
    return configs


class LRSweepProposer(Proposer):
    """Serves the sweep trials, waits for all of them, fits the rule, then serves the inner
    proposer's trials with the fitted LR and warmup. `metric` is the result field a sweep trial
    is judged by."""

    def __init__(self, sweep: list[dict], inner: Proposer, rule: LRRule, metric: str,
                 on_rule: Callable[[LRRule, list[SweepPoint], str | None], None] | None = None):
        self.sweep, self.inner, self.rule, self.on_rule = sweep, inner, rule, on_rule
        self.metric = metric
        self.next_index = 0
        self.running: dict[str, dict] = {}  # Tune trial id -> sweep config
        self.points: list[SweepPoint] = []
        self.fitted: LRRule | None = None
        self.error: str | None = None

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.next_index < len(self.sweep):
            config = dict(self.sweep[self.next_index])
            self.next_index += 1
            self.running[trial_id] = config
            return config
        if self.running:
            return None  # phase 2 starts when every sweep trial has ended
        if self.fitted is None:
            self._fit()
        config = self.inner.suggest(trial_id)
        if not isinstance(config, dict):
            return config
        width = int(config["width"])
        return {**config, "phase": STUDY, "lr": self.fitted.lr(width),
                "warmup_steps": self.fitted.warmup(width)}

    def _fit(self) -> None:
        try:
            self.fitted = fit_lr_rule(self.points, self.rule)
        except ValueError as err:  # every sweep trial diverged or failed: keep the spec's rule
            self.fitted, self.error = self.rule, f"LR sweep gave no rule ({err}); kept the spec's"
        if self.on_rule is not None:
            self.on_rule(self.fitted, list(self.points), self.error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.running:
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        config = self.running.pop(trial_id, None)
        if config is None:
            self.inner.on_trial_complete(trial_id, result=result, error=error)
            return
        loss = float("inf")
        if not error and result and not result.get("diverged"):
            loss = float(result.get(self.metric, float("inf")))
        self.points.append(SweepPoint(int(config["width"]), float(config["lr"]), loss))

    def get_state(self) -> dict:
        return {"next_index": self.next_index, "running": self.running, "points": self.points,
                "fitted": self.fitted, "error": self.error, "sweep": self.sweep,
                "inner": self.inner.get_state()}

    def set_state(self, state: dict) -> None:
        self.inner.set_state(state.pop("inner"))
        for key, value in state.items():
            setattr(self, key, value)



def rule_params(rule: LRRule, prefix: str = "lr_rule.") -> dict[str, str]:
    """A rule as MLflow params."""
    fields = {"base_lr": f"{rule.base_lr:.6g}", "ref_width": rule.ref_width,
              "lr_exponent": f"{rule.lr_exponent:.4g}", "warmup_steps": rule.warmup_steps,
              "warmup_exponent": f"{rule.warmup_exponent:.4g}"}
    return {f"{prefix}{k}": str(v) for k, v in fields.items()}
