"""The simulated trainer: reproducible surface curves, GPU time, and the trainable's reports."""

import numpy as np
import pytest

from scaling.simulate import gpu_seconds, simulate_run, trial_seed
from scaling.surface import SURFACES
from search.simulated import SimContext, report_metrics
from search.spec import parse_spec


def test_a_run_is_reproducible_from_its_seed_and_follows_the_surface():
    s = SURFACES["chinchilla"]
    a = simulate_run(s, 1e8, 2e9, 1000, 10, 0.005, trial_seed(0, "k"))
    b = simulate_run(s, 1e8, 2e9, 1000, 10, 0.005, trial_seed(0, "k"))
    c = simulate_run(s, 1e8, 2e9, 1000, 10, 0.005, trial_seed(1, "k"))
    assert np.array_equal(a.loss, b.loss) and not np.array_equal(a.loss, c.loss)
    assert list(a.steps) == list(range(100, 1001, 100))
    assert a.final_loss == pytest.approx(float(s.loss(1e8, 2e9)), rel=0.03)
    assert a.loss[0] > a.loss[-1]  # the curve falls as tokens accumulate
    # The final and validation losses do not depend on how many reports the trial makes.
    once = simulate_run(s, 1e8, 2e9, 1000, 1, 0.005, trial_seed(0, "k"))
    assert (once.final_loss, once.val_loss) == (a.final_loss, a.val_loss)
    clean = simulate_run(s, 1e8, 2e9, 1000, 4, 0.0, 0)
    assert clean.final_loss == pytest.approx(float(s.loss(1e8, 2e9)), rel=1e-12)


def test_noise_has_the_requested_relative_spread():
    s = SURFACES["paper"]
    finals = [simulate_run(s, 4e6, 4e9, 100, 1, 0.005, k).final_loss for k in range(2000)]
    rel = np.std(np.log(finals))
    assert rel == pytest.approx(0.005, rel=0.1)


def test_gpu_seconds_follow_flops_over_throughput():
    assert gpu_seconds(989e12 * 0.4 * 3600, 989e12, 0.4) == pytest.approx(3600)
    with pytest.raises(ValueError, match="mfu"):
        gpu_seconds(1e18, 989e12, 0)


def test_reports_carry_the_metric_names_of_real_trials():
    spec = parse_spec({"name": "s", "budgets": [1e17, 1e18],
                       "trainer": {"kind": "simulated", "reports": 4}})
    ctx = SimContext.from_spec(spec)
    config = {"trial_key": "k", "params": 4e6, "tokens": 4e9, "steps": 800, "flops": 1e17,
              "gpus": 2}
    run = ctx.run(config)
    rows = [report_metrics(ctx, config, run, k) for k in range(4)]
    assert [r["step"] for r in rows] == [200, 400, 600, 800]
    assert {"loss", "loss_ema", "tokens", "flops", "flops_6nd", "gpu_hours"} <= set(rows[0])
    assert "val_loss" in rows[-1] and "val_loss" not in rows[0]
    assert rows[-1]["gpu_hours"] == pytest.approx(1e17 / (989e12 * 0.4) / 3600)
    assert ctx.trial_seconds(config) == pytest.approx(1e17 / (2 * 989e12 * 0.4))
