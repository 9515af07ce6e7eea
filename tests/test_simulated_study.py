"""A simulated study end to end on a real local Ray and SQLite MLflow store: the adaptive
allocator, with run reuse, recovers the `paper` surface's exponent, a plan predicts the run trial
by trial (its cooldown branches too), and `refine` tightens a chosen budget under the same study
run."""

import json

import pyarrow.parquet as pq
import pytest
import ray

from scaling.surface import PAPER_N_EXPONENT, SURFACES
from search.allocator import resolve_prior
from search.cli import main
from search.driver import DECISIONS_FILE
from search.plan import simulate_study, simulated_template
from search.records import BRANCH_OF
from search.spec import load_spec
from search.tracking import Tracking
from search.trial_log import ATTEMPTS

pytestmark = pytest.mark.slow
BUDGETS = "[1e17, 3e17, 6e17, 1e18, 3e18, 6e18]"


@pytest.fixture(scope="module")
def study(tmp_path_factory, run_study):
    return run_study(tmp_path_factory.mktemp("sim"), f"""
        name = "sim"
        seed = 4
        budgets = {BUDGETS}
        [trainer]
        kind = "simulated"
        surface = "paper"
        batch_size = 256
        reports = 5
        reuse = "cooldown"
        [allocator]
        kind = "adaptive"
        prior = "paper"
        spacing = 3.0
        [resources]
        max_concurrent_trials = 1
    """)


def test_the_study_recovers_the_paper_exponent_within_its_interval(study):
    spec, code, uri = study
    assert code == 0
    run = Tracking(uri).latest_study_run("sim", with_laws=True)
    m = run.data.metrics
    assert m["n_opt_exponent_lo"] <= PAPER_N_EXPONENT <= m["n_opt_exponent_hi"]
    assert m["n_opt_exponent_hi"] - m["n_opt_exponent_lo"] < 0.25


def test_trial_runs_are_nested_with_curves_and_a_plan_predicts_them(study):
    spec_path, _, uri = study
    tracking = Tracking(uri)
    parent = tracking.latest_study_run("sim")
    parent_id = parent.info.run_id
    records = tracking.trial_records(parent.info.run_id, parent.info.experiment_id)
    assert records and all(r.status == "finished" for r in records)
    r = records[0]
    assert {"loss", "loss_ema", "val_loss", "tokens", "flops", "gpu_hours"} <= set(r.metrics)
    assert {"params", "tokens", "steps", "budget", "compute_6nd", "compute_exact", "depth",
            "surface", "gpus"} <= set(r.params)
    assert len(tracking.client.get_metric_history(r.run_id, "loss")) == 5
    run = tracking.client.get_run(r.run_id)
    assert run.data.tags[ATTEMPTS] == "1"
    # One trial at a time, the run decides exactly as the in-process simulation does, and
    # branches the same sizes off the same trunks (run reuse), paying only their cooldown.
    spec = load_spec(spec_path)
    sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                         SURFACES["paper"], concurrency=1, fit=False)
    assert sorted(t.key for t in sim.trials) == sorted(r.trial_key for r in records)
    params = {r.trial_key: r.params for r in records}
    ids = {r.trial_key: r.run_id for r in records}
    assert any(t.trunk for t in sim.trials)
    for t in sim.trials:
        parent = tracking.client.get_run(ids[t.key]).data.tags["mlflow.parentRunId"]
        if t.trunk is None:
            assert params[t.key]["reuse"] in ("trunk", "from scratch")
            assert parent == parent_id
        else:
            assert params[t.key]["reuse"] == "branch" and params[t.key][BRANCH_OF] == t.trunk
            assert parent == ids[t.trunk]  # nested under its trunk's run
            assert float(params[t.key]["gpu_hours"]) == pytest.approx(
                t.trained / (989e12 * 0.4) / 3600, rel=1e-5)
    # the study run holds what its points are worth and what training them cost
    m = tracking.client.get_run(parent_id).data.metrics
    assert m["flops_points"] == pytest.approx(sum(t.budget for t in sim.trials))
    assert m["flops_trained"] == pytest.approx(sum(t.budget * t.trained / t.flops
                                                   for t in sim.trials))
    assert m["flops_trained"] < m["flops_points"]


def test_decisions_are_logged_as_a_table(study, tmp_path):
    _, _, uri = study
    tracking = Tracking(uri)
    run = tracking.latest_study_run("sim")
    rows = json.loads(tracking.download_text(run.info.run_id, DECISIONS_FILE, tmp_path))
    assert {"time", "budget", "action", "sizes", "reason", "interval_before",
            "interval_after"} <= set(rows[0])
    assert rows[0]["action"] == "open" and "the paper's law" in rows[0]["reason"]
    assert len({row["budget"] for row in rows if row["budget"] is not None}) == 6
    assert any(row["action"] == "refine" and row["interval_after"] for row in rows)


def test_refine_adds_trials_to_one_budget_under_the_same_study_run(study, capsys, tmp_path):
    _, _, uri = study
    tracking = Tracking(uri)
    parent = tracking.latest_study_run("sim")
    before = tracking.trial_records(parent.info.run_id, parent.info.experiment_id)
    try:
        code = main(["refine", "--study", "sim", "--budget", "6e18", "--tolerance", "0.05",
                     "--tracking-uri", uri])
    finally:
        ray.shutdown()
    assert code == 0
    out = capsys.readouterr().out
    assert "refining study run" in out and "6e18:" in out
    after = tracking.trial_records(parent.info.run_id, parent.info.experiment_id)
    new = {r.trial_key for r in after} - {r.trial_key for r in before}
    assert new and all(key.startswith("C6e18-") for key in new)
    assert tracking.latest_study_run("sim").info.run_id == parent.info.run_id
    relogged = tracking.client.get_run(parent.info.run_id)
    assert relogged.data.tags["dit.laws"] == "1"
    table = pq.read_table(tracking.client.download_artifacts(parent.info.run_id, "runs.parquet",
                                                             str(tmp_path)))
    assert table.num_rows == len(after)
    rows = json.loads(tracking.download_text(parent.info.run_id, DECISIONS_FILE, tmp_path))
    assert any(row["budget"] == 6e18 and "refine" in row["action"] for row in rows[-5:])
