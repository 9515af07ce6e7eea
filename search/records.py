"""How the service labels its runs in MLflow, and what it reads back from them.

Tag names and the record types live here, apart from `search.tracking`, so that code which only
reads (the query commands, `search.local_store`) names them without importing MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search.errors import TrackingError

KIND = "dit.kind"  # "study" or "trial"
STUDY = "dit.study"
TRIAL_KEY = "dit.trial_key"
BUDGET = "dit.budget"
STATUS = "dit.status"  # running, finished, failed, diverged
LAWS_TAG = "dit.laws"  # "1" once the study run holds fitted laws
PARENT = "mlflow.parentRunId"
# A trial run's study run: its parent, or for a cooldown branch its trunk's parent (a branch is
# nested under its trunk's run). Stores written before this tag hold only the parent.
STUDY_RUN = "dit.study_run"
LAWS_FILE = "laws.json"
# A trial's run-reuse fields (its Tune config keys and MLflow params): the steps at which a trunk
# leaves a checkpoint for its branches; a branch's trunk key and the step it restores
BRANCH_POINTS, BRANCH_OF, BRANCH_STEP = "branch_points", "branch_of", "branch_step"


@dataclass(frozen=True)
class TrialRecord:
    """A finished (or failed) trial as MLflow holds it."""

    run_id: str
    trial_key: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]

    def param(self, name: str, cast=float):
        return cast(self.params[name])


def latest_study_run(runs: Sequence[Any], study: str, uri: str, with_laws: bool = False):
    """The first of a study's runs (newest first), or only of those with fitted laws; a
    TrackingError naming the study and the store when there is none."""
    if with_laws:
        runs = [r for r in runs if r.data.tags.get(LAWS_TAG) == "1"]
    if not runs:
        what = "with fitted laws " if with_laws else ""
        raise TrackingError(f"study {study!r} has no study run {what}in MLflow at {uri}")
    return runs[0]
