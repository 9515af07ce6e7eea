"""The commands that run or plan compute: `run`, `resume`, `refine`, `validate`, `plan`,
`submit`, `jobs` and `data prepare` (each imports what it needs only when it runs)."""

from __future__ import annotations

import json
import os

from search.errors import UsageError
from search.spec import SpecError, load_spec


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
