"""Run reuse plans: which runs branch off which trunk, and at which step."""

import pytest

from scaling.reuse import Branch, ReusePlan, plan_reuse
from scaling.schedule import LRSchedule


def sched(steps, warmup=10, kind="constant_cooldown", lr=1e-3, fraction=0.2):
    return LRSchedule(lr, steps, warmup, kind, fraction)


def test_each_shorter_run_branches_off_its_sizes_longest_at_its_cooldown_start():
    plan = plan_reuse([("a1", "A", sched(100)), ("a3", "A", sched(300)), ("a2", "A", sched(200)),
                       ("b1", "B", sched(150)), ("b2", "B", sched(50))])
    assert set(plan.branches) == {Branch("a1", "a3", 80, 100), Branch("a2", "a3", 160, 200),
                                  Branch("b2", "b1", 40, 50)}
    assert plan.branch_points("a3") == (80, 160) and plan.branch_points("a1") == ()
    assert plan.branch_of("a3") is None and plan.branch_of("a2").trained_steps == 40
    assert plan.trained_fraction("a3") == 1.0
    assert plan.trained_fraction("a1") == pytest.approx(0.2)


@pytest.mark.parametrize("short", [
    sched(100, lr=2e-3),  # another peak LR
    sched(100, kind="cosine"),  # no constant phase to share
    sched(30, warmup=20),  # warmup capped at half of 30 steps: 15, not the trunk's 20
    sched(100, fraction=0.0),  # no cooldown: nothing to branch into
])
def test_runs_whose_lr_differs_before_the_branch_point_train_from_scratch(short):
    trunk = sched(300, warmup=20) if short.warmup_steps == 20 else sched(300)
    assert plan_reuse([("t", "A", trunk), ("s", "A", short)]) == ReusePlan()


def test_a_branch_point_past_the_trunks_own_cooldown_is_refused():
    # a run of 100 steps cooling down over 5% would branch at step 95, inside the cooldown the
    # trunk starts at step 88 (20% of 110 steps)
    trunk, late = sched(110), sched(100, fraction=0.05)
    assert plan_reuse([("t", "A", trunk), ("s", "A", late)]) == ReusePlan()
