"""From trial runs in MLflow to fitted laws on the study run, and back.

The study run holds what `laws`, `predict` and `compare` need: `laws.json` (the fit with its
bootstrap draws), the law metrics, figures and `runs.parquet` (one row per trial, so `fit` can run
offline). A copy of the figures and the table is also written under OUTPUT/studies/NAME/.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from scaling.laws import LawFit, LawFitError, fit_laws
from scaling.runs_table import RunPoint, write_runs
from search.errors import TrackingError
from search.records import LAWS_FILE, LAWS_TAG, TrialRecord
from search.spec import StudySpec

if TYPE_CHECKING:
    from search.tracking import Tracking

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


def log_law(tracking: Tracking, study: str, run_id: str, fit: LawFit, laws_path: Path,
            artifacts: list[Path], trial_run_ids: list[str],
            dataset_hash: str | None = None) -> int:
    """The one writer of a fitted law in MLflow: `laws.json` and `artifacts` on the study run,
    the law metrics, and a new registered version of `dit-scaling-<study>`; its version."""
    from search.law_registry import provenance, register_law

    laws_path.write_text(fit.to_json(indent=1))
    tracking.log_artifacts(run_id, [laws_path, *artifacts])
    tracking.log_metrics(run_id, law_metrics(fit))
    version = register_law(tracking, study, run_id, laws_path,
                           provenance(fit, trial_run_ids, dataset_hash), trial_run_ids)
    tracking.set_tags(run_id, {LAWS_TAG: "1"})
    return version


def fit_and_log(tracking: Tracking, spec: StudySpec, study_run_id: str,
                records: list[TrialRecord], out: Callable[[str], None],
                dataset_hash: str | None = None) -> tuple[str, list[Path]]:
    """Fit the study's finished trials (`records`, its trial runs), log laws, table and figures
    to the study run, and register the law as a new model version."""
    from scaling.figures import isoflop_figure, power_law_figure  # matplotlib: only when fitting

    points, excluded = trial_points(records, spec.metric)
    folder = study_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    table = write_runs(points, folder / RUNS_FILE) if points else None
    if table:
        tracking.log_artifacts(study_run_id, [table])
    if excluded:
        out("left out of the fit: " + "; ".join(excluded))
        tracking.set_tags(study_run_id, {"dit.excluded": "; ".join(excluded)[:5000]})
    try:
        fit = fit_laws(points, spec.fit_options())
    except (LawFitError, ValueError) as err:
        message = f"laws not fitted: {err}"
        tracking.set_tags(study_run_id, {"dit.laws_error": str(err)[:5000]})
        out(message)
        return message, []
    figures = [isoflop_figure(fit, folder / "isoflop.png"),
               power_law_figure(fit, folder / "power_laws.png")]
    run_ids = {r.trial_key: r.run_id for r in records}
    version = log_law(tracking, spec.name, study_run_id, fit, folder / LAWS_FILE, figures,
                      [run_ids[p.trial] for p in points if p.trial in run_ids], dataset_hash)
    from search.law_registry import model_name

    out(f"law registered: model {model_name(spec.name)} version {version} "
        f"(from {len(points)} trials)")
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
