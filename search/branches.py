"""Run reuse in a study (`trainer.reuse = "cooldown"`): the grid's trunks and cooldown branches.

`scaling.reuse` decides which trials branch off which trunk; this module applies that to a study:
the branch fields of each trial config, where a trunk leaves its branch-point checkpoints, what
the grid costs with and without reuse, and the proposer that starts a branch only once its
trunk has passed the branch point (or ended: a branch whose checkpoint never came trains from
scratch, at full cost).

A branch's trial is the same isoFLOP point as from scratch (same key, budget, shape and MLflow
record), so the fits and queries read it like any other; its run is tagged with its trunk and
branch step. Branch-point checkpoints live in the study's storage (a local or shared path, as
Ray's storage is), one directory per trunk and step, written before the trunk reports the step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from scaling.model import DiTConfig
from scaling.reuse import ReusePlan, branch_point, plan_reuse
from scaling.schedule import LRSchedule
from search.grid import MIN_STEPS, TrialSpec, plan
from search.lr_sweep import spec_rule
from search.proposal import FINISHED, Proposer
from search.records import BRANCH_OF, BRANCH_POINTS, BRANCH_STEP, TrialRecord
from search.spec import StudySpec


def trial_schedule(spec: StudySpec, template: DiTConfig, trial: TrialSpec) -> LRSchedule:
    """The LR schedule a grid trial trains with: the spec's rule at its width, over its steps."""
    rule, t, width = spec_rule(spec), spec.trainer, trial.shape.width
    return LRSchedule(rule.lr(width), plan(spec, template, trial).steps, rule.warmup(width),
                      t.schedule, t.cooldown_fraction)


def reuse_plan(spec: StudySpec, template: DiTConfig, trials: list[TrialSpec]) -> ReusePlan:
    """The grid's branches: each (shape, seed) trains once as its longest trial; none when the
    spec does not ask for reuse."""
    if spec.trainer.reuse != "cooldown":
        return ReusePlan()
    return plan_reuse((t.key, (t.shape, t.repeat), trial_schedule(spec, template, t))
                      for t in trials)


def branch_step(spec: StudySpec, template: DiTConfig, branch: TrialSpec,
                trunk: TrialSpec) -> int | None:
    """The step at which `branch` restores `trunk` (the same shape at a larger budget), or None
    when their schedules do not allow it (see `scaling.reuse.branch_point`)."""
    return branch_point(trial_schedule(spec, template, branch),
                        trial_schedule(spec, template, trunk))


def trunk_points(spec: StudySpec, template: DiTConfig, trial: TrialSpec) -> list[int]:
    """The steps at which `trial` saves a checkpoint so that the same shape at any smaller budget
    of the spec can branch off it: the adaptive allocator chooses its branches after their trunk
    has started, so a trunk keeps every point a branch could need."""
    steps = set()
    for budget in spec.budgets:
        if budget < trial.budget:
            branch = replace(trial, budget=float(budget))
            if plan(spec, template, branch).steps >= MIN_STEPS:
                step = branch_step(spec, template, branch, trial)
                if step is not None:
                    steps.add(step)
    return sorted(steps)


def with_branches(configs: list[dict], reuse: ReusePlan) -> list[dict]:
    """Trial configs with their branch fields: a trunk's branch points, a branch's trunk key and
    step."""
    out = []
    for config in configs:
        key, extra = config["trial_key"], {}
        points = reuse.branch_points(key)
        if points:
            extra[BRANCH_POINTS] = list(points)
        branch = reuse.branch_of(key)
        if branch is not None:
            extra.update({BRANCH_OF: branch.trunk, BRANCH_STEP: branch.step})
        out.append({**config, **extra})
    return out


def reuse_params(config: dict) -> dict:
    """A trial's MLflow params in a study with reuse: its part ("trunk", "branch" or "from
    scratch") and, for a branch, its trunk's key and branch step."""
    if BRANCH_OF in config:
        return {"reuse": "branch", BRANCH_OF: config[BRANCH_OF], BRANCH_STEP: config[BRANCH_STEP]}
    return {"reuse": "trunk" if config.get(BRANCH_POINTS) else "from scratch"}


@dataclass(frozen=True)
class GridCost:
    """FLOPs (the study's convention) of the grid's isoFLOP points, and those actually trained."""

    points: float
    trained: float
    branches: int
    trunks: int

    @property
    def saving(self) -> float:
        return 1.0 - self.trained / self.points if self.points else 0.0

    def line(self, trains: str = "the grid trains") -> str:
        return (f"reuse: {self.branches} trials branch off {self.trunks} trunks; {trains} "
                f"{self.trained:.3g} FLOPs for {self.points:.3g} FLOPs of isoFLOP points "
                f"({self.saving:.0%} saved)")


def grid_cost(spec: StudySpec, template: DiTConfig, trials: list[TrialSpec],
              reuse: ReusePlan) -> GridCost:
    """What the grid's points are worth and what training them costs under `reuse` (a branch
    trains only its cooldown; FLOPs are proportional to steps at a fixed size and batch)."""
    points = trained = 0.0
    for t in trials:
        p = plan(spec, template, t)
        flops = p.compute_6nd if spec.convention == "6ND" else p.compute_exact
        points += flops
        trained += flops * reuse.trained_fraction(t.key)
    trunks = {b.trunk for b in reuse.branches}
    return GridCost(points, trained, len(reuse.branches), len(trunks))


def study_cost(records: list[TrialRecord]) -> GridCost:
    """What a study's finished trials are worth (their budgets, FLOPs in the study's convention)
    and what training them cost: a branch only its steps from its branch step on."""
    points = trained = 0.0
    branches, trunks = 0, set()
    for r in records:
        if r.status != "finished" or "steps" not in r.params:
            continue
        budget, steps = float(r.params["budget"]), int(r.params["steps"])
        start = int(r.params.get(BRANCH_STEP) or 0) if r.params.get("reuse") == "branch" else 0
        points += budget
        trained += budget * (steps - start) / steps
        if start:
            branches += 1
            trunks.add(r.params.get(BRANCH_OF))
    return GridCost(points, trained, branches, len(trunks))


def branch_dir(storage_path: str, study: str, study_run_id: str, trunk: str, step: int) -> Path:
    """Where a trunk leaves its checkpoint at `step` for its branches."""
    return (Path(storage_path) / "branch-points" / f"{study}-{study_run_id[:8]}" / trunk
            / f"step-{step}")


def keep_branch_point(checkpoint_dir: str | Path, target: Path,
                      skip: tuple[str, ...] = ()) -> None:
    """Copy a checkpoint to `target` whole or not at all (copied beside it, then renamed), leaving
    out the files named in `skip`; a target already there is kept (a resumed trunk passing the
    point again wrote the same state)."""
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*skip))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise


class BranchingGridProposer(Proposer):
    """Serves a fixed list of trial configs in order, except that a branch waits until its
    trunk has reported its branch step or ended (finished, failed or completed from an earlier
    record): then its checkpoint is there, or will never be."""

    def __init__(self, configs: list[dict]):
        self.pending = [dict(c) for c in configs]
        self.issued: dict[str, str] = {}  # trial id -> trial key
        self.reached: dict[str, int] = {}  # trunk key -> last step it reported
        self.ended: list[str] = []  # keys of trials that ended

    def _ready(self, config: dict) -> bool:
        trunk = config.get(BRANCH_OF)
        return (trunk is None or trunk in self.ended
                or self.reached.get(trunk, 0) >= int(config[BRANCH_STEP]))

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.pending:
            return FINISHED
        index = next((i for i, c in enumerate(self.pending) if self._ready(c)), None)
        if index is None:
            return None  # every trial left waits for a trunk that is running
        config = self.pending.pop(index)
        self.issued[trial_id] = config["trial_key"]
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key = self.issued.get(trial_id)
        if key is not None and "step" in result:
            self.reached[key] = max(self.reached.get(key, 0), int(result["step"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        key = self.issued.get(trial_id)
        if key is not None and key not in self.ended:
            self.ended.append(key)

    def get_state(self) -> dict:
        return {"pending": self.pending, "issued": self.issued, "reached": self.reached,
                "ended": self.ended}

    def set_state(self, state: dict) -> None:
        self.pending = state["pending"]
        self.issued = state["issued"]
        self.reached = state["reached"]
        self.ended = state["ended"]
