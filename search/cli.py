"""`dit-scaling`: run isoFLOP studies and ask MLflow for the laws.

    dit-scaling run SPEC [--output-dir DIR]      run a study (embedded Ray, or RAY_ADDRESS)
    dit-scaling submit SPEC --address URL        run it on a Ray cluster as a Ray job
    dit-scaling jobs status|logs|stop ID --address URL
    dit-scaling resume --study NAME [--address URL]   continue a study whose driver stopped
    dit-scaling status --study NAME              trials done / running / failed, from MLflow
    dit-scaling laws --study NAME [--json]       the fitted laws, from MLflow
    dit-scaling predict (--study NAME | --law paper) --budget C [--json]
    dit-scaling fit RUNS [--json] [--log-to-mlflow --study NAME]
    dit-scaling compare A B [--json]             Table 1 style comparison of two studies or files

Every number printed states its unit; FLOPs count a multiply-add as 2 FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from search.spec import DEFAULT_OUTPUT, SpecError, load_spec


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded default's SQLite file under ./dit-scaling-runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{Path(DEFAULT_OUTPUT).resolve() / 'mlflow.db'}")


def _tracking(args):
    from search.tracking import Tracking

    return Tracking(args.tracking_uri)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=1) if args.json else text)


def cmd_run(args) -> int:
    from search.driver import run_study

    spec = load_spec(args.spec)
    if args.output_dir:
        spec = spec.model_copy(update={"output_dir": args.output_dir})
    if args.tracking_uri:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(
            update={"uri": args.tracking_uri})})
    return _report(run_study(spec), spec.name)


def cmd_resume(args) -> int:
    if args.address:
        from search.jobs import submit_resume

        sub = submit_resume(args.study, args.tracking_uri, args.address)
        _submitted(sub, resumed=True)
        return 0
    from search.driver import resume_study

    return _report(resume_study(args.study, args.tracking_uri), args.study)


def _report(outcome, name: str) -> int:
    print()
    print(outcome.laws_text)
    for f in outcome.figures:
        print(f"figure: {f}")
    print(f"study {name}: {outcome.finished} trials finished, {outcome.failed} failed, "
          f"{outcome.wall_seconds / 60:.1f} min; MLflow study run {outcome.study_run_id}")
    return 0 if outcome.figures else 1


def _address(args) -> str:
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address:
        raise SystemExit(f"{args.command}: give --address http://HEAD:8265 (or set "
                         "RAY_API_SERVER_ADDRESS)")
    return address


def _submitted(sub, resumed: bool = False) -> None:
    what = "resume of study" if resumed else "study"
    print(f"submitted {what} {sub.study} to {sub.address}")
    print(f"submission id: {sub.submission_id}")
    print(f"MLflow study (experiment): {sub.study} at {sub.tracking_uri}")
    print(f"follow: dit-scaling jobs logs {sub.submission_id} --address {sub.address}; "
          f"dit-scaling status --study {sub.study} --tracking-uri {sub.tracking_uri}")


def cmd_submit(args) -> int:
    from search.jobs import submit_study

    _submitted(submit_study(args.spec, _address(args), args.output_dir))
    return 0


def cmd_jobs(args) -> int:
    from search import jobs

    address = _address(args)
    if args.action == "status":
        print("\n".join(jobs.status_lines(jobs.job_info(address, args.id))))
    elif args.action == "logs":
        print(jobs.job_logs(address, args.id), end="")
    else:
        stopped = jobs.stop_job(address, args.id)
        print(f"job {args.id}: " + ("stop requested" if stopped else "had already ended"))
    return 0


def cmd_status(args) -> int:
    from search.tracking import STATUS

    tracking = _tracking(args)
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
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_laws(args) -> int:
    from search.results import load_laws

    fit, run = load_laws(_tracking(args), args.study)
    text = f"study {args.study} (study run {run.info.run_id})\n{fit.table()}"
    excluded = run.data.tags.get("dit.excluded")
    if excluded:
        text += f"\nLeft out of the fit: {excluded}"
    _emit(args, fit.to_dict(), text)
    return 0


def _law(args):
    from scaling.laws import paper_law
    from search.results import load_laws

    if args.law == "paper":
        return paper_law(), "the paper's published law"
    if not args.study:
        raise SystemExit("predict: give --study NAME or --law paper")
    fit, run = load_laws(_tracking(args), args.study)
    return fit, f"study {args.study} (study run {run.info.run_id})"


def cmd_predict(args) -> int:
    fit, source = _law(args)
    pred = fit.predict(args.budget)
    _emit(args, {"source": source, **pred.to_dict()}, f"{source}\n{pred.text()}")
    return 0


def cmd_fit(args) -> int:
    from scaling.laws import FitOptions, fit_laws
    from scaling.runs_table import read_runs

    points = read_runs(args.runs)
    fit = fit_laws(points, FitOptions(convention=args.convention, draws=args.draws,
                                      saturating=args.saturating, seed=args.seed))
    if args.log_to_mlflow:
        if not args.study:
            raise SystemExit("fit --log-to-mlflow needs --study NAME")
        _log_fit(args, fit)
    _emit(args, fit.to_dict(), fit.table())
    return 0


def _log_fit(args, fit) -> None:
    import tempfile

    from search.results import law_metrics
    from search.tracking import LAWS_FILE

    tracking = _tracking(args)
    run_id = tracking.start_study_run(args.study, {"source": str(Path(args.runs).resolve())})
    with tempfile.TemporaryDirectory() as tmp:
        laws = Path(tmp) / LAWS_FILE
        laws.write_text(fit.to_json(indent=1))
        tracking.log_artifacts(run_id, [laws, Path(args.runs)])
    tracking.log_metrics(run_id, law_metrics(fit))
    tracking.set_tags(run_id, {"dit.laws": "1"})
    tracking.set_status(run_id, "finished")
    print(f"logged to MLflow {tracking.uri}: study {args.study}, run {run_id}", file=sys.stderr)


def _fit_source(args, source: str):
    """A study name in MLflow, or a runs file (CSV/Parquet) fitted on the spot."""
    from scaling.laws import FitOptions, fit_laws
    from scaling.runs_table import read_runs
    from search.results import load_laws

    if Path(source).suffix.lower() in (".csv", ".parquet", ".pq") and Path(source).exists():
        return fit_laws(read_runs(source), FitOptions(seed=args.seed))
    return load_laws(_tracking(args), source)[0]


def cmd_compare(args) -> int:
    from scaling.laws import compare

    a, b = _fit_source(args, args.a), _fit_source(args, args.b)
    result = compare(a, b, (args.a, args.b))
    _emit(args, result.to_dict(), result.table(with_paper=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dit-scaling", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def query(name: str, help: str, study: bool = True) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help)
        if study:
            q.add_argument("--study", required=name != "predict", help="study (experiment) name")
        q.add_argument("--tracking-uri", default=default_tracking_uri(),
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                            f"./{DEFAULT_OUTPUT}/mlflow.db)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        return q

    r = sub.add_parser("run", help="run a study from its spec")
    r.add_argument("spec", help="study spec (TOML)")
    r.add_argument("--output-dir", help="override the spec's output_dir")
    r.add_argument("--tracking-uri", help="override the spec's [tracking] uri")
    r.set_defaults(func=cmd_run)

    address_help = "the Ray head node's dashboard URL, e.g. http://HEAD:8265"
    s = sub.add_parser("submit", help="run a study on a Ray cluster (Ray Jobs)")
    s.add_argument("spec", help="study spec (TOML)")
    s.add_argument("--address", help=address_help + " (default $RAY_API_SERVER_ADDRESS)")
    s.add_argument("--output-dir", help="override the spec's output_dir: an absolute path on "
                                        "storage every node shares")
    s.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="a submitted study's job: status, logs or stop")
    j.add_argument("action", choices=["status", "logs", "stop"])
    j.add_argument("id", help="submission id printed by submit")
    j.add_argument("--address", help=address_help)
    j.set_defaults(func=cmd_jobs)

    rs = query("resume", "continue a study whose driver died or stopped")
    rs.add_argument("--address", help=address_help + ": resume as a Ray job there")
    rs.set_defaults(func=cmd_resume)

    query("status", "trials done, running and failed").set_defaults(func=cmd_status)
    query("laws", "the fitted laws of a study").set_defaults(func=cmd_laws)
    pr = query("predict", "N_opt, D_opt, loss and FID at a budget")
    pr.add_argument("--budget", type=float, required=True, help="compute, FLOPs")
    pr.add_argument("--law", choices=["paper"], help="use the paper's published law")
    pr.set_defaults(func=cmd_predict)

    f = query("fit", "fit laws from a runs table (CSV or Parquet)", study=False)
    f.add_argument("runs", help="CSV or Parquet file: compute, params, loss[, tokens, fid, budget]")
    f.add_argument("--study", help="study name for --log-to-mlflow")
    f.add_argument("--log-to-mlflow", action="store_true", help="store the fit as a study run")
    f.add_argument("--convention", choices=["6ND", "exact"], default="6ND")
    f.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    f.add_argument("--saturating", action="store_true", help="also fit L = E + A C^-alpha")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_fit)

    c = query("compare", "compare two studies or runs files (the paper's Table 1)", study=False)
    c.add_argument("a", help="study name or runs file")
    c.add_argument("b", help="study name or runs file")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scaling.laws import LawFitError
    from scaling.runs_table import RunsTableError
    from search.tracking import TrackingError

    try:
        return args.func(args)
    except (SpecError, RunsTableError, LawFitError, TrackingError) as err:
        print(f"dit-scaling {args.command}: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from search.driver import ClusterError, StudyStopped
        from search.grid import GridError
        from search.jobs import JobError

        if isinstance(err, JobError | ClusterError | GridError):
            print(f"dit-scaling {args.command}: {err}", file=sys.stderr)
            return 2
        if isinstance(err, StudyStopped):
            print(f"dit-scaling {args.command}: {err}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
