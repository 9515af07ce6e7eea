"""The query commands in fresh interpreters against a real SQLite store: they load neither Ray nor
torch (nor matplotlib), print no third-party progress bar, and answer."""

from pathlib import Path

import pytest

from search.cli import main
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
