"""From trial runs in MLflow to fitted laws on the study run, and back.

The study run holds what `laws`, `predict` and `compare` need: `laws.json` (the fit with its
bootstrap draws), the law metrics, figures and `runs.parquet` (one row per trial, so `fit` can run
offline). A copy of the figures and the table is also written under OUTPUT/studies/NAME/.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback

from scaling.figures import isoflop_figure, power_law_figure
from scaling.laws import FitOptions, LawFit, LawFitError, fit_laws
from scaling.runs_table import RunPoint, read_runs, write_runs
from search.spec import StudySpec
from search.tracking import LAWS_FILE, Tracking, TrackingError, TrialRecord

RUNS_FILE = "runs.parquet"


def trial_points(records: list[TrialRecord], metric: str) -> tuple[list[RunPoint], list[str]]:
    """Finished trials as fit points, and a line for each trial left out (diverged, failed, ...)."""
    points, excluded = [], []
    for r in sorted(records, key=lambda r: (float(r.params.get("budget", 0)), r.trial_key)):
        if r.params.get("phase") == "lr_sweep":  # tunes the LR rule, not an isoFLOP point
            continue
        value = r.metrics.get(metric)
        if r.status != "finished" or value is None:
            step = r.metrics.get("step")
            at = f" at step {int(step)}" if step is not None else ""
            excluded.append(f"{r.trial_key}: {r.status}{at}")
            continue
        budget = r.param("budget")
        fid = r.metrics.get("fid")  # measured when the study enables eval.fid
        points.append(RunPoint(compute=budget, params=r.param("params"), loss=value,
                               tokens=r.param("tokens"), budget=budget, trial=r.trial_key,
                               status=r.status, fid=fid if fid is not None and fid > 0 else None))
    return points, excluded


class RunsTableWriter(Callback):
    """Writes the runs table again each time a trial finishes, so `dit-scaling fit` can run offline
    while the study is still going: OUTPUT/studies/NAME/runs.parquet on the driver's machine and a
    copy beside the Tune experiment in the study's storage (a local path or any pyarrow.fs URI,
    e.g. s3://). Rows already in the local file (trials finished before a restart) are kept.
    Diverged and failed trials are not fit points and are left out.
    """

    def __init__(self, spec: StudySpec, experiment_path: str):
        self.metric = spec.metric
        self.local = study_dir(spec) / RUNS_FILE
        self.remote = f"{experiment_path.rstrip('/')}/{RUNS_FILE}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        r, c = trial.last_result or {}, trial.config
        value = r.get(self.metric)
        if r.get("diverged") or value is None or not (value > 0):
            return
        budget, fid = float(c["budget"]), r.get("fid")
        point = RunPoint(compute=budget, params=float(c["params"]), loss=float(value),
                         tokens=float(r["tokens"]) if r.get("tokens") else None, budget=budget,
                         trial=c["trial_key"], status="finished",
                         fid=float(fid) if fid is not None and fid > 0 else None)
        rows = {p.trial: p for p in (read_runs(self.local, min_sizes=0)
                                     if self.local.exists() else [])}
        rows[point.trial] = point
        points = sorted(rows.values(), key=lambda p: (p.group, p.params))
        try:
            write_runs(points, self.local)
            _copy_to_storage(self.local, self.remote)
        except OSError as err:
            from search.trial import StorageFullError, storage_full

            if storage_full(err):
                raise StorageFullError(errno.ENOSPC, f"storage is full writing {RUNS_FILE}: "
                                                     f"{err}") from err
            raise


def _copy_to_storage(local: Path, uri: str) -> None:
    """Copy a local file to a path or pyarrow.fs URI (s3://, gs://, file://...)."""
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(local.read_bytes())


def law_metrics(fit: LawFit) -> dict[str, float]:
    """The laws as flat MLflow metrics: coefficient, exponent and their 95% bounds per law."""
    out: dict[str, float] = {}
    for name in ("n_opt", "d_opt", "loss", "fid"):
        law = fit.law(name)
        if law is None:
            continue
        out[f"{name}_coefficient"] = law.coefficient
        out[f"{name}_exponent"] = law.exponent
        if law.exponent_ci is not None:
            out[f"{name}_exponent_lo"], out[f"{name}_exponent_hi"] = law.exponent_ci
        if law.coefficient_ci is not None:
            out[f"{name}_coefficient_lo"], out[f"{name}_coefficient_hi"] = law.coefficient_ci
    return out


def study_dir(spec: StudySpec) -> Path:
    return spec.output_path / "studies" / spec.name


def fit_and_log(tracking: Tracking, spec: StudySpec, study_run_id: str,
                out: Callable[[str], None]) -> tuple[str, list[Path]]:
    """Fit the study's finished trials, log laws, table and figures to the study run."""
    experiment = tracking.experiment_id(spec.name)
    points, excluded = trial_points(tracking.trial_records(study_run_id, experiment), spec.metric)
    folder = study_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    table = write_runs(points, folder / RUNS_FILE) if points else None
    if table:
        tracking.log_artifacts(study_run_id, [table])
    if excluded:
        out("left out of the fit: " + "; ".join(excluded))
        tracking.set_tags(study_run_id, {"dit.excluded": "; ".join(excluded)[:5000]})
    try:
        fit = fit_laws(points, FitOptions(convention=spec.convention, seed=spec.seed))
    except (LawFitError, ValueError) as err:
        message = f"laws not fitted: {err}"
        tracking.set_tags(study_run_id, {"dit.laws_error": str(err)[:5000]})
        out(message)
        return message, []
    figures = [isoflop_figure(fit, folder / "isoflop.png"),
               power_law_figure(fit, folder / "power_laws.png")]
    laws_path = folder / LAWS_FILE
    laws_path.write_text(fit.to_json(indent=1))
    tracking.log_artifacts(study_run_id, [laws_path, *figures])
    tracking.log_metrics(study_run_id, law_metrics(fit))
    tracking.set_tags(study_run_id, {"dit.laws": "1"})
    text = fit.table()
    if excluded:
        text += "\nLeft out of the fit: " + "; ".join(excluded)
    return text, figures


def load_laws(tracking: Tracking, study: str) -> tuple[LawFit, object]:
    """The latest fitted laws of a study, from MLflow alone, and the study run they belong to."""
    run = tracking.latest_study_run(study, with_laws=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = tracking.download_text(run.info.run_id, LAWS_FILE, Path(tmp))
        except Exception as err:
            raise TrackingError(f"study {study!r}: run {run.info.run_id} has no readable "
                                f"{LAWS_FILE} in MLflow at {tracking.uri}: {err}") from err
    return LawFit.from_json(text), run
