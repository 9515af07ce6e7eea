"""The commands that answer from MLflow (or a runs file) without Ray or torch: `status`,
`laws`, `predict`, `fit` and `compare`."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from search.cli_common import RUNS_SUFFIXES, emit, query_store
from search.errors import UsageError
from search.spec import study_name
from search.validation_summary import LAST_VALIDATION_TAG, summary_text


def cmd_status(args) -> int:
    tracking = query_store(args)
    from search.records import STATUS

    run = tracking.latest_study_run(args.study)
    records = tracking.trial_records(run.info.run_id, run.info.experiment_id)
    counts = Counter(r.status for r in records)
    planned = run.data.params.get("dit.planned_trials") or run.data.tags.get("dit.planned_trials")
    data = {"study": args.study, "study_run": run.info.run_id,
            "status": run.data.tags.get(STATUS, run.info.status.lower()),
            "trials": dict(counts), "planned": int(planned) if planned else None,
            "laws": run.data.tags.get("dit.laws") == "1"}
    lines = [f"study {args.study}: {data['status']} (study run {run.info.run_id})"]
    lines.append("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                 + (f" of {planned} planned" if planned else ""))
    for r in sorted(records, key=lambda r: r.trial_key):
        if r.status != "finished":
            step = r.metrics.get("step")
            lines.append(f"  {r.trial_key}: {r.status}" + (f" at step {int(step)}" if step else ""))
    lines.append("laws: fitted" if data["laws"] else "laws: not yet fitted")
    emit(args, data, "\n".join(lines))
    return 0


def cmd_laws(args) -> int:
    if args.versions:
        return _law_versions(args)
    tracking = query_store(args)
    from search.results import load_laws

    fit, run = load_laws(tracking, args.study)
    version = run.data.tags.get("dit.law_version")
    shown = (f", law version {version} of model dit-scaling-{args.study} from "
             f"{run.data.tags.get('dit.law_trials', '?')} trials" if version else "")
    text = f"study {args.study} (study run {run.info.run_id}{shown})\n{fit.table()}"
    excluded = run.data.tags.get("dit.excluded")
    if excluded:
        text += f"\nLeft out of the fit: {excluded}"
    data = fit.to_dict()
    last = run.data.tags.get(LAST_VALIDATION_TAG)
    if last:
        data["last_validation"] = json.loads(last)
        text += "\nlast " + summary_text(data["last_validation"])
    emit(args, data, text)
    return 0


def _law_source(text: str) -> str:
    if text == "paper" or text.startswith("models:/"):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: give 'paper' or models:/NAME/VERSION "
                                     "(or models:/NAME@ALIAS)")


def _registry(args):
    """The store as MLflow itself (the model registry), checked first."""
    from search.store import check_store, limit_http_retries

    limit_http_retries()
    check_store(args.tracking_uri, write=False)
    from search.tracking import Tracking

    return Tracking(args.tracking_uri)


def _law_versions(args) -> int:
    import time

    from search.law_registry import law_versions, model_name

    versions = law_versions(_registry(args), args.study)
    rows = [("version", "registered (UTC)", "trials", "aliases", "study run", "git commit")]
    for v in versions:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.created_ms / 1000))
        rows.append((str(v.version), when, v.tags.get("trials", "?"),
                     ",".join(v.aliases) or "-", v.run_id, v.tags.get("git_commit", "-")[:12]))
    from scaling.laws.result import text_columns

    emit(args, {"model": model_name(args.study), "versions": [v.__dict__ for v in versions]},
          f"model {model_name(args.study)}: {len(versions)} versions (newest first)\n"
          + text_columns(rows))
    return 0


def _law(args):
    if args.law == "paper":
        from scaling.laws import paper_law

        return paper_law(), "the paper's published law"
    if args.law:
        from search.law_registry import law_from_model

        return law_from_model(_registry(args), args.law)
    if not args.study:
        raise UsageError("give --study NAME or --law paper")
    tracking = query_store(args)
    from search.results import load_laws

    fit, run = load_laws(tracking, args.study)
    return fit, f"study {args.study} (study run {run.info.run_id})"


def cmd_predict(args) -> int:
    fit, source = _law(args)
    pred = fit.predict(args.budget)
    emit(args, {"source": source, **pred.to_dict()}, f"{source}\n{pred.text()}")
    return 0


def cmd_fit(args) -> int:
    if args.log_to_mlflow and not args.study:
        raise UsageError("--log-to-mlflow needs --study NAME")
    tracking = _fit_store(args) if args.log_to_mlflow else None  # refused before fitting
    from scaling.laws import FitOptions, fit_laws
    from scaling.runs_table import read_runs

    points = read_runs(args.runs)
    try:
        options = FitOptions(convention=args.convention, draws=args.draws,
                             saturating=args.saturating, seed=args.seed,
                             noise_sigma=args.noise_sigma, seed_noise=args.seed_noise)
    except ValueError as err:
        raise UsageError(str(err)) from err
    fit = fit_laws(points, options)
    if tracking is not None:
        _log_fit(args, tracking, fit, points)
    emit(args, fit.to_dict(), fit.table())
    return 0


def _fit_store(args):
    """The store `fit --log-to-mlflow` writes to, refusing a name a real study already holds: the
    fit's study run would become the study's latest and hide its trials."""
    tracking = query_store(args, write=True)
    if tracking.trial_count(args.study):
        raise UsageError(f"--study {args.study}: a study with trial runs already has this name in "
                         f"MLflow at {tracking.uri}; log the fit under another name")
    return tracking


def _log_fit(args, tracking, fit, points) -> None:
    import tempfile

    from search.records import LAWS_FILE
    from search.results import log_law

    run_id = tracking.start_study_run(args.study, {"source": str(Path(args.runs).resolve())})
    with tempfile.TemporaryDirectory() as tmp:
        # the runs file holds no MLflow trial runs: the version names its rows instead
        version = log_law(tracking, args.study, run_id, fit, Path(tmp) / LAWS_FILE,
                          [Path(args.runs)], [p.trial or f"row{i}" for i, p in enumerate(points)])
    tracking.set_status(run_id, "finished")
    print(f"logged to MLflow {tracking.uri}: study {args.study}, run {run_id}, law version "
          f"{version}", file=sys.stderr)


def _fit_source(args, source: str):
    """A study name in MLflow, or a runs file (CSV/Parquet) fitted on the spot."""
    path = Path(source)
    if path.suffix.lower() in RUNS_SUFFIXES or path.exists():
        from scaling.laws import FitOptions, fit_laws
        from scaling.runs_table import read_runs

        # Fitted as the service fits a study (Approach 3 included): Approach 2's intervals
        # draw on the surface, so a file and a study compare alike.
        return fit_laws(read_runs(path), FitOptions(seed=args.seed, draws=args.draws))
    name = study_name(source)
    tracking = query_store(args)
    from search.results import load_laws

    return load_laws(tracking, name)[0]


def cmd_compare(args) -> int:
    from scaling.laws import compare

    a, b = _fit_source(args, args.a), _fit_source(args, args.b)
    result = compare(a, b, (args.a, args.b))
    emit(args, result.to_dict(), result.table(with_paper=True))
    return 0
