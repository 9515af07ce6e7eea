"""A study submitted to a real multi-node Ray cluster (token auth, `ray start` nodes) that logs to a
real MLflow server (basic-auth, PostgreSQL backend), through the fault matrix.

One module-scoped set of services serves every test. Two tiny real studies run on it:
- `faulty`: corrupt and missing shards, a trial whose loss goes NaN, the worker node of a running
  trial killed (SIGKILL of the whole node; the trial resumes on the other node, then a replacement
  node joins) and the MLflow server stopped for OUTAGE_S (25 s);
- `resumed`: storage (a file:// URI, used through pyarrow.fs) on a tiny tmpfs that fills up (the
  job stops with a clear error, space is freed, `dit-scaling resume` continues), then the resumed
  driver is SIGKILLed mid-study and resumed again.
Each ends with laws in MLflow and nothing lost. The preflight tests check that every bad input is
refused with one line before any job is submitted.

The service (driver, trials, CLI) talks to the MLflow server; the tests check what it stored by
reading the server's PostgreSQL backend store directly (`Services.store`): the same rows, without
a basic-auth password check per request on a one-worker server.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from scaling.runs_table import read_runs
from search.cli import main
from search.jobs import job_client, wait_for_job
from search.tracking import TRIAL_KEY, Tracking
from tests.faults.nan_loss import NAN_LOSS_ENV
from tests.services import (
    MlflowServer,
    Postgres,
    RayCluster,
    _http,
    free_port,
    stored_metric_rows,
    wait_progressing,
    wait_until,
)

pytestmark = pytest.mark.slow

# Costliest budget first (allocator.order): its longest trial (the one the faults hit) starts
# with the study.
BUDGETS = "[2e10, 4e10]"
SIZES = "[2.5e4, 6.6e4, 1.2e5, 2.2e5]"
# the largest model at the smaller budget: the others still bracket that budget's optimum
NAN_TRIAL, NAN_STEP = "C2e10-d2w80h1", 40
OUTAGE_TRIAL = "C4e10-d1w24h1"
OUTAGE_S = 25.0  # new trials wait on the server meanwhile: long enough to buffer, no longer
# The storage-full and driver-kill study needs no long trial: the `centred_sizes` rule, 6 trials
# at half the compute.
RESUMED_BUDGETS = "[1e10, 2e10]"


@dataclass
class Services:
    root: Path
    cluster: RayCluster
    mlflow: MlflowServer
    postgres: Postgres
    creds: dict[str, str]

    @property
    def store(self) -> str:
        """The MLflow backend store URI (PostgreSQL), for the tests' own reads."""
        return self.mlflow.backend_uri


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("services")
    postgres = Postgres()
    cluster = RayCluster()
    server = None
    try:
        postgres.start()
        server = MlflowServer(root / "mlflow", postgres.create_database("mlflow"),
                              postgres.create_database("mlflow_auth"), env=postgres.env())
        server.start()
        creds = server.create_user("dit")
        cluster.give_credentials(creds)
        cluster.node_env[NAN_LOSS_ENV] = f"faulty/{NAN_TRIAL}@{NAN_STEP}"
        # Head: no CPUs for training, slots for trial actors; two 1-CPU worker nodes.
        cluster.start_head({"trial_slot": 4})
        cluster.add_node("node_a", num_cpus=1)
        cluster.add_node("node_b", num_cpus=1)
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith(("RAY_AUTH", "MLFLOW_TRACKING"))]:
                mp.delenv(key)
            mp.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_path))
            for key, value in postgres.env().items():  # for reads of the backend store
                mp.setenv(key, value)
            for key, value in creds.items():
                mp.setenv(key, value)
            yield Services(root, cluster, server, postgres, creds)
    finally:
        cluster.stop()
        if server is not None:
            server.stop()
        postgres.stop()


def write_spec(path: Path, name: str, out: Path, data: Path, uri: str, budgets: str,
               extra: str = "", sizes: str = f"sizes = {SIZES}") -> Path:
    path.write_text(textwrap.dedent(f"""
        name = "{name}"
        budgets = {budgets}
        metric = "val_loss"
        output_dir = "{out}"
        [model]
        {sizes}
        [data]
        source = "path"
        path = "{data}"
        [trainer]
        batch_size = 16
        val_samples = 128
        report_every = 20
        checkpoint_every = 100
        [resources]
        workers = 1
        cpus_per_worker = 0.5
        max_concurrent_trials = 2
        [allocator]
        order = "descending"
        [tracking]
        uri = "{uri}"
    """) + textwrap.dedent(extra))
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def submission_id(text: str) -> str:
    return re.search(r"submission id: (\S+)", text).group(1)


def trial_runs(store: str, study: str) -> tuple[str, list]:
    tracking = Tracking(store)
    runs = tracking.study_runs(study)
    assert len(runs) == 1, "a resumed study continues its study run"
    parent = runs[0]
    children = tracking.client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1000)
    return parent.info.run_id, children


def job_done(address: str, job: str, progress):
    """The job's final JobInfo, once it ends: waited on for as long as the study makes progress
    (metrics stored, job log lines), never on a fixed deadline."""
    client = job_client(address)

    def ended():
        info = client.get_job_info(job)
        return info if info.status.is_terminal() else None

    return wait_progressing(ended, lambda: (progress(), len(client.get_job_logs(job))),
                            f"job {job}", poll=2.0)


class Timeline(list):
    """What a fixture did and when (seconds since it began), printed when it ends: where a slow
    or failed run of the fault matrix spent its time, read from the test output alone."""

    def __init__(self, name: str):
        super().__init__()
        self.name, self.start = name, time.monotonic()

    def mark(self, what: str) -> None:
        self.append(f"{time.monotonic() - self.start:7.1f} s  {what}")

    def show(self) -> None:
        print(f"\n{self.name} timeline:\n" + "\n".join(self), flush=True)


def checkpoints(storage: Path) -> list[Path]:
    """The trials' checkpoints, in STORAGE/EXPERIMENT/TRIALKEY-TRIALID/checkpoint_*."""
    return sorted(storage.glob("*/*/checkpoint_*"))


# -------------------------------------------------------------------------------------------------
# preflight: one line each, nothing submitted


def test_unauthenticated_mlflow_client_is_refused(services):
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{services.mlflow.url}/api/2.0/mlflow/experiments/search"
                               "?max_results=1", timeout=10)
    assert err.value.code == 401
    # the study's user, with its credentials, is let in
    Tracking(services.mlflow.url).check_access()


def test_bad_inputs_are_refused_before_any_compute(services, tiny_data, tmp_path, capsys,
                                                   monkeypatch):
    address = services.cluster.address
    jobs_before = len(job_client(address).list_jobs())
    spec = write_spec(tmp_path / "ok.toml", "preflight", tmp_path / "out", tiny_data.root,
                      services.mlflow.url, "[1e10, 2e10]")
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace("budgets = [1e10, 2e10]",
                                            "budgets = [1e10, 2e10, -1e12]"))

    def refused(*args) -> str:
        code, out, err = cli(capsys, *args)
        assert code == 2 and not out, (out, err)
        assert len(err.strip().splitlines()) <= 2, err
        return err

    err = refused("submit", str(bad), "--address", address)
    assert "budgets[2]: -1e12 is not a positive number of FLOPs" in err

    nowhere = f"http://127.0.0.1:{free_port()}"
    err = refused("submit", str(spec), "--address", nowhere)
    assert f"cannot reach a Ray cluster at {nowhere}" in err

    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    err = refused("submit", str(spec), "--address", address)
    assert f"the Ray cluster at {address} requires a token" in err

    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    err = refused("submit", str(spec), "--address", address)
    assert f"the Ray cluster at {address} rejected the token from RAY_AUTH_TOKEN" in err
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(services.cluster.token_path))

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password-of-dit")
    err = refused("submit", str(spec), "--address", address)
    assert (f"MLflow tracking server {services.mlflow.url} refused the credentials of user dit "
            "(HTTP 401): wrong MLFLOW_TRACKING_PASSWORD") in err

    assert len(job_client(address).list_jobs()) == jobs_before
    assert not (tmp_path / "out").exists()


def test_submit_refuses_a_cluster_without_usable_credentials(services, tiny_data, tmp_path,
                                                             capsys):
    """The cluster's nodes must hold MLflow credentials of their own; `submit` checks them with a
    short job first and says how to provide them."""
    spec = write_spec(tmp_path / "ok.toml", "nocreds", tmp_path / "out", tiny_data.root,
                      services.mlflow.url, "[1e10, 2e10]")
    services.cluster.credentials_file.chmod(0o644)  # readable by every user of the node
    try:
        code, out, err = cli(capsys, "submit", str(spec), "--address", services.cluster.address)
    finally:
        services.cluster.credentials_file.chmod(0o600)
    assert code == 2 and not out, (out, err)
    assert "cannot use MLflow" in err and "chmod 600" in err, err
    assert "Credentials on the cluster" in err
    jobs = job_client(services.cluster.address).list_jobs()
    assert not any((j.metadata or {}).get("dit.study") == "nocreds" for j in jobs)


# -------------------------------------------------------------------------------------------------
# the faulty study


@dataclass
class Faulty:
    name: str
    out: Path
    submit_out: str
    job_id: str
    job_status: str
    logs: str
    killed_node: str
    killed_node_id: str
    killed_trial: str
    outage: tuple[float, float]  # wall-clock seconds (epoch) the server was down
    status_mid: str  # `dit-scaling status` while the study ran
    events: list[str] = field(default_factory=list)


def faulty_dataset(tiny, dst: Path) -> Path:
    """The tiny dataset with one train shard cut in half and another one missing."""
    shutil.copytree(tiny.root, dst)
    shards = sorted(dst.glob("train-*.tar"))
    half = shards[2].stat().st_size // 2
    with open(shards[2], "r+b") as f:
        f.truncate(half + 700)  # mid-member: the tar parser sees a truncated shard
    shards[3].unlink()
    return dst


@pytest.fixture(scope="module")
def faulty(services, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    out = root / "out"
    data = faulty_dataset(tiny_data, root / "data")
    spec = write_spec(root / "faulty.toml", "faulty", out, data, services.mlflow.url,
                      BUDGETS)
    address = services.cluster.address
    uri = services.mlflow.url
    tracking = Tracking(services.store)
    events = Timeline("faulty")
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["submit", str(spec), "--address", address]) == 0
    submit_out = buf.getvalue()
    job = submission_id(submit_out)
    events.mark(f"submitted {job}")
    storage = out / "ray"

    # 1. Kill the worker node of the longest trial (25k parameters at 4e10 FLOPs: 1016 steps) once
    #    it has written its first checkpoint (at step 100).
    def long_trial_checkpoints():
        return [c for c in checkpoints(storage)
                if c.parent.name.rsplit("-", 1)[0] == OUTAGE_TRIAL]

    progress = stored_metric_rows(services.store)
    first = wait_progressing(long_trial_checkpoints, progress, "a first checkpoint",
                             poll=0.1)[0]
    key = first.parent.name.rsplit("-", 1)[0]
    run = wait_until(lambda: tracking.client.search_runs(
        [tracking.experiment_id("faulty")], f"tags.`{TRIAL_KEY}` = '{key}'"), 30, "trial run")[0]
    node_id = wait_until(lambda: tracking.client.get_run(run.info.run_id).data.tags.get(
        "dit.node"), 30, "the trial's node tag")
    node = services.cluster.name_of(node_id)
    services.cluster.kill_node(node)
    events.mark(f"killed {node} running {key} after {first.name}")
    status = io.StringIO()
    with redirect_stdout(status):  # `status` answers from MLflow while the study runs
        main(["status", "--study", "faulty", "--tracking-uri", uri])

    # 2. Stop the tracking server for OUTAGE_S once the longest trial trains again, elsewhere.
    wait_progressing(
        lambda: "resumed_from_step" in tracking.client.get_run(run.info.run_id).data.metrics,
        lambda: (progress(), len(services.cluster.alive_nodes())), f"{OUTAGE_TRIAL} training again",
        poll=0.1)  # at once: on a quiet machine its remaining ~900 steps take only seconds
    events.mark(f"{key} trains again")
    down = time.time()
    services.mlflow.stop()
    # Meanwhile a replacement for the lost node joins (as an autoscaler's would) for the trials
    # still queued.
    services.cluster.add_node("node_c", num_cpus=1)
    events.mark(f"node_c joined after {key} resumed")
    time.sleep(max(0.0, OUTAGE_S - (time.time() - down)))
    services.mlflow.start()
    up = time.time()
    events.mark(f"MLflow up again after {up - down:.0f} s")

    info = job_done(address, job, progress)
    logs = job_client(address).get_job_logs(job)
    events.mark(f"job ended: {info.status.value}")
    events.show()
    return Faulty("faulty", out, submit_out, job, info.status.value, logs, node, node_id, key,
                  (down, up), status.getvalue(), events)


def test_submit_prints_the_submission_id_and_study(faulty, services):
    assert faulty.job_id.startswith("dit-faulty-")
    assert f"MLflow study (experiment): faulty at {services.mlflow.url}" in faulty.submit_out


def test_faulty_study_finishes_with_laws_in_mlflow(faulty, services, capsys):
    assert faulty.job_status == "SUCCEEDED", faulty.logs[-3000:]
    code, text, _ = cli(capsys, "laws", "--study", "faulty", "--tracking-uri",
                        services.mlflow.url)
    assert code == 0 and "N_opt" in text
    _, runs = trial_runs(services.store, "faulty")
    assert len(runs) == 8 and len({r.data.tags[TRIAL_KEY] for r in runs}) == 8
    code, status, _ = cli(capsys, "status", "--study", "faulty", "--tracking-uri",
                          services.mlflow.url)
    assert "7 finished" in status and "1 diverged" in status and "of 8 planned" in status


def test_killed_worker_node_resumes_the_trial_from_its_checkpoint(faulty, services):
    _, runs = trial_runs(services.store, "faulty")
    run = next(r for r in runs if r.data.tags[TRIAL_KEY] == faulty.killed_trial)
    client = MlflowClient(services.store)
    (resumed,) = client.get_metric_history(run.info.run_id, "resumed_from_step")
    last = int(run.data.params["steps"])
    # a checkpoint step: every 100 steps, and the last one (on a slow machine the kill may land
    # after training ended but before the trial was done)
    assert resumed.value >= 100 and (resumed.value % 100 == 0 or resumed.value == last)
    history = sorted(client.get_metric_history(run.info.run_id, "loss"),
                     key=lambda m: m.timestamp)
    after = [m.step for m in history if m.timestamp >= resumed.timestamp]
    # the curve continues from the checkpoint step, on another node, to the end
    start = int(resumed.value) + 20
    assert after == sorted(set(range(start, last, 20)) | {last}) or (
        resumed.value == last and after in ([], [last]))
    assert {m.step for m in history} >= set(range(20, last, 20))
    assert run.data.tags["dit.node"] != faulty.killed_node_id
    assert run.data.tags["dit.status"] in ("finished", "diverged")


def test_diverged_trial_is_marked_excluded_and_named(faulty, services, capsys):
    _, runs = trial_runs(services.store, "faulty")
    run = next(r for r in runs if r.data.tags[TRIAL_KEY] == NAN_TRIAL)
    assert run.data.tags["dit.status"] == "diverged"
    assert run.data.metrics["diverged"] == 1 and run.data.metrics["step"] == NAN_STEP
    assert int(run.data.tags["dit.final_step"]) == NAN_STEP
    code, text, _ = cli(capsys, "laws", "--study", "faulty", "--tracking-uri",
                        services.mlflow.url)
    assert f"Left out of the fit: {NAN_TRIAL}: diverged at step {NAN_STEP}" in text
    laws = json.loads(cli(capsys, "laws", "--study", "faulty", "--tracking-uri",
                          services.mlflow.url, "--json")[1])
    assert all(NAN_TRIAL not in json.dumps(b) for b in laws["approach2"]["budgets"])
    # the runs table holds the 7 finished trials: the one the driver wrote beside the study run,
    # and the copy in the study's storage, rewritten as each trial finished; `fit` reads it offline
    table = read_runs(faulty.out / "studies" / "faulty" / "runs.parquet")
    assert len(table) == 7 and NAN_TRIAL not in {p.trial for p in table}
    (stored,) = (faulty.out / "ray").glob("faulty-*/runs.parquet")
    assert {p.trial for p in read_runs(stored)} == {p.trial for p in table}


def test_corrupt_and_missing_shards_are_skipped_and_counted(faulty, services):
    _, runs = trial_runs(services.store, "faulty")
    client = MlflowClient(services.store)
    for run in runs:
        skipped = run.data.metrics["data_skipped"]
        if "resumed_from_step" in run.data.metrics:  # the attempt before the node was killed
            skipped = max(m.value for m in client.get_metric_history(run.info.run_id,
                                                                     "data_skipped"))
        assert skipped >= 2, run.data.tags[TRIAL_KEY]


def test_tracking_outage_buffers_metrics_and_delivers_all(faulty, services):
    down, up = faulty.outage
    assert up - down >= OUTAGE_S
    assert f"MLflow tracking server {services.mlflow.url} is not accepting metrics" in faulty.logs
    _, runs = trial_runs(services.store, "faulty")
    client = MlflowClient(services.store)
    run = next(r for r in runs if r.data.tags[TRIAL_KEY] == OUTAGE_TRIAL)
    history = client.get_metric_history(run.info.run_id, "loss")
    during = [m for m in history if down * 1000 < m.timestamp < up * 1000]
    assert during, "the trial kept training (and logging) while the server was down"
    # count before = after: every metric the sink was handed is in MLflow (trials whose worker
    # was not killed: a killed worker's sink dies with it, and its steps are trained again)
    checked = 0
    for r in runs:
        logged = int(r.data.tags["dit.metrics_logged"])
        stored = sum(len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics
                     if k != "attempt")
        restarted = "resumed_from_step" in r.data.metrics or r.data.metrics.get("attempt", 1) > 1
        if restarted:  # the outage trial too: its last attempt's
            assert stored >= logged, (r.data.tags[TRIAL_KEY], stored, logged)  # all arrived
            continue
        assert stored == logged, (r.data.tags[TRIAL_KEY], stored, logged)
        checked += 1
    assert checked >= 6


def test_status_answers_while_the_study_runs(faulty):
    assert faulty.status_mid.startswith("study faulty: running")
    assert f"{faulty.killed_trial}: running at step" in faulty.status_mid
    assert "of 8 planned" in faulty.status_mid and "laws: not yet fitted" in faulty.status_mid


def test_the_password_is_in_no_job_record_nor_any_ray_file(faulty, services):
    """Nothing of the study's MLflow password reaches the job API, a job's metadata or
    entrypoint, or any file Ray wrote on any node (logs, runtime_env records, session state)."""
    password = services.creds["MLFLOW_TRACKING_PASSWORD"]
    cluster = services.cluster
    status, body = _http(f"{cluster.address}/api/jobs/",
                         {"Authorization": f"Bearer {cluster.token}"})
    assert status == 200 and faulty.job_id.encode() in body
    assert password.encode() not in body
    for job in job_client(cluster.address).list_jobs():
        assert password not in json.dumps([job.entrypoint, job.metadata, job.runtime_env])
    files = [f for f in cluster.root.rglob("*") if f.is_file() and not f.is_symlink()]
    assert len(files) > 50 and any(f.name == "runtime_env_agent.log" for f in files)
    leaks = [f for f in files if password.encode() in f.read_bytes()]
    assert not leaks, leaks


def test_jobs_status_and_logs(faulty, services, capsys):
    address = services.cluster.address
    code, out, _ = cli(capsys, "jobs", "status", faulty.job_id, "--address", address)
    assert code == 0 and "SUCCEEDED" in out and "study: faulty" in out
    assert services.creds["MLFLOW_TRACKING_PASSWORD"] not in out
    code, out, _ = cli(capsys, "jobs", "logs", faulty.job_id, "--address", address)
    assert code == 0 and "study faulty: 8 trials" in out
    code, _, err = cli(capsys, "jobs", "status", "no-such-job", "--address", address)
    assert code == 2 and "no job 'no-such-job'" in err


# -------------------------------------------------------------------------------------------------
# storage full, then the driver killed: resumed twice


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory):
    path = tmp_path_factory.mktemp("tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"the disk-full test mounts a 1 MB tmpfs and needs root: {done.stderr}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@dataclass
class Resumed:
    first: object
    first_logs: str
    kill_at: list[str]
    final: object
    final_logs: str
    out: Path


@pytest.fixture(scope="module")
def resumed(services, tiny_data, tmpfs, tmp_path_factory, faulty, centred_sizes):
    root = tmp_path_factory.mktemp("resumed")
    spec = write_spec(root / "resumed.toml", "resumed", root / "out", tiny_data.root,
                      services.mlflow.url, RESUMED_BUDGETS, sizes=centred_sizes,
                      extra=f"""
                          [storage]
                          path = "{tmpfs.as_uri()}"
                      """)
    address, uri = services.cluster.address, services.mlflow.url
    def submit(*args) -> str:
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(list(args)) == 0
        return submission_id(buf.getvalue())

    events = Timeline("resumed")
    job = submit("submit", str(spec), "--address", address)
    events.mark(f"submitted {job}")
    progress = stored_metric_rows(services.store)
    first = job_done(address, job, progress)
    first_logs = job_client(address).get_job_logs(job)
    events.mark(f"first job ended: {first.status.value}")

    # free space, resume; SIGKILL that driver once a trial has finished and another is running
    subprocess.run(["mount", "-o", "remount,size=256m", str(tmpfs)], check=True)
    job = submit("resume", "--study", "resumed", "--tracking-uri", uri, "--address", address)
    events.mark(f"resume submitted {job}")
    tracking = Tracking(services.store)
    parent = tracking.latest_study_run("resumed").info.run_id
    finished_before = {r.trial_key for r in tracking.trial_records(
        parent, tracking.experiment_id("resumed")) if r.status == "finished"}

    def one_more_finished_and_one_running():
        records = tracking.trial_records(parent, tracking.experiment_id("resumed"))
        done = {r.trial_key for r in records if r.status == "finished"}
        running = [r for r in records if r.status == "running" and r.metrics.get("step", 0) > 0]
        return (done - finished_before) and running

    wait_progressing(one_more_finished_and_one_running, progress, "progress after resume")
    pid = int(job_client(address).get_job_info(job).driver_info.pid)
    os.kill(pid, signal.SIGKILL)
    records = tracking.trial_records(parent, tracking.experiment_id("resumed"))
    kill_at = sorted(f"{r.trial_key}:{r.status}" for r in records)
    wait_for_job(address, job, timeout=120)
    events.mark(f"driver killed at {kill_at}")

    job = submit("resume", "--study", "resumed", "--tracking-uri", uri, "--address", address)
    events.mark(f"second resume submitted {job}")
    final = job_done(address, job, progress)
    events.mark(f"last job ended: {final.status.value}")
    events.show()
    return Resumed(first, first_logs, kill_at, final, job_client(address).get_job_logs(job),
                   root / "out")


def test_full_storage_stops_the_study_with_a_clear_error(resumed, tmpfs):
    assert resumed.first.status.value == "FAILED"
    line = next(x for x in resumed.first_logs.splitlines() if x.startswith("dit-scaling run:"))
    assert f"storage {tmpfs.as_uri()} is full" in line  # storage given as a pyarrow.fs URI
    assert "dit-scaling resume --study resumed" in line


def test_resumed_study_finishes_without_reruns_or_duplicates(resumed, services, capsys):
    assert resumed.final.status.value == "SUCCEEDED", resumed.final_logs[-3000:]
    assert any(k.endswith(":finished") for k in resumed.kill_at)
    assert any(k.endswith(":running") for k in resumed.kill_at)
    _, runs = trial_runs(services.store, "resumed")
    keys = [r.data.tags[TRIAL_KEY] for r in runs]
    assert len(keys) == len(set(keys)) == 6, keys
    client = MlflowClient(services.store)
    finished_at_kill = {k.split(":")[0] for k in resumed.kill_at if k.endswith(":finished")}
    for r in runs:
        key = r.data.tags[TRIAL_KEY]
        assert r.data.tags["dit.status"] == "finished"
        finals = client.get_metric_history(r.info.run_id, "final")
        if key in finished_at_kill:  # a trial that finished was never trained again
            assert len(finals) == 1, key
        else:  # one that was running trained on from its checkpoint: one more end at most
            assert 1 <= len(finals) <= 2 and len({m.step for m in finals}) == 1, key
    code, text, _ = cli(capsys, "laws", "--study", "resumed", "--tracking-uri",
                        services.mlflow.url)
    assert code == 0 and "N_opt" in text
    assert len(read_runs(resumed.out / "studies" / "resumed" / "runs.parquet")) == 6


def test_status_while_nothing_runs_reads_mlflow(resumed, services, capsys):
    code, out, _ = cli(capsys, "status", "--study", "resumed", "--tracking-uri",
                       services.mlflow.url)
    assert code == 0 and "6 finished of 6 planned" in out and "laws: fitted" in out


