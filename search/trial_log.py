"""MLflow trial runs for simulated trials, written from the driver in a background thread.

A real trial logs from its rank-0 Train worker; a simulated trial is too short for that to pay
(a trial actor would import MLflow and open its own store connection, and dozens of concurrent
SQLite writers would queue on the file lock). Instead this Tune callback sees every trial start,
result and end on the driver and hands them to one writer thread: per trial one run created (with
its params and `dit.status` = running), then one `log_batch` with the whole loss curve and the
final status. The runs are the same nested trial runs, tags and metric names as real trials.

A trial run counts its starts in the `dit.attempts` tag, so a restored study can show that no
finished trial ran twice. If the driver dies with writes still queued, `reconcile` writes the
missing runs from the trials Tune restored (a simulated curve is recomputed from its config).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow.entities import Metric, RunTag
from ray.tune import Callback

from search.records import BRANCH_OF
from search.tracking import (
    MAX_BATCH,
    STATUS,
    TRIAL_KEY,
    Tracking,
)

ATTEMPTS = "dit.attempts"
CURVE = ("step", "loss", "loss_ema", "tokens", "flops", "flops_6nd", "gpu_hours", "val_loss")


@dataclass(frozen=True)
class Usage:
    """When a trial held its GPUs (wall seconds since the epoch) and when it computed."""

    key: str
    gpus: int
    held_from: float
    held_to: float
    compute_from: float | None
    compute_to: float | None


class SimulatedTrialLog(Callback):
    """Tune callback: simulated trials -> MLflow trial runs under the study run, batched."""

    def __init__(self, tracking_uri: str, study: str, study_run_id: str,
                 params_of: Callable[[dict], dict[str, str]]):
        self.uri, self.study, self.study_run_id = tracking_uri, study, study_run_id
        self.params_of = params_of
        self.usage: list[Usage] = []
        self._history: dict[str, list[dict]] = {}
        self._started: dict[str, float] = {}
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._runs: dict[str, list] | None = None  # key -> [run id, attempts, status]
        self.errors: list[str] = []

    def __getstate__(self):  # Tune pickles callbacks with the Tuner; threads do not pickle
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_queue", "_thread", "_runs", "errors")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_runtime()

    # -- Tune callback hooks -------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.time()
        self._history[trial.trial_id] = []
        self._put(("start", dict(trial.config)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._history.setdefault(trial.trial_id, []).append(
            {k: float(result[k]) for k in (*CURVE, "sim_start", "sim_end") if k in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "failed")

    def on_experiment_end(self, trials, **info):
        self.close()

    def _end(self, trial, status: str) -> None:
        history = self._history.pop(trial.trial_id, [])
        last = history[-1] if history else {}
        now = time.time()
        self.usage.append(Usage(trial.config["trial_key"], int(trial.config.get("gpus") or 0),
                                self._started.pop(trial.trial_id, now), now,
                                last.get("sim_start"), last.get("sim_end")))
        self._put(("finish", dict(trial.config), history, status))

    # -- the writer ----------------------------------------------------------------------------
    def _put(self, item) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="trial-log")
            self._thread.start()
        self._queue.put(item)

    def _loop(self) -> None:
        tracking = Tracking(self.uri)
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item[0] == "start":
                    self._write_start(tracking, item[1])
                else:
                    self._write_finish(tracking, *item[1:])
            except Exception as err:  # keep the study running; report at the end
                self.errors.append(f"{item[1].get('trial_key')}: {err}")

    def _known(self, tracking: Tracking) -> dict[str, list]:
        if self._runs is None:
            self._runs = known_trial_runs(tracking, self.study, self.study_run_id)
        return self._runs

    def _write_start(self, tracking: Tracking, config: dict) -> None:
        key = config["trial_key"]
        runs = self._known(tracking)
        if key in runs:
            run_id, attempts, status = runs[key]
            if status == "finished":  # a finished run is a record: it is never rewritten
                return
            runs[key] = [run_id, attempts + 1, "running"]
            tracking.set_tags(run_id, {ATTEMPTS: attempts + 1, STATUS: "running"})
            return
        run_id = tracking.trial_run(self.study, self.study_run_id, key, self.params_of(config),
                                    float(config["budget"]), {ATTEMPTS: "1"}, known_new=True,
                                    trunk=config.get(BRANCH_OF))
        runs[key] = [run_id, 1, "running"]

    def _write_finish(self, tracking: Tracking, config: dict, history: list[dict],
                      status: str) -> None:
        key = config["trial_key"]
        runs = self._known(tracking)
        if key not in runs:
            self._write_start(tracking, config)
        run_id, _, known = runs[key]
        if known == "finished":
            return
        runs[key][2] = status
        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, int(row.get("step", 0)))
                   for row in history for name, value in row.items() if name in CURVE]
        for i in range(0, max(1, len(metrics)), MAX_BATCH):
            last = i + MAX_BATCH >= len(metrics)
            tracking.client.log_batch(run_id, metrics=metrics[i:i + MAX_BATCH],
                                      tags=[RunTag(STATUS, status)] if last else [])
        tracking.client.set_terminated(run_id, "FINISHED" if status == "finished" else "FAILED")

    def close(self, timeout: float = 600.0) -> None:
        """Write everything queued; waits at most `timeout` seconds."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def reconcile(self, trials: list[tuple[dict, list[dict], str]]) -> int:
        """Write the runs of (config, history, status) trials that MLflow lacks or holds as
        unfinished; returns how many were written."""
        self.close()
        tracking = Tracking(self.uri)
        self._runs = None
        runs = self._known(tracking)
        written = 0
        for config, history, status in trials:
            key = config["trial_key"]
            if key in runs and runs[key][2] == status:
                continue
            if key not in runs:
                self._write_start(tracking, config)
            self._write_finish(tracking, config, history, status)
            written += 1
        return written


def known_trial_runs(tracking: Tracking, study: str, study_run_id: str) -> dict[str, list]:
    """Trial key -> [run id, attempts, status] for the trial runs under a study run."""
    runs = {}
    for r in tracking.study_trial_runs(tracking.experiment_id(study), study_run_id):
        key = r.data.tags.get(TRIAL_KEY)
        if key:
            runs[key] = [r.info.run_id, int(r.data.tags.get(ATTEMPTS, "1")),
                         r.data.tags.get(STATUS, "running")]
    return runs
