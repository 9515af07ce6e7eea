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
from search.trial import StorageFullError, injected_nan_step, storage_full


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith(("RAY_AUTH", "MLFLOW_TRACKING", "DIT_"))]:
        monkeypatch.delenv(key)


def test_token_comes_from_env_then_file(monkeypatch, tmp_path):
    assert ray_token()[0] is None
    file = tmp_path / "token"
    file.write_text("abc\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(file))
    assert ray_token() == ("abc", f"RAY_AUTH_TOKEN_PATH={file}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "xyz")
    assert ray_token() == ("xyz", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH=.*nope: no such token file"):
        ray_token()


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


def test_injected_nan_names_study_trial_and_step(monkeypatch):
    monkeypatch.setenv("DIT_INJECT_NAN_LOSS", "a/C1e10-d1w24h1@30, b/C2e10-d1w24h1@7")
    assert injected_nan_step("b", "C2e10-d1w24h1") == 7
    assert injected_nan_step("a", "C2e10-d1w24h1") is None


def test_a_nan_loss_stops_training_as_diverged(tiny_data):
    model = DiTConfig(ModelShape(1, 16, 1), image_size=tiny_data.image_size,
                      in_channels=tiny_data.channels, text_dim=tiny_data.text_dim,
                      text_len=tiny_data.text_len, patch_size=4)
    cfg = TrainConfig(model=model, steps=50, batch_size=8, train_urls=tuple(
        tiny_data.urls("train")), report_every=5, val_samples=0, threads=1, nan_loss_at_step=7)
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
