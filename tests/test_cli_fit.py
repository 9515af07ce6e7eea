"""The CLI's fitting commands without Ray: `fit` on CSV and Parquet files, its bad-input messages,
`fit --log-to-mlflow` into a real SQLite MLflow store read back by `laws` and `predict`, `compare`
on runs files and on studies, and `predict --law paper`."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from scaling.runs_table import RunPoint, write_runs
from scaling.surface import PAPER_BUDGETS, SURFACES, synthetic_study
from search.cli import main

DRAWS = "100"

# The documented schema (scaling/laws/result.py), key by key.
TOP = {"approach2", "approach3", "approach3_huber", "agreement", "convention",
       "flops_per_multiply_add", "schema", "source", "compute_range", "warnings", "options",
       "draws", "run_noise"}
APPROACH2 = {"n_opt", "d_opt", "loss", "fid", "loss_saturating", "budgets", "weighted"}
LAW = {"coefficient", "exponent", "exponent_ci", "coefficient_ci", "budgets", "scatter"}
BUDGET = {"compute", "n_opt", "n_opt_ci", "d_opt", "loss_opt", "points", "centred", "status",
          "log10_n_opt_ci", "d_opt_ci", "loss_opt_ci", "fid_opt", "fid_opt_ci", "edge_fraction",
          "suggested_sizes", "message", "params", "losses", "fids", "parabola"}
APPROACH3 = {"E", "A", "B", "alpha", "beta", "a", "b", "ci", "points", "at_bound"}
PARAMETERS = {"E", "A", "B", "alpha", "beta", "a", "b"}


def runs(name: str, seed: int, fid: bool = False) -> list[RunPoint]:
    points = synthetic_study(SURFACES[name], PAPER_BUDGETS, np.random.default_rng(seed),
                             sizes=9, rel_sigma=0.002)
    return [RunPoint(p.compute, p.params, p.loss, tokens=p.tokens, budget=p.compute,
                     fid=100 * p.loss**4 if fid else None) for p in points]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    return {
        "csv": write_runs(runs("chinchilla", 0, fid=True), folder / "chinchilla.csv"),
        "parquet": write_runs(runs("chinchilla", 0, fid=True), folder / "chinchilla.parquet"),
        "asymmetric": write_runs(runs("asymmetric", 1), folder / "asymmetric.parquet"),
    }


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args: str) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_fit_json_has_exactly_the_documented_schema(files, capsys, kind):
    data = json.loads(ok(capsys, "fit", str(files[kind]), "--json", "--draws", DRAWS))
    assert set(data) == TOP
    assert data["convention"] == "6ND" and data["flops_per_multiply_add"] == 2
    assert data["schema"] == "dit-scaling/laws/1" and data["source"] == "fit"
    assert set(data["approach2"]) == APPROACH2
    for name in ("n_opt", "d_opt", "loss", "fid"):
        law = data["approach2"][name]
        assert set(law) == LAW
        lo, hi = law["exponent_ci"]
        assert lo < law["exponent"] < hi
    assert data["approach2"]["fid"]["exponent"] < 0
    assert data["approach2"]["loss_saturating"] is None
    assert len(data["approach2"]["budgets"]) == 6
    for budget in data["approach2"]["budgets"]:
        assert set(budget) == BUDGET
        assert budget["points"] == 9 and budget["centred"] is True
    assert set(data["approach3"]) == APPROACH3 and set(data["approach3"]["ci"]) == PARAMETERS
    truth = SURFACES["chinchilla"].exponents().a
    lo, hi = data["approach3"]["ci"]["a"]
    assert lo < truth < hi
    assert set(data["approach3_huber"]) == APPROACH3 - {"ci"}
    assert set(data["approach2"]["weighted"]) == {"n_opt", "d_opt"}
    for name in ("a", "b"):
        agree = data["agreement"][name]
        assert set(agree) == {"approach2", "approach3", "difference", "consistent"}
        assert agree["consistent"] == (agree["difference"][1] <= 0 <= agree["difference"][2])
    assert data["options"]["draws"] == 100 and data["options"]["seed_noise"] == 0.005
    assert len(data["draws"]["n_opt"]) == 100


def test_csv_and_parquet_give_the_same_fit(files, capsys):
    texts = [ok(capsys, "fit", str(files[kind]), "--json", "--draws", DRAWS)
             for kind in ("csv", "parquet")]
    assert texts[0] == texts[1]


def test_fit_table_states_units(files, capsys):
    text = ok(capsys, "fit", str(files["csv"]), "--draws", DRAWS, "--saturating")
    for needle in ("multiply-add = 2 FLOPs", "C = 6 N D", "N_opt (parameters)", "Approach 3",
                   "Saturating loss", "6 of 6 budgets used"):
        assert needle in text


def write_csv(path, **columns) -> str:
    pacsv.write_csv(pa.table(columns), path)
    return str(path)


GOOD = {"compute": [1e18] * 3, "params": [1e7, 2e7, 4e7], "loss": [3.1, 3.0, 3.05]}


def bad_inputs(tmp_path):
    """(file, the words its one-line message must hold) for every bad-input case of the issue."""
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    text = tmp_path / "runs.txt"
    text.write_text("compute,params,loss\n")
    return [
        (write_csv(tmp_path / "no_loss.csv", compute=GOOD["compute"], params=GOOD["params"]),
         ["missing column(s) 'loss'", "it has compute, params"]),
        (write_csv(tmp_path / "negative.csv", **{**GOOD, "params": [1e7, -2e7, 4e7]}),
         ["column 'params' must be positive and finite", "data rows 2"]),
        (write_csv(tmp_path / "zero.csv", **{**GOOD, "loss": [3.1, 3.0, 0.0]}),
         ["column 'loss' must be positive and finite", "data rows 3"]),
        (write_csv(tmp_path / "inf.csv", **{**GOOD, "loss": [math.inf, 3.0, math.nan]}),
         ["column 'loss' must be positive and finite", "data rows 1, 3"]),
        (write_csv(tmp_path / "bad_tokens.csv", **GOOD, tokens=[1e10, -1.0, 1e10]),
         ["column 'tokens' must be positive and finite", "data rows 2"]),
        (write_csv(tmp_path / "two_sizes.csv", compute=[1e18] * 3 + [1e19] * 3,
                   params=[1e7, 2e7, 2e7, 1e7, 2e7, 4e7], loss=[3.1, 3.0, 3.0, 2.9, 2.8, 2.85]),
         ["budget 1e+18 FLOPs has 2 distinct size(s)", "needs at least 3"]),
        (str(tmp_path / "absent.csv"), ["absent.csv does not exist"]),
        (str(garbage), ["cannot read runs table", "garbage.parquet"]),
        (str(text), ["unknown suffix '.txt'"]),
        (write_csv(tmp_path / "words.csv", **{**GOOD, "params": ["small", "mid", "big"]}),
         ["column 'params' is not numeric"]),
        (write_csv(tmp_path / "one_budget.csv", **GOOD),
         ["the runs hold 1 budget (1e+18 FLOPs); a law needs at least 2 budgets"]),
    ]


def test_every_bad_input_gets_one_line_and_exit_code_2(tmp_path, capsys):
    for path, words in bad_inputs(tmp_path):
        code, out, err = cli(capsys, "fit", path, "--draws", "20")
        assert code == 2, (path, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dit-scaling fit: "), err
        for w in words:
            assert w in lines[0], (w, lines[0])


def test_usage_mistakes_get_one_line_too(files, capsys):
    code, _, err = cli(capsys, "fit", str(files["csv"]), "--log-to-mlflow")
    assert code == 2 and err.strip() == "dit-scaling fit: --log-to-mlflow needs --study NAME"
    code, _, err = cli(capsys, "fit", str(files["csv"]), "--draws", "5")
    assert code == 2 and "FitOptions.draws=5 must be at least 20" in err
    code, _, err = cli(capsys, "predict", "--budget", "1e21")
    assert code == 2 and err.strip() == "dit-scaling predict: give --study NAME or --law paper"
    for budget in ("--budget=-1e21", "--budget=0", "--budget=lots"):
        with pytest.raises(SystemExit) as exit_:  # argparse's own exit: usage, then the error
            main(["predict", "--law", "paper", budget])
        assert exit_.value.code == 2
        value = budget.split("=")[1]
        assert f"argument --budget: {value} is not a positive number of FLOPs" in (
            capsys.readouterr().err)


def test_paper_law_prediction(capsys):
    pred = json.loads(ok(capsys, "predict", "--law", "paper", "--budget", "1.5e21", "--json"))
    assert pred["n_opt"]["value"] == pytest.approx(958.3e6, rel=0.02)
    assert pred["extrapolation_decades"] == pytest.approx(math.log10(1.5e21 / 6e18))
    text = ok(capsys, "predict", "--law", "paper", "--budget", "1.5e21")
    assert "the paper's published law" in text and "parameters" in text


def test_compare_two_runs_files(files, capsys):
    text = ok(capsys, "compare", str(files["csv"]), str(files["asymmetric"]))
    a, b = files["csv"], files["asymmetric"]
    assert f"{b}'s model exponent is larger: " in text
    assert f"{b}'s data exponent is smaller: " in text
    assert "paper In-Context" in text and "multiply-add = 2 FLOPs" in text
    data = json.loads(ok(capsys, "compare", str(a), str(b), "--json"))
    rows = {r["law"]: r for r in data["rows"]}
    truth = SURFACES["asymmetric"].exponents().a - SURFACES["chinchilla"].exponents().a
    lo, hi = rows["n_opt"]["ci"]
    assert lo < truth < hi
    same = ok(capsys, "compare", str(files["csv"]), str(files["parquet"]))
    assert same.count("not distinguishable") == 4  # model, data, loss and FID exponents


@pytest.fixture(scope="module")
def store(files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for study, kind in (("chin", "csv"), ("asym", "asymmetric")):
        assert main(["fit", str(files[kind]), "--log-to-mlflow", "--study", study,
                     "--tracking-uri", uri, "--draws", DRAWS]) == 0
    return folder, uri


def test_fit_logged_to_mlflow_is_read_back_by_laws_and_predict(files, store, capsys):
    folder, uri = store
    assert (folder / "artifacts").is_dir()  # beside the store, not ./mlruns
    direct = json.loads(ok(capsys, "fit", str(files["csv"]), "--json", "--draws", DRAWS))
    laws = json.loads(ok(capsys, "laws", "--study", "chin", "--tracking-uri", uri, "--json"))
    assert laws == direct
    text = ok(capsys, "laws", "--study", "chin", "--tracking-uri", uri)
    assert text.startswith("study chin (study run ") and "N_opt (parameters)" in text
    pred = json.loads(ok(capsys, "predict", "--study", "chin", "--budget", "1e20",
                         "--tracking-uri", uri, "--json"))
    assert pred["source"].startswith("study chin")
    assert pred["extrapolation_decades"] == pytest.approx(math.log10(1e20 / 6e18))
    truth = SURFACES["chinchilla"].optimum(1e20).n_opt
    lo, hi = pred["n_opt"]["ci"]
    assert lo < pred["n_opt"]["value"] < hi and lo < truth < hi
    status = ok(capsys, "status", "--study", "chin", "--tracking-uri", uri)
    assert "laws: fitted" in status


def test_compare_two_studies_in_mlflow(store, capsys):
    _, uri = store
    text = ok(capsys, "compare", "chin", "asym", "--tracking-uri", uri)
    assert "asym's model exponent is larger: " in text
    assert "asym's data exponent is smaller: " in text
    code, out, err = cli(capsys, "compare", "chin", "nope", "--tracking-uri", uri)
    assert code == 2 and out == "" and "no study named 'nope'" in err
    code, _, err = cli(capsys, "compare", "chin", "missing.csv", "--tracking-uri", uri)
    assert code == 2 and "missing.csv does not exist" in err
