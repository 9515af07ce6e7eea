"""End to end through the CLI: a tiny real study on a real local Ray and SQLite MLflow store,
then `laws`, `predict` and `status` answering from MLflow alone."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
import ray

from search.cli import main
from search.tracking import Tracking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tiny_data, tiny_clip, tmp_path_factory, run_study, centred_sizes):
    out = tmp_path_factory.mktemp("e2e")
    _, code, uri = run_study(out, f"""
        name = "e2e"
        budgets = [2e10, 2e11]
        metric = "val_loss"
        [model]
        {centred_sizes}
        [data]
        source = "path"
        path = "{tiny_data.root}"
        [trainer]
        batch_size = 16
        val_samples = 128
        report_every = 20
        [eval]
        fid = true
        fid_extractor = "clip-vit-l-14"
        fid_extractor_path = "{tiny_clip}"
        fid_samples = 16
        fid_reference_samples = 64
        sampler_steps = 2
        cfg_scale = 1.0
    """)
    return out, code, uri


def run_cli(capsys, *args) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_every_trial_has_a_nested_run_with_metrics(study, tiny_data):
    out, code, uri = study
    assert code == 0
    tracking = Tracking(uri)
    parent = tracking.latest_study_run("e2e")
    records = tracking.trial_records(parent.info.run_id, parent.info.experiment_id)
    assert len(records) == 6
    for r in records:
        assert r.status == "finished"
        assert {"loss", "loss_ema", "val_loss", "tokens", "flops_6nd", "ood_loss", "fid",
                "eval_seconds", "startup_setup_s", "startup_train_s"} <= set(r.metrics)
        assert {"params", "tokens", "compute_6nd", "compute_exact", "depth", "width", "heads",
                "steps", "batch_size", "budget"} <= set(r.params)
        history = tracking.client.get_metric_history(r.run_id, "loss")
        assert len(history) >= 2 and history[-1].step == int(r.params["steps"])
        assert r.params["dataset_hash"] == tiny_data.content_hash
        assert [a.path for a in tracking.client.list_artifacts(r.run_id, "data")] == [
            "data/dataset.json"]
    # one folder per trial in the study's storage, named by its isoFLOP point
    folders = {d.name.rsplit("-", 1)[0] for d in (out / "ray").glob("e2e-*/*") if d.is_dir()}
    assert folders == {r.trial_key for r in records}


def test_laws_are_logged_on_the_study_run(study):
    out, _, uri = study
    run = Tracking(uri).latest_study_run("e2e", with_laws=True)
    assert "n_opt_exponent" in run.data.metrics
    names = {a.path for a in Tracking(uri).client.list_artifacts(run.info.run_id)}
    assert {"laws.json", "isoflop.png", "power_laws.png", "runs.parquet"} <= names
    table = pq.read_table(out / "studies" / "e2e" / "runs.parquet")
    assert table.num_rows == 6
    assert all(f is not None and f > 0 for f in table.column("fid").to_pylist())
    assert len(list((out / "fid-stats").glob("fid-ref-*.npz"))) == 1  # computed once


def test_laws_predict_and_status_answer_from_mlflow_alone(study, capsys):
    out, _, uri = study
    shutil.rmtree(out / "ray")  # Ray's storage is not needed to answer
    shutil.rmtree(out / "studies")
    laws = json.loads(run_cli(capsys, "laws", "--study", "e2e", "--tracking-uri", uri, "--json"))
    budgets = [b for b in laws["approach2"]["budgets"] if b["n_opt"] is not None]
    assert len(budgets) == 2
    assert budgets[0]["compute"] < budgets[1]["compute"]
    assert budgets[0]["n_opt"] < budgets[1]["n_opt"]  # N_opt grows with C on the demo data
    assert laws["approach2"]["n_opt"]["exponent"] > 0
    text = run_cli(capsys, "laws", "--study", "e2e", "--tracking-uri", uri)
    assert "multiply-add = 2 FLOPs" in text and "N_opt" in text
    pred = json.loads(run_cli(capsys, "predict", "--study", "e2e", "--budget", "1e14",
                              "--tracking-uri", uri, "--json"))
    assert pred["extrapolation_decades"] > 1.5 and pred["n_opt"]["value"] > 0
    status = run_cli(capsys, "status", "--study", "e2e", "--tracking-uri", uri)
    assert "6 finished" in status and "laws: fitted" in status


def test_malformed_spec_is_refused_before_any_compute(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nbudgets = [1e11, 2e11, -1e12]\n')
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "budgets[2]: -1e12 is not a positive number of FLOPs" in err
    assert not ray.is_initialized()
