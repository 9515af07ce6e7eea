"""`dit-scaling validate` on a simulated study (paper surface) on a real local Ray and SQLite
MLflow store: the law's optimum at a budget above the fitted ones, trained as trials of the
study (nested under a validation run, not refitted), compared with the prediction."""

import json
import math

import pytest
import ray

from search.cli import main
from search.records import KIND, PARENT
from search.tracking import Tracking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory, run_study):
    _, code, uri = run_study(tmp_path_factory.mktemp("validate"), """
        name = "v"
        seed = 5
        budgets = [1e17, 3e17, 1e18]
        [model]
        sizes_per_budget = 5
        size_spacing = 2.0
        [trainer]
        kind = "simulated"
        batch_size = 256
        reports = 3
        [allocator]
        prior = "paper"
        [resources]
        max_concurrent_trials = 2
    """)
    assert code == 0
    return uri


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:
        ray.shutdown()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_dry_run_prints_the_trials_and_their_flops_and_trains_nothing(study, capsys):
    code, out, _ = cli(capsys, "validate", "--study", "v", "--budget", "3e18", "--sizes", "3",
                       "--dry-run", "--tracking-uri", study)
    assert code == 0
    assert "0.48 decades above the largest fitted budget" in out
    assert out.count("  train C3e18-") == 3 and "total 9e+18 FLOPs" in out
    tracking = Tracking(study)
    runs = tracking.client.search_runs([tracking.experiment_id("v")],
                                       f"tags.`{KIND}` = 'validation'")
    assert runs == []


def test_a_budget_inside_the_fitted_range_is_refused(study, capsys):
    code, _, err = cli(capsys, "validate", "--study", "v", "--budget", "5e17",
                       "--tracking-uri", study)
    assert code == 2 and "above the largest fitted one (1e+18 FLOPs)" in err


def test_the_law_is_held_to_a_budget_it_never_saw(study, capsys):
    tracking = Tracking(study)
    parent = tracking.latest_study_run("v")
    trials_before = len(tracking.trial_records(parent.info.run_id, parent.info.experiment_id))
    code, out, _ = cli(capsys, "validate", "--study", "v", "--budget", "3e18", "--sizes", "3",
                       "--tracking-uri", study, "--json")
    assert code == 0
    summary = json.loads(out[out.index("{"):])
    # the simulated trials follow the paper surface, whose frontier the law was fitted on
    assert abs(summary["loss_error"]) < 0.03, summary
    # Approach 3's surface at the trained N and D: the simulated losses lie on such a surface
    assert abs(summary["approach3_error"]) < 0.03, summary
    assert summary["approach3_loss_lo"] < summary["approach3_loss"] < summary["approach3_loss_hi"]
    # the measured loss is one run's: it is held to the interval one run falls in, which adds
    # the seed noise the study's residuals show to the expected loss's interval
    for key in ("predicted_loss", "approach3_loss"):
        assert summary[f"{key}_run_lo"] < summary[f"{key}_lo"] < summary[f"{key}_hi"] \
            < summary[f"{key}_run_hi"], key
    assert "Approach 3's L(N, D) at that N and D" in out
    assert out.count(", one run [") == 2 and "one run's interval)" in out
    assert summary["measured_n_opt"] is not None
    assert abs(math.log(summary["measured_n_opt"] / summary["predicted_n_opt"])) < math.log(2)
    # three runs' vertex is held to where such a vertex falls if the law holds
    assert summary["measured_n_opt_run_lo"] < summary["predicted_n_opt"] \
        < summary["measured_n_opt_run_hi"] and 0 <= summary["no_minimum_share"] < 1
    assert summary["n_opt_in_interval"] is True and "three runs' vertex falls in" in out
    runs = tracking.client.search_runs([parent.info.experiment_id],
                                       f"tags.`{KIND}` = 'validation'")
    assert len(runs) == 1 and runs[0].data.tags[PARENT] == parent.info.run_id
    validation = runs[0].info.run_id
    assert len(tracking.trial_records(validation, parent.info.experiment_id)) == 3
    # not isoFLOP points of the study: the study's own trials are unchanged
    assert len(tracking.trial_records(parent.info.run_id,
                                      parent.info.experiment_id)) == trials_before
    code, out, _ = cli(capsys, "laws", "--study", "v", "--tracking-uri", study)
    assert code == 0 and "last validation at C = 3e+18 FLOPs" in out
    assert "predicted" in out and "measured" in out
