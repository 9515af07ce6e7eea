"""The one place a study's Tuner is built, fresh or by `Tuner.restore`, and run to its end or to
an interruption.

Interruptions, each leaving the study run `stopped` with the line that resumes it (`StudyStopped`,
exit code 3), never `finished`:
- Ctrl-C (SIGINT): Tune's own handler ends the tuning loop and saves the experiment state; a
  second Ctrl-C stops at once. SIGTERM (a scheduler or `kill`) is turned into the same SIGINT.
- a full storage (`StorageGuard` or an OSError from Tune's own writes).
Trial runs still `running` in MLflow when the loop ends (their actors were stopped with it) are
marked `stopped`; `resume` continues them from their checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from ray import tune

from search.errors import first_line
from search.progress import StudyProgress
from search.proposal import Proposer
from search.study.backend import Backend
from search.study.session import StudySession
from search.study.tune_searcher import TuneSearcher
from search.trial import StorageFullError, in_trial_process, storage_full
from search.trial_log import Usage, known_trial_runs


class StudyStopped(RuntimeError):
    """The study stopped before every trial ran (interrupted, or storage full); it can be
    resumed."""


@dataclass
class Execution:
    """What one run of the Tuner did."""

    progress: StudyProgress
    usage: list[Usage] = field(default_factory=list)
    experiment: str = ""
    reused: int = 0  # trials finished by earlier executions of the study


class _Interruption:
    """Notes Ctrl-C and SIGTERM while installed; SIGTERM is passed on as SIGINT, the signal Tune
    handles by ending its loop with the experiment state saved."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def _sigint(self, signum, frame) -> None:
        self.signal = self.signal or "SIGINT"
        raise KeyboardInterrupt  # outside Tune's loop, or a second Ctrl-C: stop now

    def _sigterm(self, signum, frame) -> None:
        self.signal = "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGINT, self._sigint)
        signal.signal(signal.SIGTERM, self._sigterm)
        try:
            yield
        finally:
            # Tune replaces our SIGINT handler while it runs and puts it back after the first
            # Ctrl-C it catches: ours in place again means the loop was interrupted.
            if self.signal is None and signal.getsignal(signal.SIGINT) == self._sigint:
                self.signal = "SIGINT"
            signal.signal(signal.SIGINT, old[0])
            signal.signal(signal.SIGTERM, old[1])


def build_tuner(session: StudySession, backend: Backend, proposer: Proposer | None,
                planned: int | None, experiment: str) -> tune.Tuner:
    """A Tuner for `experiment`: restored from Tune's saved state there when `proposer` is None
    (the proposer's state included), else fresh with `proposer`. The callbacks are always this
    driver's."""
    callbacks = backend.all_callbacks(planned)
    if proposer is None:
        tuner = tune.Tuner.restore(experiment, trainable=backend.trainable,
                                   resume_unfinished=True, resume_errored=True)
        # Tune restores the callbacks pickled when the study started; this driver's own ones
        # count and time the resumed run (Ray 2.60 has no public way to pass them on restore).
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    name, storage = experiment.rsplit("/", 1)[1], experiment.rsplit("/", 1)[0]
    spec = session.spec
    here = not spec.simulated and in_trial_process(spec)
    # A trial that trains in its own actor is restarted by Tune from its last checkpoint; one
    # that drives a Train worker group is restarted by Train, and by Tune once if its actor dies.
    retries = spec.resources.max_failures if here else 1
    return tune.Tuner(
        backend.trainable,
        tune_config=tune.TuneConfig(search_alg=TuneSearcher(proposer), num_samples=-1,
                                    max_concurrent_trials=backend.concurrency,
                                    # the next trial finds torch and the data readers loaded
                                    reuse_actors=spec.simulated or here,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=callbacks,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  failure_config=tune.FailureConfig(max_failures=retries)))


def trial_dirname(trial) -> str:
    """A trial's folder in the study's storage (its checkpoints, its error): its key, then
    Tune's id, so the folder says which isoFLOP point it holds."""
    return f"{trial.config.get('trial_key', 'trial')}-{trial.trial_id}"


def execute(session: StudySession, proposer: Proposer | None, planned: int | None,
            experiment: str | None = None) -> Execution:
    """Run the study's trials on Ray: a fresh Tuner with `proposer`, or (None) Tune's saved
    state of `experiment` (default: the session's). Raises `StudyStopped` when interrupted."""
    spec, tracking = session.spec, session.tracking
    experiment = experiment or session.experiment
    before = _finished_keys(session)
    interruption = _Interruption()
    backend: Backend | None = None  # None when Ctrl-C comes before Ray is up
    with session.driving():
        try:
            backend = Backend.start(session)
            # after ray.init, which installs a SIGTERM handler of its own
            with interruption.installed():
                tuner = build_tuner(session, backend, proposer, planned, experiment)
                logging.getLogger("ray.tune").setLevel(logging.WARNING)
                results = tuner.fit()
        except KeyboardInterrupt:
            interruption.signal = interruption.signal or "SIGINT"
            results = None
        except Exception as err:
            if storage_full(err):
                _stop(session, _storage_line(err, session))
            # any other end: never left "running" (a later `run` would wait on it)
            with contextlib.suppress(Exception):
                tracking.set_tags(session.study_run_id, {"dit.error": first_line(err)})
                tracking.set_status(session.study_run_id, "failed")
            raise
        usage = backend.after(results) if backend is not None else []
    progress = backend.progress if backend is not None else None
    running = (progress is not None and len(progress.started) > progress.done + progress.failed)
    if interruption.signal or running:
        what = interruption.signal or "an interruption"
        done = progress.done if progress is not None else 0
        _stop(session, f"study {spec.name} stopped by {what} after {done} new trials; continue "
                       f"it with `dit-scaling resume --study {spec.name}`")
    tracking.log_metrics(session.study_run_id, {"trials_reused": float(len(before))})
    return Execution(progress, usage, experiment, len(before))


def _finished_keys(session: StudySession) -> set[str]:
    runs = known_trial_runs(session.tracking, session.spec.name, session.study_run_id)
    return {key for key, (_, _, status) in runs.items() if status in ("finished", "diverged")}


def _stop(session: StudySession, message: str) -> None:
    """Mark the study run and its still-running trial runs stopped, then raise StudyStopped."""
    tracking = session.tracking
    with contextlib.suppress(Exception):  # the message matters more than the marks
        for run_id, _, status in known_trial_runs(
                tracking, session.spec.name, session.study_run_id).values():
            if status == "running":
                tracking.set_status(run_id, "stopped")
    tracking.set_tags(session.study_run_id, {"dit.error": message[:5000]})
    tracking.set_status(session.study_run_id, "stopped")
    raise StudyStopped(message) from None


def _storage_line(err: BaseException, session: StudySession) -> str:
    while err is not None:
        if isinstance(err, StorageFullError):
            return err.strerror or str(err)
        err = err.__cause__ or err.__context__
    spec = session.spec
    return (f"storage {spec.storage_path} is full (No space left on device): free space there, "
            f"then continue the study with `dit-scaling resume --study {spec.name}`")
