"""MLflow tracking: one experiment per study, a parent study run, one nested run per trial.

Everything goes through an explicit `MlflowClient(tracking_uri)`, never the fluent global state,
so the driver, Tune trainables and Train workers in other processes agree on where runs live.
Trial runs are found by their `dit.trial_key` tag under the study run, so a retried or resumed
trial reuses its run instead of creating a duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.errors import TrackingError, first_line
from search.records import (  # noqa: F401  (the tag names are imported from here too)
    BUDGET,
    KIND,
    LAWS_FILE,
    PARENT,
    STATUS,
    STUDY,
    STUDY_RUN,
    TRIAL_KEY,
    TrialRecord,
    latest_study_run,
)
from search.store import probe_server

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# Command output is the service's own: no tqdm bar for every laws.json a query downloads.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

MAX_BATCH = 1000  # MLflow's log_batch limit on metrics per call


class Tracking:
    """The study's MLflow store (SQLite file or server) and artifact root."""

    def __init__(self, uri: str, artifact_root: str | None = None):
        self.uri = uri
        self.artifact_root = artifact_root
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as err:  # an unsupported scheme, a store that cannot be opened
            raise TrackingError(f"MLflow store {uri} cannot be opened: {_short(err)}") from None

    def check_access(self, timeout: float = 5.0) -> None:
        """Fail fast, with one line naming the server and the cause, if the store cannot be used:
        unreachable, credentials refused (401) or not allowed (403). A server is asked once,
        without MLflow's minutes of retries, so a bad setting is reported before any compute."""
        if self.uri.startswith(("http://", "https://")):
            probe_server(self.uri, timeout)
            return
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:
            raise TrackingError(f"MLflow store {self.uri} cannot be opened: "
                                f"{_short(err)}") from None

    # -- experiments and study runs ---------------------------------------------------------
    def experiment_id(self, study: str, create: bool = False) -> str:
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            return exp.experiment_id
        if not create:
            raise TrackingError(f"no study named {study!r} in MLflow at {self.uri}")
        location = None
        if self.artifact_root:
            root = self.artifact_root
            location = root if "://" in root else Path(root).resolve().as_uri()
            location = f"{location.rstrip('/')}/{study}"
        return self.client.create_experiment(study, artifact_location=location)

    def start_study_run(self, study: str, params: dict[str, str]) -> str:
        exp = self.experiment_id(study, create=True)
        run = self.client.create_run(exp, tags={KIND: "study", STUDY: study, STATUS: "running"},
                                     run_name=f"{study}-study")
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def trial_count(self, study: str, limit: int = 1) -> int:
        """How many trial runs the study's experiment holds (counted up to `limit`); 0 when there
        is no such experiment."""
        exp = self.client.get_experiment_by_name(study)
        if exp is None:
            return 0
        return len(self.client.search_runs([exp.experiment_id], f"tags.`{KIND}` = 'trial'",
                                           max_results=limit))

    def study_runs(self, study: str) -> list:
        exp = self.experiment_id(study)
        return self.client.search_runs([exp], f"tags.`{KIND}` = 'study'",
                                       order_by=["attributes.start_time DESC"])

    def latest_study_run(self, study: str, with_laws: bool = False):
        return latest_study_run(self.study_runs(study), study, self.uri, with_laws)

    # -- trial runs --------------------------------------------------------------------------
    def trial_run(self, study: str, study_run_id: str, trial_key: str, params: dict[str, str],
                  budget: float, tags: dict[str, str] | None = None, known_new: bool = False,
                  trunk: str | None = None) -> str:
        """The run id of this trial under the study run, created (with `tags` beside the
        service's own) on first call; the one place trial runs are created. `known_new`: the
        caller knows there is none yet, so no search is made. `trunk`: the trial key of the run a
        cooldown branch restores, under whose run the branch's run is nested when it exists."""
        exp = self.experiment_id(study)
        if not known_new:
            found = self.study_trial_runs(exp, study_run_id, f"tags.`{TRIAL_KEY}` = '{trial_key}'")
            if found:
                return found[0].info.run_id
        parent = study_run_id
        if trunk is not None:
            found = self.study_trial_runs(exp, study_run_id, f"tags.`{TRIAL_KEY}` = '{trunk}'")
            parent = found[0].info.run_id if found else study_run_id
        run = self.client.create_run(exp, run_name=trial_key, tags={
            PARENT: parent, STUDY_RUN: study_run_id, KIND: "trial", STUDY: study,
            TRIAL_KEY: trial_key, BUDGET: f"{budget:.6g}", STATUS: "running", **(tags or {})})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def study_trial_runs(self, experiment_id: str, study_run_id: str, where: str = "") -> list:
        """The study run's runs matching `where`: those tagged with it (branches nest under their
        trunk's run) and, for stores written before that tag, its children."""
        found: dict[str, object] = {}
        for tag in (STUDY_RUN, PARENT):
            query = f"tags.`{tag}` = '{study_run_id}'" + (f" and {where}" if where else "")
            for r in self.client.search_runs([experiment_id], query, max_results=50000):
                found.setdefault(r.info.run_id, r)
        return list(found.values())

    def trial_records(self, study_run_id: str, experiment_id: str) -> list[TrialRecord]:
        runs = self.study_trial_runs(experiment_id, study_run_id, f"tags.`{KIND}` = 'trial'")
        return [TrialRecord(r.info.run_id, r.data.tags.get(TRIAL_KEY, r.info.run_name),
                            r.data.tags.get(STATUS, r.info.status.lower()), dict(r.data.params),
                            dict(r.data.metrics)) for r in runs]

    # -- logging -----------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(run_id, metrics=items[i:i + MAX_BATCH])

    def set_status(self, run_id: str, status: str, terminal: bool = True) -> None:
        self.client.log_batch(run_id, tags=[RunTag(STATUS, status)])
        if terminal:
            mlflow_status = {"finished": "FINISHED", "killed": "KILLED",
                             "stopped": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(run_id, mlflow_status)

    def reopen(self, run_id: str) -> None:
        """Mark a run that a failure or a restart had ended as running again."""
        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(run_id, tags=[RunTag(STATUS, "running")])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None):
        for p in paths:
            self.client.log_artifact(run_id, str(p), artifact_path)

    def download_text(self, run_id: str, name: str, dst: Path) -> str:
        return Path(self.client.download_artifacts(run_id, name, str(dst))).read_text()


class MetricSink:
    """Buffers a run's metrics and delivers them from a background thread with retries and backoff.

    Training never waits on the tracking server: if it is unreachable, metrics stay buffered, one
    warning names the server, and delivery is retried (1 s, 2 s, ... up to 30 s apart) until it
    answers or `close(timeout)` gives up, which says how many metrics were not delivered.

    Against a server (http/https) each attempt is one request with MLflow's own HTTP retries off
    (they would hold one request for minutes before the sink could warn) and a short timeout;
    MLflow's store deduplicates a batch that is sent again after a lost reply.
    """

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 1.0,
                 request_timeout_s: float = 10.0):
        self.uri, self.run_id = uri, run_id
        self._send = _batch_sender(uri, request_timeout_s)
        self._pending: list[Metric] = []
        self._tags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._flush_every = flush_every_s
        self.logged = 0  # metrics handed to the sink
        self.delivered = 0  # metrics the store accepted
        self.failures = 0  # failed delivery attempts
        self.failing_since: float | None = None  # monotonic time of the first failure in a row
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mlflow-sink")
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.log_stamped(stamp(metrics, step))

    def log_stamped(self, items: list[Metric]) -> None:
        """Metrics that already carry their timestamps (see `stamp`); sending one again is
        harmless: MLflow's store keeps one row per (key, value, timestamp, step)."""
        with self._lock:
            self._pending.extend(items)
            self.logged += len(items)

    def undelivered(self) -> list[Metric]:
        """The metrics handed to the sink that the store has not yet accepted, oldest first."""
        with self._lock:
            return list(self._pending)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags delivered like metrics: buffered, never blocking training."""
        with self._lock:
            self._tags.update({k: str(v) for k, v in tags.items()})

    def _send_some(self) -> bool:
        with self._lock:
            batch = self._pending[:MAX_BATCH]
            tags = dict(self._tags)
        if not batch and not tags:
            return True
        try:
            self._send(self.run_id, batch, [RunTag(k, v) for k, v in tags.items()])
        except Exception as err:  # any transport or server error: keep the batch and retry
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                warnings.warn(f"MLflow tracking server {self.uri} did not accept metrics "
                              f"({_short(err)}); training continues, metrics are buffered and "
                              "retried with backoff", stacklevel=1)
            return False
        with self._lock:
            del self._pending[:len(batch)]
            for k, v in tags.items():
                if self._tags.get(k) == v:
                    del self._tags[k]
        self.delivered += len(batch)
        if self.failing_since is not None:
            outage = time.monotonic() - self.failing_since
            self.failing_since = None
            warnings.warn(f"MLflow tracking server {self.uri} answers again after {outage:.0f} s; "
                          "buffered metrics are being delivered", stacklevel=1)
        return True

    def _loop(self) -> None:
        backoff = 1.0
        while True:
            self._wake.wait(self._flush_every)
            self._wake.clear()
            while self._has_work():
                if self._send_some():
                    backoff = 1.0
                    continue
                if self._wake.wait(backoff):
                    self._wake.clear()
                backoff = min(30.0, backoff * 2)
            if self._closing:
                return

    @property
    def pending(self) -> int:
        """Metrics not yet delivered."""
        with self._lock:
            return len(self._pending)

    def _has_work(self) -> bool:
        with self._lock:
            return bool(self._pending or self._tags)

    @property
    def failing(self) -> bool:
        """The last delivery attempt failed and metrics are waiting."""
        return self.failing_since is not None

    def close(self, timeout: float = 300.0) -> int:
        """Deliver what is buffered, waiting at most `timeout` s; returns how many were not.

        The run gets tag `dit.metrics_logged`: how many metrics this sink was handed, to compare
        with what the store holds."""
        self.set_tags({"dit.metrics_logged": str(self.logged)})
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        left = self.pending
        if left:
            warnings.warn(f"{left} metrics for run {self.run_id} were not delivered to {self.uri}",
                          stacklevel=1)
        return left


def stamp(metrics: dict[str, float], step: int) -> list[Metric]:
    """MLflow metrics for one step, stamped now (milliseconds since the epoch)."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]


def save_metrics(path: str | Path, run_id: str, items: list[Metric]) -> None:
    """One run's metrics as JSON: the run id and a list of [key, value, timestamp ms, step]."""
    rows = [[m.key, m.value, m.timestamp, m.step] for m in items]
    Path(path).write_text(json.dumps({"run_id": run_id, "metrics": rows}))


def load_metrics(path: str | Path, run_id: str) -> list[Metric]:
    """The metrics `save_metrics` wrote for `run_id`, with their original timestamps; none if
    there is no file or it belongs to another run (a checkpoint reused by a new run)."""
    path = Path(path)
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if saved.get("run_id") != run_id:
        return []
    return [Metric(key, float(value), int(ts), int(step))
            for key, value, ts, step in saved["metrics"]]


def _short(err: Exception) -> str:
    return first_line(err, 200)


def _batch_sender(uri: str, timeout: float):
    """A function that sends one batch of metrics and tags to the store at `uri`, one attempt."""
    if not uri.startswith(("http://", "https://")):
        client = MlflowClient(tracking_uri=uri)
        return lambda run_id, batch, tags: client.log_batch(run_id, metrics=batch, tags=tags)

    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    endpoint = "/api/2.0/mlflow/runs/log-batch"
    creds = get_default_host_creds(uri)

    def send(run_id: str, batch: list[Metric], tags: list[RunTag]) -> None:
        body = message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in batch],
                                        tags=[t.to_proto() for t in tags]))
        response = http_request(creds, endpoint, "POST", max_retries=0, timeout=timeout,
                                json=json.loads(body))
        verify_rest_response(response, endpoint)

    return send
