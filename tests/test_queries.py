"""The query commands in fresh interpreters against a real SQLite store: they load neither Ray nor
torch (nor matplotlib), print no third-party progress bar, and answer; the read-only local reader
they use gives what MLflow's client gives."""

import sqlite3
from pathlib import Path

import pytest

from search.cli import main
from search.errors import TrackingError
from search.local_store import LocalStore
from search.results import load_laws
from search.store import open_tracking
from search.tracking import Tracking
from tests.cli_process import dit_scaling, modules_after

RUNS = Path(__file__).parent / "data" / "runs_3x5.csv"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A study with a trial run and laws fitted by `fit --log-to-mlflow`, as MLflow holds them."""
    folder = tmp_path_factory.mktemp("queries")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert main(["fit", str(RUNS), "--draws", "50", "--log-to-mlflow", "--study", "fitted",
                 "--tracking-uri", uri]) == 0
    tracking = Tracking(uri, str(folder / "artifacts"))
    study = tracking.start_study_run("trials", {})
    tracking.set_status(tracking.trial_run("trials", study, "k", {"params": "1000"}, 1e11),
                        "finished")
    return uri


@pytest.mark.parametrize("argv", [
    ["laws", "--study", "fitted"],
    ["predict", "--study", "fitted", "--budget", "1e20"],
    ["status", "--study", "trials"],
    ["compare", "fitted", str(RUNS), "--draws", "50"],
    ["fit", str(RUNS), "--draws", "50"],
    ["predict", "--law", "paper", "--budget", "1.5e21"],
])
def test_queries_import_neither_ray_nor_torch(store, tmp_path, argv):
    seen = modules_after([*argv, "--tracking-uri", store], tmp_path)
    assert seen == {"rc": 0, "ray": False, "torch": False, "matplotlib": False}


def test_predict_prints_only_its_answer(store, tmp_path):
    r = dit_scaling("predict", "--study", "fitted", "--budget", "1e20", "--tracking-uri", store,
                    cwd=tmp_path)
    assert r.code == 0, r.err
    assert r.out.startswith("study fitted (study run ") and "N_opt" in r.out
    assert "Downloading" not in r.out + r.err and "it/s" not in r.out + r.err
    assert r.err == ""


def test_the_local_reader_answers_as_mlflow_does(store):
    reader, tracking = open_tracking(store), Tracking(store)
    assert isinstance(reader, LocalStore)
    for study in ("fitted", "trials"):
        mine, theirs = reader.latest_study_run(study), tracking.latest_study_run(study)
        assert (mine.info.run_id, mine.info.experiment_id, mine.info.status) == (
            theirs.info.run_id, theirs.info.experiment_id, theirs.info.status)
        assert (mine.data.tags, mine.data.params, mine.data.metrics) == (
            theirs.data.tags, theirs.data.params, theirs.data.metrics)
        assert sorted(reader.trial_records(mine.info.run_id, mine.info.experiment_id),
                      key=str) == sorted(tracking.trial_records(
                          theirs.info.run_id, theirs.info.experiment_id), key=str)
    assert load_laws(reader, "fitted")[0].to_dict() == load_laws(tracking, "fitted")[0].to_dict()
    with pytest.raises(TrackingError, match="no study named 'absent'"):
        reader.latest_study_run("absent")
    with pytest.raises(TrackingError, match="has no study run with fitted laws"):
        reader.latest_study_run("trials", with_laws=True)


def test_a_sqlite_file_of_another_program_is_not_made_a_store(tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table notes (x)")
    before = db.read_bytes()
    with pytest.raises(TrackingError, match="without MLflow's tables"):
        open_tracking(f"sqlite:///{db}")
    assert db.read_bytes() == before
