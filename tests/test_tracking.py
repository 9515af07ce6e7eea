"""MLflow tracking on a real SQLite store: experiments, nested trial runs, buffered metrics."""

import socket
import sqlite3
import time
import warnings
from pathlib import Path

import pytest

from search.store import check_store, sqlite_path, uri_scheme
from search.tracking import (
    KIND,
    PARENT,
    MetricSink,
    Tracking,
    TrackingError,
    load_metrics,
    save_metrics,
    stamp,
)


@pytest.fixture
def tracking(tmp_path) -> Tracking:
    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def test_study_and_trial_runs_nest_and_are_found_again(tracking, tmp_path):
    study = tracking.start_study_run("s1", {"budgets": "[1e11]"})
    exp = tracking.experiment_id("s1")
    assert tracking.client.get_experiment(exp).artifact_location.startswith(
        (tmp_path / "artifacts" / "s1").as_uri())
    a = tracking.trial_run("s1", study, "C1e11-d1w16h1", {"params": "1000"}, 1e11)
    again = tracking.trial_run("s1", study, "C1e11-d1w16h1", {"params": "1000"}, 1e11)
    assert a == again  # a retried trial reuses its run: no duplicates
    run = tracking.client.get_run(a)
    assert run.data.tags[PARENT] == study and run.data.tags[KIND] == "trial"
    tracking.log_metrics(a, {"loss": 0.5, "val_loss": 0.4}, step=10)
    tracking.set_status(a, "finished")
    (record,) = tracking.trial_records(study, exp)
    assert record.status == "finished" and record.metrics == {"loss": 0.5, "val_loss": 0.4}
    assert record.param("params", int) == 1000
    assert tracking.latest_study_run("s1").info.run_id == study


def test_a_branch_nests_under_its_trunk_and_stays_a_trial_of_the_study(tracking):
    from search.local_store import LocalStore

    study = tracking.start_study_run("nest", {"budgets": "[1e11, 1e12]"})
    exp = tracking.experiment_id("nest")
    trunk = tracking.trial_run("nest", study, "C1e12-d1w16h1", {}, 1e12)
    branch = tracking.trial_run("nest", study, "C1e11-d1w16h1", {}, 1e11, trunk="C1e12-d1w16h1")
    assert tracking.client.get_run(branch).data.tags[PARENT] == trunk
    assert tracking.client.get_run(trunk).data.tags[PARENT] == study
    assert branch == tracking.trial_run("nest", study, "C1e11-d1w16h1", {}, 1e11,
                                        trunk="C1e12-d1w16h1")  # found again, not duplicated
    # a store written before trial runs were tagged with their study run: found by the parent
    legacy = tracking.client.create_run(exp, run_name="C1e11-d1w8h1", tags={
        PARENT: study, KIND: "trial", "dit.trial_key": "C1e11-d1w8h1"}).info.run_id
    for reader in (tracking, LocalStore(tracking.uri, sqlite3.connect(
            tracking.uri.removeprefix("sqlite:///")))):
        records = reader.trial_records(study, exp)
        assert sorted(r.run_id for r in records) == sorted([trunk, branch, legacy])
    assert tracking.trial_run("nest", study, "C1e11-d1w8h1", {}, 1e11) == legacy


def test_unknown_study_names_the_store(tracking):
    with pytest.raises(TrackingError, match=r"no study named 'nope' in MLflow at sqlite:///"):
        tracking.experiment_id("nope")


def test_sink_delivers_every_metric(tracking):
    study = tracking.start_study_run("s2", {})
    run = tracking.trial_run("s2", study, "k", {}, 1e11)
    sink = MetricSink(tracking.uri, run, flush_every_s=0.05)
    for step in range(1, 301):
        sink.log({"loss": 1.0 / step, "loss_ema": 2.0 / step}, step)
    assert sink.close(timeout=60) == 0
    history = tracking.client.get_metric_history(run, "loss")
    assert len(history) == 300 and sink.delivered == 600
    assert [m.step for m in history] == list(range(1, 301))


def test_undelivered_metrics_saved_then_sent_again_fill_the_curve_once(tracking, tmp_path):
    study = tracking.start_study_run("s3", {})
    run = tracking.trial_run("s3", study, "k", {}, 1e11)
    first = MetricSink(tracking.uri, run, flush_every_s=3600)  # delivers only when closed
    for step in (1, 2):
        first.log({"loss": 1.0 / step}, step)
    first.close(timeout=60)
    first = MetricSink(tracking.uri, run, flush_every_s=3600)
    first.log({"loss": 1 / 3}, 3)  # a worker lost before this one was delivered ...
    save_metrics(tmp_path / "m.json", run, first.undelivered() + stamp({"loss": 0.25}, 4))
    assert [m.step for m in load_metrics(tmp_path / "m.json", run)] == [3, 4]
    assert load_metrics(tmp_path / "m.json", "another-run") == []  # a reused checkpoint
    resumed = MetricSink(tracking.uri, run, flush_every_s=0.05)  # ... its successor sends them
    resumed.log_stamped(load_metrics(tmp_path / "m.json", run))
    resumed.log_stamped(load_metrics(tmp_path / "m.json", run))  # twice: stored once
    resumed.log({"loss": 0.2}, 5)
    assert resumed.close(timeout=60) == 0
    history = tracking.client.get_metric_history(run, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert load_metrics(tmp_path / "absent.json", run) == []


def test_sink_buffers_and_warns_when_the_server_is_unreachable(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink = MetricSink(uri, "0" * 32, flush_every_s=0.05)
        sink.log({"loss": 1.0}, 1)
        left = sink.close(timeout=3)
    assert left == 1 and sink.pending == 1
    messages = [str(w.message) for w in caught]
    assert any(uri in m and "buffered" in m for m in messages)
    assert any("1 metrics" in m and "not delivered" in m for m in messages)


def test_trial_count_tells_a_real_study_from_a_fit(tracking):
    study = tracking.start_study_run("with-trials", {})
    tracking.trial_run("with-trials", study, "k", {}, 1e11)
    tracking.start_study_run("fit-only", {})
    assert tracking.trial_count("with-trials") == 1
    assert tracking.trial_count("fit-only") == 0 and tracking.trial_count("absent") == 0


def test_store_checks_need_no_mlflow_call(tmp_path):
    """A missing file is refused for reading and accepted for writing (created later), and
    nothing is created by the check itself."""
    missing = f"sqlite:///{tmp_path / 'a' / 'b' / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="no such file"):
        check_store(missing)
    with pytest.raises(TrackingError, match="no such file"):
        check_store(missing, write=True, create=False)
    check_store(missing, write=True)
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(TrackingError, match="is empty"):
        check_store(f"sqlite:///{empty}")
    check_store(f"sqlite:///{empty}", write=True)  # MLflow makes an empty file a store
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrackingError, match="is a file, so"):
        check_store(f"sqlite:///{blocker / 'mlflow.db'}", write=True)
    check_store("sqlite://")  # in memory
    check_store("postgresql+psycopg2://u@127.0.0.1/db")  # MLflow's to check


def test_a_store_passed_as_a_plain_path_is_refused_with_its_sqlite_uri(tmp_path):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (x)")
    with pytest.raises(TrackingError, match=f"give it as sqlite:///{db}"):
        check_store(str(db))
    assert uri_scheme("postgresql+psycopg2://h/db") == "postgresql"
    assert uri_scheme("/abs/path") == "" and uri_scheme("file:///x") == "file"
    assert sqlite_path("sqlite:////abs/m.db?mode=ro") == Path("/abs/m.db")
    assert sqlite_path("sqlite:///rel.db") == Path("rel.db")


def test_a_closed_port_fails_the_access_check_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TrackingError, match="is unreachable: Connection refused"):
        Tracking(f"http://127.0.0.1:{port}").check_access()
    assert time.monotonic() - started < 15
