"""Progress lines for a running study: one line per finished trial, instead of Tune's tables."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from ray.tune import Callback


def human(n: float) -> str:
    """A count with a K/M/B suffix: 51234 -> '51.2K'."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


class StudyProgress(Callback):
    """Prints `[done/total] C=… N=… loss … elapsed` per finished trial and keeps start-up times."""

    def __init__(self, total: int | None, metric: str, out: Callable[[str], None] | None = None):
        self.total = total
        self.metric = metric
        self.out = out or (lambda line: print(line, file=sys.stdout, flush=True))
        self.started: dict[str, float] = {}
        self.first_step: dict[str, float] = {}
        self.done = 0
        self.failed = 0
        self.reused = 0  # of `done`: trials that reported the record of an earlier run
        self.t0 = time.monotonic()
        self.tracking_uri: str | None = None  # named in the warning while metrics are buffered
        self._buffering: set[str] = set()

    def _count(self) -> str:
        total = self.total if self.total is not None else "?"
        return f"[{self.done + self.failed}/{total}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id not in self.first_step and trial.trial_id in self.started:
            self.first_step[trial.trial_id] = time.monotonic() - self.started[trial.trial_id]
        self._tracking_state(trial, result)

    def _tracking_state(self, trial, result: dict) -> None:
        """One warning when a trial's metrics start waiting for the tracking server, one line
        when they flow again."""
        key = trial.config.get("trial_key", trial.trial_id)
        pending = result.get("mlflow_pending")
        server = self.tracking_uri or "the MLflow tracking server"
        if pending and key not in self._buffering:
            self._buffering.add(key)
            self.out(f"warning: MLflow tracking server {server} is not accepting metrics; trial "
                     f"{key} keeps training, {int(pending)} metrics buffered and retried with "
                     "backoff")
        elif not pending and key in self._buffering:
            self._buffering.discard(key)
            self.out(f"MLflow tracking server {server} answers again: trial {key} is delivering "
                     "its buffered metrics")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        self.reused += bool(r.get("reused"))
        c = trial.config
        elapsed = time.monotonic() - self.started.get(trial.trial_id, self.t0)
        status = f"DIVERGED at step {int(r.get('step', -1))}" if r.get("diverged") else (
            f"{self.metric} {r.get(self.metric, float('nan')):.4f}")
        startup = self.first_step.get(trial.trial_id)
        startup_txt = f", first step after {startup:.0f} s" if startup is not None else ""
        tag = f"  LR sweep lr={c['lr']:.3g}" if c.get("phase") == "lr_sweep" else ""
        if c.get("repeat"):
            tag += f"  seed #{c['repeat'] + 1}"
        mfu = f"  MFU {r['mfu']:.0%}" if r.get("mfu") else ""
        if r.get("reused"):
            startup_txt, mfu = ", finished before (reused)", ""
        self.out(f"{self._count()} C={c['budget']:.3g} FLOPs  N={human(c['params'])} "
                 f"(d{c['depth']} w{c['width']} h{c['heads']}){tag}  {status}  "
                 f"steps {int(r.get('step', 0))}{mfu}  {elapsed:.0f} s{startup_txt}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        c = trial.config
        self.out(f"{self._count()} C={c.get('budget', 0):.3g} FLOPs  N={human(c.get('params', 0))} "
                 f"FAILED: see {trial.error_file}")

    def startup_seconds(self) -> list[float]:
        return list(self.first_step.values())

    def startup_summary(self) -> str:
        s = self.startup_seconds()
        if not s:
            return "trial start-up: no trial reported a step"
        return (f"trial start-up (trial start to first reported step): median "
                f"{statistics.median(s):.1f} s, range {min(s):.1f}-{max(s):.1f} s over {len(s)} "
                "trials")
