"""Run reuse: one trunk per model size, a short cooldown branch per budget.

With a constant-then-cooldown schedule (`scaling.schedule`), runs of one model that differ only in
their length follow the same LR, batch and data stream up to the first step of their cooldown
(Hägele et al. 2024, arXiv 2405.18392). So the longest run of a size (the trunk) can save a
checkpoint at each shorter run's cooldown start, and each shorter run (a branch) restores that
checkpoint and trains only its cooldown. The data stream is indexed by step and the RNG state is
in the checkpoint, so a branch trains the very steps its from-scratch run would.

A run branches off its group's trunk only when the two LRs agree at every step before the branch
point: the same schedule kind (constant_cooldown), peak LR, floor and warmup, and a branch point
no later than the trunk's own cooldown start. Anything else trains from scratch.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from scaling.schedule import LRSchedule


@dataclass(frozen=True)
class Branch:
    """A run that restores its trunk's checkpoint at `step` and trains steps `step`..`steps`."""

    key: str
    trunk: str  # key of the trunk run
    step: int  # optimizer steps already taken by the trunk at the branch point
    steps: int  # the branch's whole run, as from scratch

    @property
    def trained_steps(self) -> int:
        return self.steps - self.step


@dataclass(frozen=True)
class ReusePlan:
    """Which runs branch off which trunk, and where."""

    branches: tuple[Branch, ...] = ()

    def branch_of(self, key: str) -> Branch | None:
        return next((b for b in self.branches if b.key == key), None)

    def branch_points(self, trunk: str) -> tuple[int, ...]:
        """The steps at which `trunk` saves a checkpoint for its branches, ascending."""
        return tuple(sorted({b.step for b in self.branches if b.trunk == trunk}))

    def trained_fraction(self, key: str) -> float:
        """The share of a run's steps (so of its FLOPs) that it trains itself: 1 for a trunk or
        a run from scratch, its cooldown's share for a branch."""
        b = self.branch_of(key)
        return 1.0 if b is None else b.trained_steps / b.steps


def _same_lr_until(branch: LRSchedule, trunk: LRSchedule, step: int) -> bool:
    """Whether the two schedules give the same LR at every step before `step`."""
    return (branch.kind == trunk.kind == "constant_cooldown"
            and branch.peak_lr == trunk.peak_lr and branch.min_lr_ratio == trunk.min_lr_ratio
            and branch.warmup == trunk.warmup and step <= trunk.cooldown_start)


def branch_point(branch: LRSchedule, trunk: LRSchedule) -> int | None:
    """The step at which a run with schedule `branch` can restore a checkpoint of a run of the
    same model with schedule `trunk`: its own cooldown start, when that is past step 0 and the
    two LRs agree until there; None when it cannot branch."""
    start = branch.cooldown_start
    if 0 < start < branch.total_steps and _same_lr_until(branch, trunk, start):
        return start
    return None


def plan_reuse(runs: Iterable[tuple[str, Hashable, LRSchedule]]) -> ReusePlan:
    """Branches for `runs`, given as (key, group, schedule): runs of one group are the same
    model, batch, seed and data, differing only in length. Each group's longest run (the first of
    equal ones) is its trunk; a shorter run branches off it at its own cooldown start when the LRs
    agree until there and that start is past step 0."""
    groups: dict[Hashable, list[tuple[str, LRSchedule]]] = {}
    for key, group, schedule in runs:
        groups.setdefault(group, []).append((key, schedule))
    branches = []
    for members in groups.values():
        trunk_key, trunk = max(members, key=lambda m: m[1].total_steps)
        for key, schedule in members:
            start = branch_point(schedule, trunk)
            if key != trunk_key and start is not None:
                branches.append(Branch(key, trunk_key, start, schedule.total_steps))
    return ReusePlan(tuple(branches))
