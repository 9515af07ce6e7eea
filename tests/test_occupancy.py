"""Occupancy and makespan from hand-made trial timings."""

import pytest

from search.occupancy import measure
from search.trial_log import Usage


def test_occupancy_makespan_and_peak():
    usage = [Usage("a", 2, 0.0, 10.0, 1.0, 9.0),  # holds 2 GPUs 10 s, computes 8 s
             Usage("b", 2, 0.0, 10.0, 0.5, 9.5),
             Usage("c", 4, 10.0, 20.0, 10.0, 20.0)]
    occ = measure(usage, gpus=4)
    assert occ.makespan_s == 20.0 and occ.peak_gpus == 4
    assert occ.compute_gpu_s == pytest.approx(2 * 8 + 2 * 9 + 4 * 10)
    assert occ.occupancy == pytest.approx(74 / 80)
    assert occ.held_occupancy == pytest.approx(1.0)
    assert occ.lower_bound_s == pytest.approx(74 / 4)
    assert occ.makespan_ratio == pytest.approx(20 / 18.5)
    assert occ.overhead_per_trial_s == pytest.approx((2 + 1 + 0) / 3)
    assert occ.timeline[-1] == pytest.approx(1.0)


def test_untimed_trials_are_refused():
    with pytest.raises(ValueError, match="time_scale"):
        measure([Usage("a", 1, 0.0, 1.0, None, None)], gpus=8)
