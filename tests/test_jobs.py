"""Submission pieces that need no cluster: token sources, portability checks, fault helpers, and
the refusals that come before any connection."""

import errno
import os
import socket

import pytest

from scaling.model import DiTConfig, ModelShape
from scaling.train import TrainConfig, train
from search.jobs import JobError, job_client, portability_problems, ray_token, study_tracking_uri
from search.spec import parse_spec
from search.trial import StorageFullError, storage_full
from tests.faults import nan_loss


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith(("RAY_AUTH", "MLFLOW_TRACKING", "DIT_"))]:
        monkeypatch.delenv(key)


def test_token_comes_from_env_then_file(monkeypatch, tmp_path):
    assert ray_token()[0] is None
    file = tmp_path / "token"
    file.write_text("abc\n")
    file.chmod(0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(file))
    assert ray_token() == ("abc", f"RAY_AUTH_TOKEN_PATH={file}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "xyz")
    assert ray_token() == ("xyz", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH=.*nope: no such token file"):
        ray_token()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_token_file_others_can_read_or_write_is_refused(monkeypatch, tmp_path, mode):
    file = tmp_path / "token"
    file.write_text("abc\n")
    file.chmod(mode)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(file))
    with pytest.raises(JobError, match=f"mode {mode:04o}.*chmod 600"):
        ray_token()


def test_the_token_is_never_sent_in_clear_off_this_machine(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    with pytest.raises(JobError, match="cross the network in clear"):
        job_client("http://10.1.2.3:8265")
    with pytest.raises(JobError, match="cross the network in clear"):
        job_client("http://head.example.com:8265")
    with socket.socket() as s:  # loopback (a tunnel) is allowed: here nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JobError, match="cannot reach a Ray cluster"):
        job_client(f"http://127.0.0.1:{port}")


def test_credentials_in_a_tracking_uri_are_refused_and_masked():
    from search.credentials import redact

    spec = parse_spec({"name": "s", "budgets": [1e10, 2e10], "output_dir": "/shared/runs",
                       "tracking": {"uri": "https://dit:s3cret-canary@mlflow.example.com"}})
    with pytest.raises(JobError, match="carries credentials") as err:
        study_tracking_uri(spec)
    assert "s3cret-canary" not in str(err.value)
    assert redact("https://dit:s3cret-canary@mlflow.example.com:5000/x") == \
        "https://***@mlflow.example.com:5000/x"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_a_command_never_prints_the_password_of_a_uri(capsys):
    from search.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://dit:s3cret-canary@127.0.0.1:{port}"
    assert main(["laws", "--study", "x", "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    assert "s3cret-canary" not in captured.err + captured.out
    assert f"http://***@127.0.0.1:{port}" in captured.err


def test_a_submitted_spec_must_name_shared_locations():
    problems = portability_problems({"name": "s", "budgets": [1e10, 2e10],
                                     "data": {"source": "path", "path": "data"}})
    assert any(p.startswith("output_dir 'dit-scaling-runs' is relative") for p in problems)
    assert any(p.startswith("data.path 'data' is relative") for p in problems)
    raw = {"name": "s", "budgets": [1e10, 2e10], "output_dir": "/shared/runs",
           "storage": {"path": "s3://bucket/studies"}}
    assert portability_problems(raw) == []
    ok = parse_spec(raw)
    with pytest.raises(JobError, match="needs an MLflow tracking server"):
        study_tracking_uri(ok)


def test_cluster_address_is_checked_before_anything_is_sent():
    with pytest.raises(JobError, match="give the head node's dashboard URL"):
        job_client("127.0.0.1:8265")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JobError, match=f"cannot reach a Ray cluster at http://127.0.0.1:{port}"):
        job_client(f"http://127.0.0.1:{port}")


def test_storage_full_is_found_anywhere_in_an_error_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("Training failed") from inner
    except RuntimeError as outer:
        assert storage_full(outer)
    assert storage_full(RuntimeError("worker died: StorageFullError(28, ...)"))
    assert storage_full(StorageFullError(errno.ENOSPC, "full"))
    assert not storage_full(OSError(errno.EACCES, "denied"))


def test_only_a_trials_latest_failure_says_the_storage_is_full(tmp_path):
    from types import SimpleNamespace

    from search.study.backend import StorageGuard

    guard = StorageGuard("file:///data", "s")
    error = tmp_path / "error.txt"
    trial = SimpleNamespace(error_file=str(error))
    # Tune appends each failure: a disk that was full before a resume is not this failure's cause
    error.write_text("Failure # 1 (occurred at 2026-12-07_12-00-00)\nOSError: [Errno 28] No space "
                     "left on device\nFailure # 2 (occurred at 2026-12-07_12-05-00)\nValueError: "
                     "Could not recover from checkpoint\n")
    guard.on_trial_error(0, [], trial)
    with open(error, "a") as f:
        f.write("Failure # 3 (occurred at 2026-12-07_12-06-00)\nOSError: [Errno 28] No space left "
                "on device\n")
    with pytest.raises(StorageFullError, match="storage file:///data is full"):
        guard.on_trial_error(0, [], trial)


def test_the_nan_fault_targets_one_study_and_trial():
    assert nan_loss.matches("a/C1e10-d1w24h1", "a-1234abcd-C1e10-d1w24h1")
    assert not nan_loss.matches("a/C1e10-d1w24h1", "b-1234abcd-C1e10-d1w24h1")
    assert not nan_loss.matches("a/C1e10-d1w24h1", "a-1234abcd-C2e10-d1w24h1")
    assert not nan_loss.matches("a/C1e10-d1w24h1", None)


def test_no_production_module_reads_a_fault_injection_setting():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for package in ("scaling", "search"):
        for file in (root / package).rglob("*.py"):
            text = file.read_text()
            assert "INJECT" not in text and "nan_loss" not in text, file


def test_a_nan_loss_stops_training_as_diverged(tiny_data, monkeypatch):
    import scaling.train

    monkeypatch.setattr(scaling.train, "_train_step", scaling.train._train_step)
    nan_loss.install(scaling.train, "*", 7)
    model = DiTConfig(ModelShape(1, 16, 1), image_size=tiny_data.image_size,
                      in_channels=tiny_data.channels, text_dim=tiny_data.text_dim,
                      text_len=tiny_data.text_len, patch_size=4)
    cfg = TrainConfig(model=model, steps=50, batch_size=8, train_urls=tuple(
        tiny_data.urls("train")), report_every=5, val_samples=0, threads=1)
    reports = []
    final = train(cfg, lambda m, c: reports.append(m))
    assert final["diverged"] == 1 and final["step"] == 7
    assert reports[-1]["diverged"] == 1 and [r["step"] for r in reports] == [5, 7]


def test_a_dataset_under_a_pyarrow_uri_is_read_by_url(tiny_data):
    from scaling.data import train_batches
    from search.driver import load_remote_dataset

    info = load_remote_dataset(tiny_data.root.as_uri())
    urls = info.urls("train")
    assert urls[0] == f"{tiny_data.root.as_uri()}/train-000000.tar"
    batch = next(train_batches(urls, 4, seed=0))
    assert batch.image.shape[0] == 4
    with pytest.raises(FileNotFoundError, match="dataset.json: cannot be read"):
        load_remote_dataset(tiny_data.root.parent.as_uri() + "/nothing-here")
