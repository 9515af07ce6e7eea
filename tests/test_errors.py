"""Bad input through the real CLI, in subprocesses: one line on stderr naming the thing at fault,
exit code 2, no traceback, in seconds, and nothing written. Stores are real SQLite files (or
directories, corrupt files, a closed port on 127.0.0.1)."""

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from search.tracking import Tracking
from tests.cli_process import dit_scaling

RUNS = Path(__file__).parent / "data" / "runs_3x5.csv"
FAST_S = 10.0  # a refusal that imports nothing heavy; generous for a loaded 2-core machine


def spec_text(body: str) -> str:
    return 'name = "bad"\nbudgets = [1e11, 2e11]\n' + body


def dataset_json(root: Path, image_size: int) -> Path:
    """A prepared dataset's description as `scaling.prepare` writes it (no shards needed: the
    spec is refused before any is read)."""
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({
        "format": "dit-scaling/webdataset-v1", "image_key": "png", "image_size": image_size,
        "channels": 3, "text_encoder": "all-MiniLM-L6-v2", "text_dim": 384, "text_len": 16,
        "splits": {"train": {"samples": 64, "shards": [
            {"name": "train-000000.tar", "samples": 64, "bytes": 1, "sha256": "0"}]}},
        "params": {}, "content_hash": "x"}))
    return root


@pytest.mark.parametrize("case, write, expected", [
    ("patch", lambda d: spec_text("[data]\nimage_size = 30\n"),
     "data.image_size 30 is not divisible by model.patch_size 4"),
    ("no-data-path", lambda d: spec_text('[data]\nsource = "path"\n'), "needs data.path"),
    ("missing-data", lambda d: spec_text(f'[data]\nsource = "path"\npath = "{d / "gone"}"\n'),
     "does not exist"),
    ("dataset-patch", lambda d: spec_text(
        f'[model]\npatch_size = 3\n[data]\nsource = "path"\n'
        f'path = "{dataset_json(d / "prepared", 16)}"\n'),
     "model.patch_size 3 does not divide the dataset's image size 16"),
    ("unsorted", lambda d: 'name = "bad"\nbudgets = [2e11, 1e11]\n',
     "must be given smallest first"),
    ("strings", lambda d: 'name = "bad"\nbudgets = ["1e11", "2e11"]\n',
     "budgets[0]: '1e11' is not a number of FLOPs"),
    ("binary", lambda d: b"\x00\xff\xfe\x89PNG\r\n\x1a\n\xc3\x28", "not a text file"),
    ("directory", None, "is a directory, not a study spec file"),
])
def test_a_bad_spec_is_refused_in_one_line_before_anything_is_written(tmp_path, case, write,
                                                                      expected):
    work = tmp_path / "work"
    work.mkdir()
    spec = tmp_path / f"{case}.toml"
    if write is None:
        spec.mkdir()
    else:
        content = write(tmp_path)
        spec.write_bytes(content) if isinstance(content, bytes) else spec.write_text(content)
    r = dit_scaling("run", str(spec), cwd=work)
    assert r.code == 2 and r.one_line_error, r.err
    assert expected in r.err and str(spec) in r.err
    assert r.seconds < FAST_S
    assert list(work.iterdir()) == []  # no dit-scaling-runs/, no store, no data


def test_a_data_path_holding_another_dataset_is_refused_in_one_line(tmp_path):
    out = tmp_path / "out"
    dataset_json(out / "data", 32)  # written with other parameters than the spec asks
    spec = tmp_path / "other.toml"
    spec.write_text(f'name = "bad"\nbudgets = [1e11, 2e11]\noutput_dir = "{out}"\n')
    r = dit_scaling("run", str(spec), cwd=tmp_path)
    assert r.code == 2 and r.one_line_error, r.err
    assert f"{out / 'data'} holds a dataset written with other parameters" in r.err
    assert "remove it or choose another data path" in r.err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A real SQLite store holding one study with a trial run."""
    folder = tmp_path_factory.mktemp("store")
    tracking = Tracking(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts"))
    study = tracking.start_study_run("real", {})
    trial = tracking.trial_run("real", study, "C1e11-d1w16h1", {"params": "1000"}, 1e11)
    tracking.set_status(trial, "finished")
    return tracking.uri


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unusable_stores_are_named_in_one_line(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a SQLite file\x00" * 40)
    cases = {
        f"sqlite:///{folder}": "is a directory, not a SQLite file",
        str(folder): "is a directory",
        f"sqlite:///{corrupt}": "is not a SQLite database",
        "foo://host/x": "unknown scheme 'foo'",
    }
    for uri, expected in cases.items():
        r = dit_scaling("laws", "--study", "s", "--tracking-uri", uri, cwd=tmp_path)
        assert r.code == 2 and r.one_line_error, (uri, r.err)
        assert uri in r.err and expected in r.err
        assert r.seconds < FAST_S
    assert list(folder.iterdir()) == []


def test_a_closed_port_is_reported_within_seconds(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(""))
    work = tmp_path / "work"
    work.mkdir()
    for args in (["predict", "--study", "s", "--budget", "1e20"],
                 ["fit", str(RUNS), "--log-to-mlflow", "--study", "s"], ["run", str(spec)]):
        r = dit_scaling(*args, "--tracking-uri", uri, cwd=work)
        assert r.code == 2 and r.one_line_error, r.err
        assert f"MLflow tracking server {uri} is unreachable" in r.err
        assert r.seconds < 15
    assert list(work.iterdir()) == []  # run wrote no data, no Ray storage


def test_a_read_only_query_never_creates_a_store(tmp_path):
    db = tmp_path / "not" / "there" / "mlflow.db"
    for args in (["status", "--study", "s"], ["laws", "--study", "s"],
                 ["predict", "--study", "s", "--budget", "1e20"], ["compare", "s", "t"]):
        r = dit_scaling(*args, "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
        assert r.code == 2 and r.one_line_error and "no such file" in r.err, r.err
    r = dit_scaling("status", "--study", "s", cwd=tmp_path)  # the default ./dit-scaling-runs
    assert r.code == 2 and r.one_line_error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture
def read_only_store(tmp_path, store):
    """A copy of the store that cannot be written: immutable for root (whom file modes do not
    stop), mode 0444 for anyone else."""
    db = tmp_path / "ro.db"
    shutil.copy(store.removeprefix("sqlite:///"), db)
    root = os.geteuid() == 0
    if root:
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available to make a file read-only for root")
    else:
        db.chmod(0o444)
    yield f"sqlite:///{db}"
    if root:
        subprocess.run(["chattr", "-i", str(db)], check=True)


def test_a_read_only_store_is_refused_before_the_fit(tmp_path, read_only_store):
    r = dit_scaling("fit", str(RUNS), "--log-to-mlflow", "--study", "new",
                    "--tracking-uri", read_only_store, cwd=tmp_path)
    assert r.code == 2 and r.one_line_error, r.err
    assert "read-only" in r.err and read_only_store in r.err
    assert r.out == ""  # refused before fitting: no table printed
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(f'output_dir = "{tmp_path / "out"}"\n'))
    r = dit_scaling("run", str(spec), "--tracking-uri", read_only_store, cwd=tmp_path)
    assert r.code == 2 and r.one_line_error and "read-only" in r.err, r.err
    assert not (tmp_path / "out").exists()
    r = dit_scaling("laws", "--study", "real", "--tracking-uri", read_only_store, cwd=tmp_path)
    assert r.code == 2 and "no study run with fitted laws" in r.err  # reading still works


def test_fit_refuses_the_name_of_a_real_study(tmp_path, store):
    r = dit_scaling("fit", str(RUNS), "--log-to-mlflow", "--study", "real", "--tracking-uri",
                    store, cwd=tmp_path)
    assert r.code == 2 and r.one_line_error, r.err
    assert "--study real" in r.err and "trial runs" in r.err
    status = dit_scaling("status", "--study", "real", "--tracking-uri", store, cwd=tmp_path)
    assert status.code == 0 and "1 finished" in status.out  # the study is not hidden


@pytest.mark.parametrize("args", [
    ["status", "--study", "../../x"], ["laws", "--study", "a/b"],
    ["predict", "--study", "../x", "--budget", "1e20"], ["resume", "--study", ".."],
    ["refine", "--study", "../x"], ["fit", str(RUNS), "--log-to-mlflow", "--study", "../../x"],
    ["compare", "../x", "y"],
])
def test_study_names_are_validated_like_spec_names(tmp_path, args):
    r = dit_scaling(*args, cwd=tmp_path)
    assert r.code == 2 and r.one_line_error, r.err
    assert "is not a study name" in r.err
    assert list(tmp_path.iterdir()) == []


def test_submit_without_an_address_is_a_usage_error(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(spec_text(""))
    r = dit_scaling("submit", str(spec), cwd=tmp_path)
    assert r.code == 2 and r.one_line_error, r.err
    assert "give --address" in r.err
