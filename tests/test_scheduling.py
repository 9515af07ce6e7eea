"""Simulated trials on a real local Ray with 64 fake GPUs ask for GPUs by model size, run side
by side within the cluster, and their occupancy and makespan are measured."""

import logging

import pytest
import ray

from search.driver import RAY_ENV, run_study
from search.occupancy import measure
from search.spec import parse_spec
from search.tracking import Tracking

pytestmark = pytest.mark.slow
RULE = [{"max_params": 1e7, "gpus": 4}, {"max_params": 3e7, "gpus": 8}, {"gpus": 16}]


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    ray.init(num_cpus=2, num_gpus=64, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": dict(RAY_ENV)})
    yield
    ray.shutdown()


def test_trials_request_gpus_by_size_and_share_the_cluster(fake_gpu_cluster, tmp_path):
    spec = parse_spec({
        "name": "gpus", "seed": 1, "output_dir": str(tmp_path),
        "budgets": [1e17, 3e17, 1e18],
        "trainer": {"kind": "simulated", "batch_size": 256, "time_scale": 1e-2, "reports": 3},
        "allocator": {"kind": "adaptive", "prior": "paper", "spacing": 3.0,
                      "max_trials_per_budget": 6},
        "resources": {"gpus_per_trial": RULE}})
    outcome = run_study(spec, out=lambda line: None)
    assert outcome.failed == 0 and outcome.finished >= 9
    tracking = Tracking(spec.tracking_uri)
    parent = tracking.latest_study_run("gpus")
    records = tracking.trial_records(parent.info.run_id, parent.info.experiment_id)
    assert len(records) == outcome.finished
    for r in records:
        assert r.param("gpus", int) == spec.resources.gpus_for(r.param("params", int))
    assert {r.param("gpus", int) for r in records} >= {4, 8}  # the rule's tiers are used
    occ = measure(outcome.usage, gpus=64)
    assert occ.trials == outcome.finished
    assert 16 < occ.peak_gpus <= 64  # trials ran side by side, never beyond the cluster
    assert 0 < occ.occupancy <= occ.held_occupancy <= 1
    assert occ.makespan_ratio >= 1
