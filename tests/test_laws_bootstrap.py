import numpy as np
import pytest

from scaling.laws.bootstrap import interval, resample, spreads


def test_resampling_stays_within_groups_and_keeps_three_sizes():
    params = np.array([1, 2, 3, 10, 20, 30, 40, 50.0])
    losses = np.linspace(1, 2, 8)
    groups = [np.arange(3), np.arange(3, 8)]
    r = resample(groups, params, losses, 500, np.random.default_rng(0))
    assert r.counts.shape == (500, 8) and r.draws == 500
    assert np.all(r.counts[:, :3].sum(1) == 3)
    assert np.all(r.counts[:, 3:].sum(1) == 5)
    # A three-run group can only keep three sizes by taking each run once.
    assert np.all(r.counts[:, :3] == 1)
    assert np.all((r.counts[:, 3:] > 0).sum(1) >= 3)
    assert np.array_equal(r.losses, np.broadcast_to(losses, (500, 8)))
    # The bigger group really is resampled.
    assert r.counts[:, 3:].std() > 0.5


def test_repeated_sizes_count_once():
    params = np.array([1, 1, 1, 2, 3.0])  # three seeds of one size
    r = resample([np.arange(5)], params, np.ones(5), 300, np.random.default_rng(1))
    present = r.counts > 0
    assert np.all(present[:, :3].any(1) & present[:, 3] & present[:, 4])


def test_noise_is_relative_with_the_given_sd():
    params = np.arange(1, 10.0)
    losses = np.full(9, 2.0)
    r = resample([np.arange(9)], params, losses, 4000, np.random.default_rng(2), noise_sigma=0.01)
    rel = np.log(r.losses / 2.0)
    assert rel.std() == pytest.approx(0.01, rel=0.05)


def test_interval_is_the_central_95_percent():
    draws = np.arange(1001.0)
    lo, hi = interval(draws)
    assert lo == pytest.approx(25.0) and hi == pytest.approx(975.0)


def test_noise_can_differ_per_run():
    params = np.arange(1, 7.0)
    sigma = np.array([0, 0, 0, 0.02, 0.02, 0.02])
    r = resample([np.arange(3), np.arange(3, 6)], params, np.ones(6), 2000,
                 np.random.default_rng(3), noise_sigma=sigma)
    assert np.all(r.losses[:, :3] == 1.0)
    assert np.log(r.losses[:, 3:]).std() == pytest.approx(0.02, rel=0.05)


def test_spreads_tells_constant_draws_from_varying_ones():
    draws = np.stack([np.full(50, 7.3), 7.3 + 1e-6 * np.arange(50), np.full(50, 1e-14)], 1)
    assert spreads(draws, np.array([7.3, 7.3, 1e-14])).tolist() == [False, True, False]
