"""`dit-scaling validate`: train the law's compute-optimal model at a budget above every fitted
one, and hold the law to it.

The paper's strongest evidence is such a check (its predicted ~1B model at 1.5e21 FLOPs matched
the loss law). Here the study's fitted law predicts, at `budget` FLOPs, N_opt with its interval
and the loss at the optimum; the validation trains the nearest ladder size to N_opt (with
`sizes=3`, also x0.5 and x2 around it) as ordinary trials of the study, through the same flow as
`run`, nested under a validation run (`dit.kind = validation`) under the study run. They are not
isoFLOP points of the study: the law is not refitted on them. The result (predicted against
measured loss, by the loss law and by Approach 3's L(N, D) at the N and D trained, and with three
sizes whether the measured optimum, the vertex of a parabola in log N through them, lies in the
predicted N_opt interval) is logged on the validation run, which `laws` shows.

The measured loss is one run's, so it carries the seed noise the study's own runs show about their
curves: each prediction is printed with its interval and with the interval one run falls in (the
law's draws with that noise on each, `LawFit.loss_run_interval`, `approach3_run_interval`), and
"inside" or "outside" is said of the latter. On 30 simulated studies whose law is right (2% seed
noise, tests/test_laws_fit.py), Approach 3's expected-loss interval held the validation run's
loss in 18 and one run's interval in all 30; benchmarks/calibration.py's "log10 one run" rows
measure the latter's coverage on every design. Likewise three runs' vertex is held to where such a
vertex falls if the N_opt law holds (`LawFit.vertex_run_interval`: the law's draws moved by the
noise and window bias of three runs on Approach 3's curves), not to the law's own interval, which
held it in 8 of 28 simulated studies at 0.5% noise (tests/test_laws_fit.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from scaling.ladder import nearest
from scaling.laws.isoflop import vertices
from scaling.laws.result import LawFit, Prediction
from search.grid import GridProposer, TrialSpec, plan, trial_config
from search.records import KIND, PARENT, STATUS, STUDY
from search.results import load_laws
from search.spec import SpecError
from search.study.execute import execute
from search.study.proposers import ReuseFinished
from search.study.session import StudySession, open_session
from search.validation_summary import LAST_VALIDATION_TAG, VALIDATION_TAG, summary_text

SIZE_FACTORS = {1: (1.0,), 3: (0.5, 1.0, 2.0)}


@dataclass(frozen=True)
class ValidationPlan:
    """What a validation trains: trials at `budget` FLOPs around the predicted N_opt."""

    study: str
    budget: float
    decades: float  # log10(budget / largest fitted budget)
    trials: tuple[TrialSpec, ...]
    steps: tuple[int, ...]
    laws: LawFit  # the study's fitted laws, Approach 3's L(N, D) and the runs' seed noise in them

    @property
    def prediction(self) -> Prediction:
        """The laws' N_opt, D_opt and loss at the budget, with their intervals."""
        return self.laws.predict(self.budget)

    def text(self) -> str:
        p = self.prediction
        lines = [f"validation of study {self.study} at C = {self.budget:.3g} FLOPs (6ND or the "
                 f"study's convention, a multiply-add = 2 FLOPs), {self.decades:.2f} decades above "
                 "the largest fitted budget",
                 f"  predicted N_opt {p.n_opt.text()} parameters, loss at the optimum "
                 f"{p.loss.text()}"]
        for t, steps in zip(self.trials, self.steps, strict=True):
            lines.append(f"  train {t.key}: N = {t.params:,} parameters, "
                         f"D = {self.budget / (6 * t.params):.3g} tokens, {steps} steps, "
                         f"{self.budget:.3g} FLOPs")
        lines.append(f"  total {self.budget * len(self.trials):.3g} FLOPs")
        return "\n".join(lines)


def plan_validation(session: StudySession, budget: float, sizes: int) -> ValidationPlan:
    """The trials a validation at `budget` would train, checked against the study's law."""
    if sizes not in SIZE_FACTORS:
        raise SpecError(f"--sizes {sizes}: give 1 or 3")
    spec = session.spec
    fit, _ = load_laws(session.tracking, spec.name)
    largest = fit.compute_range[1]
    if not budget > largest:
        raise SpecError(f"--budget {budget:g}: a validation needs a budget above the largest "
                        f"fitted one ({largest:g} FLOPs)")
    prediction = fit.predict(budget)
    if not (prediction.n_opt.value > 0 and math.isfinite(prediction.n_opt.value)):
        raise SpecError(f"study {spec.name!r}: its N_opt law gives no size at {budget:g} FLOPs")
    trials, seen = [], set()
    for factor in SIZE_FACTORS[sizes]:
        shape, n = nearest(prediction.n_opt.value * factor, session.template,
                           spec.model.depth)
        if shape not in seen:
            seen.add(shape)
            trials.append(TrialSpec(budget, shape, n))
    steps = tuple(plan(spec, session.template, t).steps for t in trials)
    return ValidationPlan(spec.name, budget, math.log10(budget / largest), tuple(trials), steps,
                          fit)


def measured_optimum(params: list[float], losses: list[float]) -> float | None:
    """The vertex of the parabola in log10 N through three or more points (None without a
    minimum between them)."""
    if len(params) < 3:
        return None
    at = float(vertices(np.asarray(params), np.asarray(losses)))
    return None if math.isnan(at) else float(10 ** at)


def validate_study(study: str, tracking_uri: str, budget: float, sizes: int = 1,
                   dry_run: bool = False, out: Callable[[str], None] = print) -> dict:
    """Plan (and unless `dry_run`, train and compare) a validation; returns its summary."""
    session, run = open_session(study, tracking_uri, out)
    vplan = plan_validation(session, budget, sizes)
    out(vplan.text())
    if dry_run:
        return {"dry_run": True, "budget": budget, "trials": [t.key for t in vplan.trials]}
    tracking, spec = session.tracking, session.spec
    exp = run.info.experiment_id
    vrun = tracking.client.create_run(exp, run_name=f"{spec.name}-validate-{budget:.3g}", tags={
        KIND: "validation", STUDY: spec.name, PARENT: session.study_run_id, STATUS: "running"})
    vid = vrun.info.run_id
    tracking.log_params(vid, {"budget": f"{budget:.6g}", "sizes": str(sizes),
                              "decades": f"{vplan.decades:.3f}"})
    vsession = replace(session, study_run_id=vid, kind="validation",
                       experiment=f"{session.experiment}-validate-{vid[:8]}")
    configs = [{**trial_config(spec, session.template, t), "phase": "validation"}
               for t in vplan.trials]
    proposer = ReuseFinished(GridProposer(configs), tracking.uri, spec.name, vid)
    execute(vsession, proposer, len(configs))
    summary = _compare(vplan, tracking.trial_records(vid, exp), spec.metric)
    tracking.set_tags(vid, {VALIDATION_TAG: json.dumps(summary)})
    tracking.set_tags(session.study_run_id, {LAST_VALIDATION_TAG: json.dumps(summary)})
    tracking.log_metrics(vid, {k: v for k, v in summary.items()
                               if isinstance(v, float) and math.isfinite(v)})
    tracking.set_status(vid, "finished")
    out(summary_text(summary))
    return summary


def _compare(vplan: ValidationPlan, records, metric: str) -> dict:
    p = vplan.prediction
    by_key = {r.trial_key: r for r in records if r.status == "finished"}
    centre = next(t for t in vplan.trials
                  if t.params == min((t.params for t in vplan.trials),
                                     key=lambda n: abs(math.log(n / p.n_opt.value))))
    measured = by_key.get(centre.key)
    loss = measured.metrics.get(metric) if measured else None
    summary: dict = {"budget": vplan.budget, "decades": vplan.decades, "metric": metric,
                     "predicted_loss": p.loss.value, "predicted_n_opt": p.n_opt.value,
                     "trial": centre.key, "params": float(centre.params)}
    if p.loss.ci is not None:
        summary["predicted_loss_lo"], summary["predicted_loss_hi"] = map(float, p.loss.ci)
    # The measured loss is one run's, with its seed noise: it is held to the interval one run
    # would fall in, not to the (narrower) interval of the expected loss.
    if (run := vplan.laws.loss_run_interval(vplan.budget)) is not None:
        summary["predicted_loss_run_lo"], summary["predicted_loss_run_hi"] = run
    if p.n_opt.ci is not None:
        summary["predicted_n_opt_lo"], summary["predicted_n_opt_hi"] = map(float, p.n_opt.ci)
    if loss is not None:
        summary["measured_loss"] = float(loss)
        summary["loss_error"] = float(loss / p.loss.value - 1)
        surface = vplan.laws.approach3
        if surface is not None and not surface.at_bound:
            # The loss law is a pure power of C; the surface also carries an irreducible loss E,
            # which a small study's loss at the optimum approaches as C grows.
            tokens = measured.param("tokens")
            predicted = float(surface.loss(centre.params, tokens))
            summary["approach3_loss"] = predicted
            summary["approach3_error"] = float(loss / predicted - 1)
            summary["tokens"] = tokens
            ci = surface.loss_interval(centre.params, tokens)
            if ci is not None:
                summary["approach3_loss_lo"], summary["approach3_loss_hi"] = ci
            run = vplan.laws.approach3_run_interval(centre.params, tokens)
            if run is not None:
                summary["approach3_loss_run_lo"], summary["approach3_loss_run_hi"] = run
    points = [(float(t.params), by_key[t.key].metrics[metric]) for t in vplan.trials
              if t.key in by_key and metric in by_key[t.key].metrics]
    if len(vplan.trials) == 3:
        vertex = measured_optimum([n for n, _ in points], [v for _, v in points])
        summary["measured_n_opt"] = vertex
        band = p.n_opt.ci
        if len(points) == 3:
            # Three runs' vertex carries their seed noise and their window's bias: it is held to
            # where such a vertex falls if the law holds, not to the law's own N_opt interval.
            run = vplan.laws.vertex_run_interval(
                vplan.budget, [t.params for t in vplan.trials],
                [by_key[t.key].param("tokens") for t in vplan.trials])
            if run is not None:
                band = run[:2]
                summary["measured_n_opt_run_lo"], summary["measured_n_opt_run_hi"] = band
                summary["no_minimum_share"] = run[2]
        if vertex is not None and band is not None:
            summary["n_opt_in_interval"] = bool(band[0] <= vertex <= band[1])
    return summary
