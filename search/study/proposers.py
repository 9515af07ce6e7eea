"""What a study trains next, for every study kind, built the same way by `run`, `resume`,
`refine` and `plan`. Every layer is a `search.proposal.Proposer` (no Ray): `execute` hands the
outermost one to Tune through `search.study.tune_searcher.TuneSearcher`.

- the fixed grid: the spec's [model] sizes per budget, centred on the allocator's prior (the
  6ND heuristic when the prior is "none"): `grid_trials`; with `trainer.reuse = "cooldown"`,
  served so that each branch waits for its trunk (`search.branches`);
- the adaptive allocator (`search.allocator`) behind `AllocatorProposer`, seeded with a study's
  finished trials by `refine`;
- an LR sweep (`search.lr_sweep`) in front of either, when the spec asks for one;
- outermost, `ReuseFinished`: a proposal that MLflow already holds as finished (a study resumed
  after its driver stopped) is completed from its record instead of being dispatched again.
"""

from __future__ import annotations

from collections.abc import Callable

from scaling.hparams import LRRule, SweepPoint, best_lrs
from scaling.model import DiTConfig, ModelShape
from search.allocator import Allocator, Prior, SizeCatalogue
from search.branches import BranchingGridProposer, grid_cost, reuse_plan, with_branches
from search.grid import GridProposer, TrialSpec, fixed_grid, trial_config
from search.lr_sweep import LRSweepProposer, rule_params, spec_rule, sweep_configs
from search.proposal import FINISHED, Proposer
from search.spec import StudySpec
from search.tracking import Tracking

FINAL_STATES = ("finished", "diverged")  # a trial with one of these statuses is never rerun


def grid_centre(prior: Prior, spec: StudySpec) -> Callable[[float], float] | None:
    """Each budget's grid centre: the prior's N_opt, or None (the 6ND heuristic of the grid)."""
    return None if spec.allocator.prior == "none" else prior


def grid_trials(spec: StudySpec, template: DiTConfig, prior: Prior) -> list[TrialSpec]:
    """The fixed grid's trials, as `run` trains them and `plan` simulates them: budget by
    budget in `allocator.order` of compute (costliest first for "descending")."""
    trials = fixed_grid(spec, template, grid_centre(prior, spec))
    return sorted(trials, key=lambda t: t.budget, reverse=spec.allocator.order == "descending")


class AllocatorProposer(Proposer):
    """Serves the adaptive allocator's proposals as trial configs and feeds it every trial's
    final metric (None when the trial failed or diverged)."""

    def __init__(self, spec: StudySpec, template: DiTConfig, prior: Prior,
                 out: Callable[[str], None] | None = None,
                 extra_shapes: list[ModelShape] | tuple = ()):
        self.spec, self.template = spec, template
        self.allocator = Allocator(spec, SizeCatalogue(spec, template, extra_shapes), prior, out)
        self.issued: dict[str, str] = {}  # trial id -> trial key

    def suggest(self, trial_id: str) -> dict | str | None:
        point = self.allocator.suggest()
        if point is None or point == FINISHED:
            return point
        self.issued[trial_id] = point.key
        return self.allocator.config(point)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key = self.issued.get(trial_id)
        if key is not None and "step" in result:
            self.allocator.progress(key, int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        key = self.issued.get(trial_id)
        if key is None:
            return
        loss = None
        if not error and result and not result.get("diverged"):
            loss = result.get(self.spec.metric)
        self.allocator.complete(key, loss)

    def get_state(self) -> dict:
        return {"allocator": self.allocator.get_state(), "issued": dict(self.issued)}

    def set_state(self, state: dict) -> None:
        self.allocator.set_state(state["allocator"])
        self.issued = dict(state["issued"])


class ReuseFinished(Proposer):
    """Completes, from its MLflow record, every proposal the study already finished, so a resumed
    study never dispatches such a trial again. The records are read once, at the first
    proposal of this driver (a study has one driver at a time)."""

    def __init__(self, inner: Proposer, tracking_uri: str, study: str, study_run_id: str):
        self.inner = inner
        self.tracking_uri, self.study, self.study_run_id = tracking_uri, study, study_run_id
        self.reused: list[str] = []
        self._records: dict[str, dict] | None = None

    def _finished(self) -> dict[str, dict]:
        if self._records is None:
            tracking = Tracking(self.tracking_uri)
            records = tracking.trial_records(self.study_run_id,
                                             tracking.experiment_id(self.study))
            self._records = {r.trial_key: {**r.metrics, "trial_key": r.trial_key}
                             for r in records if r.status in FINAL_STATES}
        return self._records

    def suggest(self, trial_id: str) -> dict | str | None:
        while True:
            config = self.inner.suggest(trial_id)
            if not isinstance(config, dict):
                return config
            done = self._finished().get(config.get("trial_key"))
            if done is None:
                return config
            self.reused.append(config["trial_key"])
            self.inner.on_trial_complete(trial_id, result=done, error=False)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return {"inner": self.inner.get_state(), "reused": list(self.reused)}

    def set_state(self, state: dict) -> None:
        self.inner.set_state(state["inner"])
        self.reused = list(state.get("reused", []))
        self._records = None  # read again: this is a new driver


def inner_proposer(spec: StudySpec, template: DiTConfig, prior: Prior,
                   out: Callable[[str], None], extra_shapes: list[ModelShape] | tuple = ()
                   ) -> tuple[Proposer, int | None]:
    """The grid or the allocator (its size ladder extended by `extra_shapes`, the sizes a study
    already trained), and the number of planned trials when it is known."""
    if spec.allocator.kind == "adaptive":
        return AllocatorProposer(spec, template, prior, out, extra_shapes), None
    trials = grid_trials(spec, template, prior)
    configs = [trial_config(spec, template, t) for t in trials]
    if spec.trainer.reuse == "off":
        return GridProposer(configs), len(trials)
    reuse = reuse_plan(spec, template, trials)
    out(grid_cost(spec, template, trials, reuse).line())
    return BranchingGridProposer(with_branches(configs, reuse)), len(trials)


def with_lr_sweep(spec: StudySpec, template: DiTConfig, inner: Proposer, prior: Prior,
                  on_rule: Callable[[LRRule, list[SweepPoint], str | None], None]
                  ) -> tuple[Proposer, list[dict]]:
    """`inner` behind the spec's LR sweep (its sizes from the grid around the prior), or `inner`
    itself when the spec has none."""
    if spec.trainer.lr_sweep is None:
        return inner, []
    sweep = sweep_configs(spec, template, grid_trials(spec, template, prior))
    return LRSweepProposer(sweep, inner, spec_rule(spec), spec.metric, on_rule=on_rule), sweep


def study_proposer(session, prior: Prior, inner: Proposer, planned: int | None
                   ) -> tuple[Proposer, int | None]:
    """The study's proposer around `inner` (from `inner_proposer`): the LR sweep when the
    spec asks for one, outermost `ReuseFinished`; and the trials it plans (sweep included) when
    that is known. The LR rule it uses (the spec's, or the sweep's fit) is logged on the study
    run (a `search.study.session.StudySession`)."""
    spec, template, out = session.spec, session.template, session.out
    tracking, study_run_id = session.tracking, session.study_run_id

    def log_rule(fitted: LRRule, points: list[SweepPoint], error: str | None) -> None:
        best = best_lrs(points)
        out(error or (f"LR rule fitted on {len(best)} widths: lr(w) = {fitted.base_lr:.3g} x "
                      f"({fitted.ref_width} / w)^{fitted.lr_exponent:.3f}"))
        tracking.log_params(study_run_id, rule_params(fitted))
        tracking.log_metrics(study_run_id, {f"lr_sweep.best_lr.w{w}": lr for w, lr in best.items()})
        if error:
            tracking.set_tags(study_run_id, {"dit.lr_sweep_error": error})

    proposer, sweep = with_lr_sweep(spec, template, inner, prior, log_rule)
    if sweep:
        widths = sorted({c["width"] for c in sweep})
        factors = len(set(spec.trainer.lr_sweep.factors))
        out(f"LR sweep first: {len(sweep)} trials, widths {widths} x {factors} LR multiples at "
            f"{sweep[0]['budget']:g} FLOPs")
    elif not spec.simulated and "lr_rule.base_lr" not in tracking.client.get_run(
            study_run_id).data.params:  # logged once: MLflow refuses a param changed later
        tracking.log_params(study_run_id, rule_params(spec_rule(spec)))
    total = planned + len(sweep) if planned is not None else None
    return ReuseFinished(proposer, tracking.uri, spec.name, study_run_id), total
