"""Every fit registers a version of the MLflow model `dit-scaling-<study>` (a real SQLite store):
`laws --versions` lists them, `predict --law models:/...` answers from one (by number or alias),
and `mlflow.pyfunc.load_model` in a fresh interpreter predicts what `predict` prints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.runs_table import RunPoint, write_runs
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study
from search.cli import main
from search.tracking import Tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    points = synthetic_study(SURFACES["paper"], PAPER_BUDGETS, np.random.default_rng(0), sizes=7,
                             rel_sigma=0.003)
    runs = write_runs([RunPoint(p.compute, p.params, p.loss, tokens=p.tokens, budget=p.compute,
                                trial=f"t{i}") for i, p in enumerate(points)],
                      folder / "runs.csv")
    for _ in range(2):
        assert main(["fit", str(runs), "--log-to-mlflow", "--study", "reg",
                     "--tracking-uri", uri, "--draws", "100"]) == 0
    return uri, len(points)


def ok(capsys, *args: str) -> str:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_each_fit_is_a_new_version_with_its_provenance(store, capsys):
    uri, n = store
    listing = ok(capsys, "laws", "--study", "reg", "--versions", "--tracking-uri", uri)
    assert listing.startswith("model dit-scaling-reg: 2 versions (newest first)")
    data = json.loads(ok(capsys, "laws", "--study", "reg", "--versions", "--json",
                         "--tracking-uri", uri))
    assert [v["version"] for v in data["versions"]] == [2, 1]
    tags = data["versions"][0]["tags"]
    assert tags["trials"] == str(n) and tags["package_version"]
    assert json.loads(tags["fit_options"])["draws"] == 100
    text = ok(capsys, "laws", "--study", "reg", "--tracking-uri", uri)
    assert f"law version 2 of model dit-scaling-reg from {n} trials" in text.splitlines()[0]


def test_predict_answers_from_a_version_or_an_alias(store, capsys):
    uri, n = store
    Tracking(uri).client.set_registered_model_alias("dit-scaling-reg", "champion", "1")
    by_number = json.loads(ok(capsys, "predict", "--law", "models:/dit-scaling-reg/1",
                              "--budget", "1e21", "--json", "--tracking-uri", uri))
    by_alias = json.loads(ok(capsys, "predict", "--law", "models:/dit-scaling-reg@champion",
                             "--budget", "1e21", "--json", "--tracking-uri", uri))
    assert by_number["source"] == f"dit-scaling-reg version 1 (from {n} trials)"
    assert {k: v for k, v in by_number.items() if k != "source"} == \
        {k: v for k, v in by_alias.items() if k != "source"}
    capsys.readouterr()
    assert main(["predict", "--law", "models:/dit-scaling-reg/9", "--budget", "1e21",
                 "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such registered law" in err


def test_the_registered_model_loads_in_a_fresh_interpreter_and_agrees(store, capsys):
    uri, _ = store
    printed = json.loads(ok(capsys, "predict", "--law", "models:/dit-scaling-reg/2",
                            "--budget", "1e21", "--json", "--tracking-uri", uri))
    code = ("import json, mlflow, pandas as pd\n"
            f"mlflow.set_tracking_uri({uri!r})\n"
            "m = mlflow.pyfunc.load_model('models:/dit-scaling-reg/2')\n"
            "print(json.dumps(m.predict(pd.DataFrame({'budget': [1e21]})).iloc[0].to_dict()))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the model's own code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd="/", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("n_opt", "d_opt", "loss"):
        assert row[name] == pytest.approx(printed[name]["value"], rel=1e-9)
        assert [row[f"{name}_lo"], row[f"{name}_hi"]] == pytest.approx(printed[name]["ci"],
                                                                       rel=1e-9)
