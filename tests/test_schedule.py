"""Learning-rate schedules: warmup, then constant, cosine or constant with a (1 - sqrt) cooldown."""

import math

import pytest

from scaling.schedule import LRSchedule


def test_warmup_is_linear_then_constant():
    s = LRSchedule(1e-3, total_steps=100, warmup_steps=10, kind="constant")
    assert s(0) == pytest.approx(1e-4)
    assert s(9) == pytest.approx(1e-3)
    assert s(50) == s(99) == 1e-3


def test_cosine_reaches_floor():
    s = LRSchedule(1.0, total_steps=110, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(110) == pytest.approx(0.1)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_cooldown_is_one_minus_sqrt():
    s = LRSchedule(1.0, total_steps=100, kind="constant_cooldown", cooldown_fraction=0.2)
    assert s(79) == 1.0
    assert s(80) == pytest.approx(1 - math.sqrt(1 / 20))
    assert s(99) == pytest.approx(0.0)


def test_warmup_capped_at_half_of_short_runs():
    s = LRSchedule(1.0, total_steps=10, warmup_steps=100)
    assert s(4) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"peak_lr": 0, "total_steps": 10}, "peak_lr"),
    ({"peak_lr": 1, "total_steps": 0}, "total_steps"),
    ({"peak_lr": 1, "total_steps": 5, "kind": "linear"}, "schedule 'linear'"),
])
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRSchedule(**kwargs)
