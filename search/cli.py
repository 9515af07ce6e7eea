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
import sys

from search.cli_common import default_tracking_uri, positive_flops
from search.cli_queries import (
    _law_source,
    cmd_compare,
    cmd_fit,
    cmd_laws,
    cmd_predict,
    cmd_status,
)
from search.cli_study import (
    PrepareError,
    cmd_data_prepare,
    cmd_jobs,
    cmd_plan,
    cmd_refine,
    cmd_resume,
    cmd_run,
    cmd_submit,
    cmd_validate,
)
from search.errors import UsageError, stopped_errors, store_error_line, user_errors
from search.spec import DEFAULT_OUTPUT, SpecError, study_name


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
    v.add_argument("--budget", type=positive_flops, required=True,
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
    pr.add_argument("--budget", type=positive_flops, required=True, help="compute, FLOPs")
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
                   help="the loss's known relative seed-to-seed sd; used instead of estimating "
                        "it from the residuals (0: estimate)")
    f.add_argument("--seed-noise", type=float, default=0.005,
                   help="relative loss sd assumed only when the runs cannot estimate it (no "
                        "budget with more than 3 runs; Porian et al. 2024: 0.005); 0: such "
                        "intervals are not estimable")
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
