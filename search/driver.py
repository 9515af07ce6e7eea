"""The study driver: spec -> data -> grid -> Ray Tune trials -> MLflow -> fitted laws.

It runs wherever `dit-scaling run` runs: on this machine with an embedded `ray.init()` and a SQLite
MLflow store, or on a cluster's head node when submitted as a Ray job.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher

from scaling.builtin_data import DatasetInfo, write_builtin_dataset
from scaling.hparams import LRRule, SweepPoint, best_lrs
from scaling.model import DiTConfig, ModelShape
from scaling.text import DEFAULT_TEXT_ENCODER
from search.grid import GridSearcher, TrialSpec, fixed_grid
from search.lr_sweep import LRSweepSearcher, rule_params, spec_rule, sweep_configs
from search.progress import StudyProgress
from search.results import fit_and_log
from search.spec import SpecError, StudySpec, spec_to_toml_dict
from search.tracking import Tracking
from search.trial import StudyContext, eval_config, run_trial

# Ray Train reports at most every 2 s by default; tiny trials report far more often than that.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
# Tune's own tables and banners would bury the one line per trial that StudyProgress prints.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
TRIAL_SLOT = "trial_slot"


class ClusterError(RuntimeError):
    """The cluster cannot run the study's trials as specified."""


@dataclass(frozen=True)
class StudyOutcome:
    study_run_id: str
    finished: int
    failed: int
    laws_text: str
    figures: list[Path]
    startup_seconds: list[float]
    wall_seconds: float


def prepare_data(spec: StudySpec, out: Callable[[str], None]) -> DatasetInfo:
    """The study's dataset: the built-in one written once under OUTPUT/data, or a prepared one
    (checked against the encoders the spec names)."""
    d = spec.data
    if d.source == "builtin":
        return write_builtin_dataset(spec.data_path, image_size=d.image_size,
                                     train_samples=d.train_samples, val_samples=d.val_samples,
                                     ood_samples=d.ood_samples,
                                     samples_per_shard=d.samples_per_shard, seed=spec.seed,
                                     encoder=d.text_encoder or DEFAULT_TEXT_ENCODER)
    info = DatasetInfo.load(spec.data_path)
    problems = []
    if d.text_encoder and d.text_encoder != info.text_encoder:
        problems.append(f"data.text_encoder: {d.text_encoder!r}, but {info.root}/dataset.json "
                        f"was encoded with {info.text_encoder!r}")
    autoencoder = info.params.get("autoencoder") if info.image_key == "latent.npy" else None
    if d.autoencoder and d.autoencoder != autoencoder:
        problems.append(f"data.autoencoder: {d.autoencoder!r}, but {info.root}/dataset.json "
                        f"holds {'latents of ' + repr(autoencoder) if autoencoder else 'pixels'}")
    if problems:
        raise SpecError("the prepared dataset does not match the spec:\n  "
                        + "\n  ".join(problems))
    return info


def fid_reference(spec: StudySpec, ctx: StudyContext, out: Callable[[str], None]) -> None:
    """Compute (or find cached) the FID reference statistics once, before the trials need them."""
    from scaling.fid import load_extractor, reference_stats

    cfg = eval_config(ctx)
    if cfg is None or cfg.fid is None:
        return
    f = cfg.fid
    reference_stats(list(f.reference_urls), f.reference_samples,
                    load_extractor(f.extractor, f.extractor_path), cache_dir=f.cache_dir,
                    dataset=f.dataset, batch_size=f.batch_size, log=out)


def model_template(spec: StudySpec, info: DatasetInfo) -> DiTConfig:
    """The model family for this study and dataset; each trial replaces the shape."""
    return DiTConfig(shape=ModelShape(1, 16, 1), conditioning=spec.model.conditioning,
                     image_size=info.image_size, in_channels=info.channels,
                     patch_size=spec.model.patch_size, text_dim=info.text_dim,
                     text_len=info.text_len, mlp_ratio=spec.model.mlp_ratio)


def connect_ray(spec: StudySpec) -> None:
    """Join the cluster named by RAY_ADDRESS (a submitted job), else start one on this machine."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": dict(RAY_ENV)}
    kwargs = dict(runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=True)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return
    # A single machine is never preempted: skip the watcher actor each trial would start.
    runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    cpus = os.cpu_count() or 1
    per_trial = spec.resources.workers * spec.resources.cpus_per_worker
    slots = max(1, math.floor(cpus / per_trial))
    ray.init(num_cpus=cpus, resources={TRIAL_SLOT: slots}, include_dashboard=False,
             # Each trial starts ~4 processes (trial, controller, workers); let them start together.
             _system_config={"worker_maximum_startup_concurrency": 2 * cpus}, **kwargs)


def trial_concurrency(spec: StudySpec, resources: dict[str, float]) -> tuple[int, dict]:
    """How many trials fit at once, and what each trial's own (driver-side) actor reserves.

    A Train worker group that cannot get its resources waits 60 s and is then killed, so trials run
    only as many at a time as their worker groups fit.
    """
    r = spec.resources
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ClusterError(f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
                           f"({r.workers} workers); the cluster has {have_cpu:g} CPUs and "
                           f"{have_gpu:g} GPUs: lower resources.workers or *_per_worker")
    if TRIAL_SLOT in resources:
        trial_resources = {"CPU": 0, TRIAL_SLOT: 1}
        k = min(math.floor(have_cpu / need_cpu), int(resources[TRIAL_SLOT]))
    else:  # a cluster without slots: the trial actor takes a sliver of a CPU
        trial_resources = {"CPU": 0.01}
        k = math.floor(have_cpu / (need_cpu + 0.01))
    if need_gpu:
        k = min(k, math.floor(have_gpu / need_gpu))
    if r.max_concurrent_trials:
        k = min(k, r.max_concurrent_trials)
    return max(1, k), trial_resources


def run_study(spec: StudySpec, out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Run every trial of the study on Ray, track it in MLflow and fit the laws."""
    out = out or (lambda line: print(line, file=sys.stdout, flush=True))
    t0 = time.monotonic()
    info = prepare_data(spec, out)
    template = model_template(spec, info)
    trials = fixed_grid(spec, template)

    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    study_run_id = tracking.start_study_run(spec.name, _flat_params(spec_to_toml_dict(spec)))
    connect_ray(spec)
    k, trial_resources = trial_concurrency(spec, ray.cluster_resources())
    out(f"study {spec.name}: {len(trials)} trials over {len(spec.budgets)} budgets "
        f"(C = {spec.convention}, a multiply-add = 2 FLOPs), {k} at a time")
    out(f"MLflow: {spec.tracking_uri}  experiment {spec.name!r}  study run {study_run_id}")

    ctx = StudyContext(study=spec.name, study_run_id=study_run_id, tracking_uri=spec.tracking_uri,
                       storage_path=spec.storage_path, spec=spec.model_dump(mode="json"),
                       template=template, train_urls=tuple(info.urls("train")),
                       val_urls=tuple(info.urls("val")),
                       ood_urls=tuple(info.urls("ood")) if info.splits.get("ood") else (),
                       dataset_root=str(info.root), dataset_hash=info.content_hash,
                       autoencoder=info.params.get("autoencoder")
                       if info.image_key == "latent.npy" else None,
                       latent_scale=float(info.params.get("latent_scale", 1.0)))
    fid_reference(spec, ctx, out)
    searcher, sweep = study_searcher(spec, template, trials, tracking, study_run_id, out)
    progress = StudyProgress(len(trials) + len(sweep), spec.metric, out)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                    max_concurrent_trials=k),
        run_config=tune.RunConfig(name=f"{spec.name}-{study_run_id[:8]}",
                                  storage_path=spec.storage_path, verbose=0,
                                  callbacks=[progress],
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    tuner.fit()
    out(progress.startup_summary())

    laws_text, figures = fit_and_log(tracking, spec, study_run_id, out)
    startup = progress.startup_seconds()
    if startup:
        median = sorted(startup)[len(startup) // 2]
        tracking.log_metrics(study_run_id, {"trial_startup_s_median": median})
    tracking.set_status(study_run_id, "finished")
    return StudyOutcome(study_run_id, progress.done, progress.failed, laws_text, figures, startup,
                        time.monotonic() - t0)


def study_searcher(spec: StudySpec, template: DiTConfig, trials: list[TrialSpec],
                   tracking: Tracking, study_run_id: str,
                   out: Callable[[str], None]) -> tuple[Searcher, list[dict]]:
    """The study's Tune searcher: the grid, behind an LR sweep when the spec asks for one."""
    rule = spec_rule(spec)
    grid = GridSearcher(trials)
    sweep = sweep_configs(spec, template, trials)
    if not sweep:
        tracking.log_params(study_run_id, rule_params(rule))
        return grid, []
    widths = sorted({c["width"] for c in sweep})
    factors = len(set(spec.trainer.lr_sweep.factors))
    out(f"LR sweep first: {len(sweep)} trials, widths {widths} x {factors} LR multiples at "
        f"{sweep[0]['budget']:g} FLOPs")

    def log_rule(fitted: LRRule, points: list[SweepPoint], error: str | None) -> None:
        best = best_lrs(points)
        out(error or (f"LR rule fitted on {len(best)} widths: lr(w) = {fitted.base_lr:.3g} x "
                      f"({fitted.ref_width} / w)^{fitted.lr_exponent:.3f}"))
        tracking.log_params(study_run_id, rule_params(fitted))
        tracking.log_metrics(study_run_id, {f"lr_sweep.best_lr.w{w}": lr for w, lr in best.items()})
        if error:
            tracking.set_tags(study_run_id, {"dit.lr_sweep_error": error})

    return LRSweepSearcher(sweep, grid, rule, spec.metric, on_rule=log_rule), sweep


def _flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
