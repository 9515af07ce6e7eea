"""The end of a study's execution: the allocator's decisions, the laws, the study run closed,
and the outcome `run`, `resume` and `refine` print."""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune.search import Searcher

from search.branches import study_cost
from search.results import fit_and_log
from search.study.execute import Execution
from search.study.session import StudySession
from search.trial_log import Usage

DECISIONS_FILE = "allocator_decisions.json"


@dataclass(frozen=True)
class StudyOutcome:
    """What one execution of a study did: trials trained now (`finished`, `failed`), trials
    finished by earlier executions (`reused`), the laws and figures."""

    study_run_id: str
    finished: int
    failed: int
    laws_text: str
    figures: list[Path]
    startup_seconds: list[float]
    wall_seconds: float
    usage: list[Usage] = field(default_factory=list)  # simulated trials: when GPUs were held
    decisions: list[dict] = field(default_factory=list)  # the allocator's, in order
    reused: int = 0


def searcher_decisions(experiment: str) -> list[dict]:
    """The allocator's decisions from the searcher state Tune saved last in the study's own
    (trusted) storage; none for a grid."""
    path = Path(experiment)
    files = sorted(path.glob(Searcher.CKPT_FILE_TMPL.format("*"))) if path.is_dir() else []
    if not files:
        return []
    with open(files[-1], "rb") as f:
        state = pickle.load(f)
    while isinstance(state, dict) and "allocator" not in state and "inner" in state:
        state = state["inner"]  # through the reuse and LR-sweep wrappers
    return list(state.get("allocator", {}).get("decisions", [])) if isinstance(state, dict) else []


def finish(session: StudySession, execution: Execution, t0: float,
           previous_decisions: list[dict] | None = None) -> StudyOutcome:
    """Log the decisions, fit and log the laws, mark the study run finished."""
    tracking, out, progress = session.tracking, session.out, execution.progress
    out(progress.startup_summary())
    decisions = (previous_decisions or []) + searcher_decisions(execution.experiment)
    if decisions:
        tracking.client.log_text(session.study_run_id, json.dumps(decisions, indent=1),
                                 DECISIONS_FILE)
    records = tracking.trial_records(session.study_run_id,
                                     tracking.experiment_id(session.spec.name))
    if session.spec.trainer.reuse == "cooldown":
        cost = study_cost(records)
        out(cost.line("the study trained"))
        tracking.log_metrics(session.study_run_id, {"flops_points": cost.points,
                                                    "flops_trained": cost.trained})
    laws_text, figures = fit_and_log(tracking, session.spec, session.study_run_id, records, out,
                                     session.info.content_hash if session.info else None)
    startup = progress.startup_seconds()
    if startup:
        median = sorted(startup)[len(startup) // 2]
        tracking.log_metrics(session.study_run_id, {"trial_startup_s_median": median})
    tracking.set_status(session.study_run_id, "finished")
    new = progress.done - progress.reused
    return StudyOutcome(session.study_run_id, new, progress.failed, laws_text, figures, startup,
                        time.monotonic() - t0, execution.usage, decisions, execution.reused)
