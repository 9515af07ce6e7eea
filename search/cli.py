"""`dit-scaling`: run isoFLOP studies and ask MLflow for the laws.

    dit-scaling run SPEC [--allocator fixed|adaptive] [--output-dir DIR]   run a study
    dit-scaling plan SPEC [--surface S] [--repeats 20]  simulate the study in-process first
    dit-scaling refine --study NAME [--budget C] [--tolerance 0.1]  tighten a finished study
    dit-scaling validate --study NAME --budget C [--sizes 3] [--dry-run]
                                                 train the law's optimum above the fitted budgets
    dit-scaling submit SPEC --address URL        run it on a Ray cluster as a Ray job
    dit-scaling jobs status|logs|stop ID --address URL
    dit-scaling resume --study NAME [--address URL]   continue a study whose driver stopped
    dit-scaling status --study NAME              trials done / running / failed, from MLflow
    dit-scaling laws --study NAME [--json]       the fitted laws, from MLflow
    dit-scaling predict (--study NAME | --law paper) --budget C [--json]
    dit-scaling fit RUNS [--json] [--log-to-mlflow --study NAME] [--seed-noise S]
    dit-scaling compare A B [--json]             Table 1 style comparison of two studies or files
    dit-scaling data prepare SRC DST [--address ADDR]   image-caption shards -> training shards

Every number printed states its unit; FLOPs count a multiply-add as 2 FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

from search.errors import UsageError, stopped_errors, store_error_line, user_errors
from search.spec import DEFAULT_OUTPUT, SpecError, load_spec, study_name
from search.validation_summary import LAST_VALIDATION_TAG, summary_text

RUNS_SUFFIXES = (".csv", ".parquet", ".pq")


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded default's SQLite file under ./dit-scaling-runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{Path(DEFAULT_OUTPUT).resolve() / 'mlflow.db'}")


def default_artifact_root(uri: str) -> str | None:
    """Beside a SQLite store, its `artifacts` folder (else MLflow writes to ./mlruns of whatever
    directory the command ran in); for a server, None: the server decides."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


def _tracking(args, write: bool = False):
    """The store of a query (read-only: it must exist, and a server gets short HTTP retries) or of
    `fit --log-to-mlflow` (`write`), checked before MLflow opens it."""
    from search.store import limit_http_retries, open_tracking

    if not write:
        limit_http_retries()
    root = getattr(args, "artifact_root", None) or default_artifact_root(args.tracking_uri)
    return open_tracking(args.tracking_uri, root, write=write)


def _positive_flops(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of FLOPs")
    return value


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=1) if args.json else text)


def _with_allocator(spec, kind: str | None):
    """The spec with its allocator kind overridden (validated again)."""
    from search.spec import parse_spec

    if not kind:
        return spec
    data = spec.model_dump(mode="json", exclude_none=True)
    data.setdefault("allocator", {})["kind"] = kind
    return parse_spec(data, f"{args_source(spec)} with --allocator {kind}")


def args_source(spec) -> str:
    return f"study {spec.name}"


def cmd_run(args) -> int:
    from search.preflight import check_dataset
    from search.store import check_store

    spec = _with_allocator(load_spec(args.spec), args.allocator)
    if args.output_dir:
        spec = spec.model_copy(update={"output_dir": args.output_dir})
    if args.tracking_uri:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(
            update={"uri": args.tracking_uri})})
    # Everything that can be checked here is, before Ray and torch load and anything is written.
    check_dataset(spec, args.spec)
    check_store(spec.tracking_uri, write=True)
    from search.driver import run_study

    return _report(run_study(spec), spec.name)


def cmd_resume(args) -> int:
    from search.store import check_store

    if args.address:
        from search.jobs import submit_resume

        sub = submit_resume(args.study, args.tracking_uri, args.address)
        _submitted(sub, resumed=True)
        return 0
    check_store(args.tracking_uri, write=True, create=False)
    from search.driver import resume_study

    return _report(resume_study(args.study, args.tracking_uri), args.study)


def _report(outcome, name: str) -> int:
    _outcome(name, outcome)
    return 0 if outcome.figures else 1


def _outcome(name: str, outcome) -> None:
    print()
    print(outcome.laws_text)
    for f in outcome.figures:
        print(f"figure: {f}")
    print(f"study {name}: {outcome.finished + outcome.reused} trials finished "
          f"({outcome.finished} new, {outcome.reused} reused), {outcome.failed} failed, "
          f"{outcome.wall_seconds / 60:.1f} min; MLflow study run {outcome.study_run_id}")


def cmd_refine(args) -> int:
    from search.store import check_store

    check_store(args.tracking_uri, write=True, create=False)
    from search.driver import refine_study

    outcome = refine_study(args.study, args.tracking_uri, args.budget, args.tolerance)
    _outcome(args.study, outcome)
    return 0 if outcome.figures else 1


def cmd_validate(args) -> int:
    from search.store import check_store

    check_store(args.tracking_uri, write=not args.dry_run, create=False)
    from search.validate import validate_study

    summary = validate_study(args.study, args.tracking_uri, args.budget, args.sizes,
                             args.dry_run)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0


def cmd_plan(args) -> int:
    import warnings

    from search.allocator import resolve_prior
    from search.plan import plan_study, simulated_template
    from search.results import load_laws

    spec = load_spec(args.spec)
    if args.repeats < 1 or args.concurrency < 1 or args.gpus < 0:
        raise SpecError("plan: --repeats and --concurrency must be at least 1, --gpus at least 0")
    if args.gpus and not spec.resources.gpus_per_trial:
        raise SpecError(f"plan --gpus {args.gpus}: {args.spec} has no resources.gpus_per_trial "
                        "rule (GPUs by model size) to schedule the trials with")
    tracking = None

    def study_law(name: str):
        nonlocal tracking
        from search.store import open_tracking

        tracking = tracking or open_tracking(args.tracking_uri or spec.tracking_uri)
        return load_laws(tracking, name)[0].n_opt

    prior = resolve_prior(spec, study_law)
    surface = args.surface or spec.trainer.surface
    print(f"plan: simulating study {spec.name} {args.repeats} times per strategy on the {surface} "
          f"surface; prior N_opt = {prior.coefficient:.3g} C^{prior.exponent:.4g} "
          f"({prior.source})", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN bootstrap draws are dropped
        try:
            report = plan_study(spec, simulated_template(spec), prior, surface, args.repeats,
                                args.concurrency, progress=lambda line: print(line, flush=True),
                                gpus=args.gpus)
        except ValueError as err:
            raise SpecError(f"plan --gpus {args.gpus}: {err}") from None
    print()
    if args.json:
        print(json.dumps({"surface": surface, "truth": report.truth,
                          **{s: report.summary(s) for s in report.runs}}, indent=1))
    else:
        print(report.text())
    return 0


def _address(args) -> str:
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address:
        raise UsageError("give --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    return address


def _submitted(sub, resumed: bool = False) -> None:
    what = "resume of study" if resumed else "study"
    print(f"submitted {what} {sub.study} to {sub.address}")
    print(f"submission id: {sub.submission_id}")
    print(f"MLflow study (experiment): {sub.study} at {sub.tracking_uri}")
    print(f"follow: dit-scaling jobs logs {sub.submission_id} --address {sub.address}; "
          f"dit-scaling status --study {sub.study} --tracking-uri {sub.tracking_uri}")


def cmd_submit(args) -> int:
    address = _address(args)
    from search.jobs import submit_study

    _submitted(submit_study(args.spec, address, args.output_dir))
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
    tracking = _tracking(args)
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
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_laws(args) -> int:
    if args.versions:
        return _law_versions(args)
    tracking = _tracking(args)
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
    _emit(args, data, text)
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

    _emit(args, {"model": model_name(args.study), "versions": [v.__dict__ for v in versions]},
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
    tracking = _tracking(args)
    from search.results import load_laws

    fit, run = load_laws(tracking, args.study)
    return fit, f"study {args.study} (study run {run.info.run_id})"


def cmd_predict(args) -> int:
    fit, source = _law(args)
    pred = fit.predict(args.budget)
    _emit(args, {"source": source, **pred.to_dict()}, f"{source}\n{pred.text()}")
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
    _emit(args, fit.to_dict(), fit.table())
    return 0


def _fit_store(args):
    """The store `fit --log-to-mlflow` writes to, refusing a name a real study already holds: the
    fit's study run would become the study's latest and hide its trials."""
    tracking = _tracking(args, write=True)
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

        # The comparison reads Approach 2's exponents only: Approach 3 would cost time for nothing.
        return fit_laws(read_runs(path), FitOptions(seed=args.seed, draws=args.draws,
                                                    approach3=False))
    name = study_name(source)
    tracking = _tracking(args)
    from search.results import load_laws

    return load_laws(tracking, name)[0]


def cmd_compare(args) -> int:
    from scaling.laws import compare

    a, b = _fit_source(args, args.a), _fit_source(args, args.b)
    result = compare(a, b, (args.a, args.b))
    _emit(args, result.to_dict(), result.table(with_paper=True))
    return 0


def cmd_data_prepare(args) -> int:
    from scaling.prepare import PrepareConfig, prepare_dataset, source_urls

    try:
        cfg = PrepareConfig(image_size=args.image_size, text_encoder=args.text_encoder,
                            text_len=args.text_len, autoencoder=args.autoencoder,
                            val_fraction=args.val_fraction,
                            samples_per_shard=args.samples_per_shard, batch_size=args.batch_size)
        source = source_urls(args.src)
        ood = source_urls(args.ood) if args.ood else None
        if args.address:
            from search.prepare import prepare_on_ray

            info = prepare_on_ray(source, args.dst, cfg, ood, address=args.address,
                                  workers=args.workers, gpus_per_worker=args.gpus_per_worker)
        else:
            info = prepare_dataset(source, args.dst, cfg, ood)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise PrepareError(str(err)) from err
    counts = ", ".join(f"{k} {info.samples(k)} samples in {len(v)} shards"
                       for k, v in info.splits.items())
    skipped = info.params.get("skipped") or {}
    print(f"dataset {info.root}: {counts}; {info.image_key} {info.channels} x {info.image_size}"
          f" x {info.image_size}; text {info.text_encoder} ({info.text_len} tokens x "
          f"{info.text_dim}); skipped: "
          + (", ".join(f"{n} {r}" for r, n in skipped.items()) or "none")
          + f"; {info.content_hash}")
    return 0


class PrepareError(ValueError):
    """Bad arguments or input for `data prepare`."""


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
    r.add_argument("--allocator", choices=["fixed", "adaptive"],
                   help="override the spec's allocator.kind (fixed: the plain grid)")
    r.add_argument("--output-dir", help="override the spec's output_dir")
    r.add_argument("--tracking-uri", help="override the spec's [tracking] uri")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="simulate a study in-process before spending any GPU")
    pl.add_argument("spec", help="study spec (TOML)")
    pl.add_argument("--surface", choices=["paper", "chinchilla", "asymmetric"],
                    help="loss surface to simulate (default: the spec's trainer.surface)")
    pl.add_argument("--repeats", type=int, default=20, help="simulated studies per strategy")
    pl.add_argument("--concurrency", type=int, default=1, help="trials running at once")
    pl.add_argument("--gpus", type=int, default=0,
                    help="schedule on this many GPUs by resources.gpus_per_trial and report the "
                         "makespan and GPU occupancy")
    pl.add_argument("--tracking-uri", default=None, help="MLflow, for prior = 'study:NAME'")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_plan)

    rf = query("refine", "add trials to a finished study to tighten chosen optima")
    rf.add_argument("--budget", type=float, action="append",
                    help="a budget of the study to refine, FLOPs (repeatable; default all)")
    rf.add_argument("--tolerance", type=float,
                    help="relative half-width of the N_opt 95%% interval to reach (0.1 = ±10%%)")
    rf.set_defaults(func=cmd_refine)

    v = query("validate", "train the law's compute-optimal model at a budget above the fitted "
                          "ones and compare its loss with the prediction")
    v.add_argument("--budget", type=_positive_flops, required=True,
                   help="FLOPs, above the study's largest budget (3-10x is a fair test)")
    v.add_argument("--sizes", type=int, choices=[1, 3], default=1,
                   help="3: also train x0.5 and x2 the predicted N_opt, to locate the optimum")
    v.add_argument("--dry-run", action="store_true", help="print what it would train, and stop")
    v.set_defaults(func=cmd_validate)

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
    lw = query("laws", "the fitted laws of a study")
    lw.add_argument("--versions", action="store_true",
                    help="list the registered versions of the study's law (dit-scaling-NAME)")
    lw.set_defaults(func=cmd_laws)
    pr = query("predict", "N_opt, D_opt, loss and FID at a budget")
    pr.add_argument("--budget", type=_positive_flops, required=True, help="compute, FLOPs")
    pr.add_argument("--law", type=_law_source,
                    help="'paper' (the published law), or a registered version: "
                         "models:/dit-scaling-NAME/3 or models:/dit-scaling-NAME@ALIAS")
    pr.set_defaults(func=cmd_predict)

    f = query("fit", "fit laws from a runs table (CSV or Parquet)", study=False)
    f.add_argument("runs", help="CSV or Parquet file: compute, params, loss[, tokens, fid, budget]")
    f.add_argument("--study", help="study name for --log-to-mlflow")
    f.add_argument("--log-to-mlflow", action="store_true", help="store the fit as a study run")
    f.add_argument("--artifact-root", help="where --log-to-mlflow stores laws.json (default: "
                   "beside a SQLite store, its artifacts folder; a server's own)")
    f.add_argument("--convention", choices=["6ND", "exact"], default="6ND")
    f.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    f.add_argument("--saturating", action="store_true", help="also fit L = E + A C^-alpha")
    f.add_argument("--noise-sigma", type=float, default=0.0,
                   help="relative loss noise added to every run in each bootstrap draw")
    f.add_argument("--seed-noise", type=float, default=0.005,
                   help="seed-to-seed relative loss noise assumed for budgets with fewer than 5 "
                        "sizes (Porian et al. 2024: 0.005); 0: none, their intervals are then "
                        "reported as not estimable")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_fit)

    c = query("compare", "compare two studies or runs files (the paper's Table 1)", study=False)
    c.add_argument("a", help="study name or runs file")
    c.add_argument("b", help="study name or runs file")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed for runs files")
    c.add_argument("--draws", type=int, default=1000, help="bootstrap draws for runs files")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dp = dsub.add_parser("prepare", help="image-caption webdataset shards -> training shards "
                         "(image latents or pixels, text features, dataset.json)")
    dp.add_argument("src", help="source shards: a directory, a .tar, a glob or a brace pattern")
    dp.add_argument("dst", help="new dataset directory")
    dp.add_argument("--ood", help="out-of-distribution shards (e.g. COCO), prepared as split ood")
    dp.add_argument("--image-size", type=int, default=32, help="pixels after centre crop")
    dp.add_argument("--autoencoder", help="diffusers AutoencoderKL directory or hub name "
                    "(latents); default: store pixels")
    dp.add_argument("--text-encoder", default="all-MiniLM-L6-v2",
                    help="transformers encoder directory or hub name")
    dp.add_argument("--text-len", type=int, default=32, help="text tokens per caption")
    dp.add_argument("--val-fraction", type=float, default=0.05,
                    help="share of samples held out as val (by key hash)")
    dp.add_argument("--samples-per-shard", type=int, default=2048)
    dp.add_argument("--batch-size", type=int, default=64, help="samples encoded together")
    dp.add_argument("--address", help="Ray cluster address: run through Ray Data there")
    dp.add_argument("--workers", type=int, default=1, help="encoder actors (with --address)")
    dp.add_argument("--gpus-per-worker", type=float, default=0.0,
                    help="GPUs per encoder actor (with --address)")
    dp.set_defaults(func=cmd_data_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "study", None):
            try:
                study_name(args.study)
            except SpecError as err:
                raise UsageError(f"--study {err}") from None
        return args.func(args)
    except Exception as err:
        line = _error_line(err)
        if line is None:
            raise
        from search.credentials import redact

        print(redact(f"dit-scaling {args.command}: {line}"), file=sys.stderr)
        return 3 if isinstance(err, stopped_errors()) else 2


def _error_line(err: Exception) -> str | None:
    """The one line a command prints for `err` (bad input, an unusable store, a study that
    stopped); None for a defect of the service itself, which keeps its traceback."""
    if isinstance(err, (*user_errors(), *stopped_errors(), PrepareError)):
        lines = [part.strip() for part in str(err).splitlines() if part.strip()]
        if not lines:
            return type(err).__name__
        head = lines[0] if lines[0].endswith(":") or len(lines) == 1 else lines[0] + ":"
        return " ".join([head, "; ".join(lines[1:])]).strip()
    store = store_error_line(err)
    if store is not None:
        return store
    return None


if __name__ == "__main__":
    sys.exit(main())
