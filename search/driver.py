"""The study driver: spec -> data -> grid -> Ray Tune trials -> MLflow -> fitted laws.

It runs wherever `dit-scaling run` runs: on this machine with an embedded `ray.init()` and a SQLite
MLflow store, or on a cluster's head node when submitted as a Ray job.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import cloudpickle, tune
from ray.tune import Callback
from ray.tune.search import Searcher

from scaling.builtin_data import DatasetInfo, write_builtin_dataset
from scaling.hparams import LRRule, SweepPoint, best_lrs
from scaling.model import DiTConfig, ModelShape
from scaling.text import DEFAULT_TEXT_ENCODER
from search.grid import GridSearcher, TrialSpec, fixed_grid
from search.lr_sweep import LRSweepSearcher, rule_params, spec_rule, sweep_configs
from search.progress import StudyProgress
from search.results import RunsTableWriter, fit_and_log
from search.spec import SpecError, StudySpec, spec_to_toml_dict
from search.tracking import STATUS, Tracking, TrackingError
from search.trial import StorageFullError, StudyContext, eval_config, run_trial, storage_full

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
    if spec.data.path and "://" in spec.data.path:
        info = load_remote_dataset(spec.data.path)
    else:
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


def load_remote_dataset(uri: str) -> DatasetInfo:
    """A dataset under a pyarrow.fs URI (s3://, gs://, file://...): its `dataset.json` is read
    through pyarrow.fs and every shard becomes an absolute URL, which the trial workers read
    through the pyarrow schemes registered in webdataset (`register_pyarrow_schemes`)."""
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    try:
        with filesystem.open_input_stream(f"{path.rstrip('/')}/dataset.json") as f:
            data = json.loads(f.read())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{uri.rstrip('/')}/dataset.json: cannot be read ({err})") from None
    for split in data.get("splits", {}).values():
        for shard in split.get("shards", []):
            if "://" not in shard["name"]:
                shard["name"] = f"{uri.rstrip('/')}/{shard['name']}"
    local = Path(tempfile.mkdtemp(prefix="dit-dataset-"))
    (local / "dataset.json").write_text(json.dumps(data))
    return DatasetInfo.load(local)


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


SPEC_TAG = "dit.spec"  # the resolved spec as JSON: what `resume` needs to continue the study
EXPERIMENT_TAG = "dit.tune_experiment"  # the Tune experiment path (local path or URI)


class StudyStopped(RuntimeError):
    """The study stopped before every trial ran (e.g. storage full); it can be resumed."""


class StorageGuard(Callback):
    """Stops the whole study at the first trial that failed because the storage is full.

    Retrying would only fail again and later trials would fill nothing but error files. Raising
    from the callback ends `Tuner.fit` the way a crash would, so the experiment state keeps the
    unfinished trials as unfinished and `dit-scaling resume` continues them from their last
    checkpoints once space is freed.
    """

    def __init__(self, storage: str, study: str):
        self.storage, self.study = storage, study

    def _check(self, trial) -> None:
        text = ""
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file, errors="replace") as f:
                text = f.read()
        if "No space left on device" in text or "StorageFullError" in text:
            raise StorageFullError(errno.ENOSPC, f"storage {self.storage} is full (No space left "
                                   f"on device): free space there, then continue the study with "
                                   f"`dit-scaling resume --study {self.study}`")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check(trial)


def resolved_spec(spec: StudySpec) -> StudySpec:
    """The spec with every location made absolute, so the study can be resumed from anywhere."""
    data = spec.model_dump(mode="json")
    data["output_dir"] = str(spec.output_path)
    data["tracking"] = {"uri": spec.tracking_uri, "artifact_root": spec.artifact_root}
    data["storage"] = {"path": spec.storage_path}
    if spec.data.path and "://" not in spec.data.path:
        data["data"]["path"] = str(spec.data_path)
    return StudySpec.model_validate(data)


def experiment_path(spec: StudySpec, study_run_id: str) -> str:
    return f"{spec.storage_path.rstrip('/')}/{spec.name}-{study_run_id[:8]}"


@dataclass
class _Study:
    """What a fresh run and a resumed one share once the study run exists."""

    spec: StudySpec
    tracking: Tracking
    study_run_id: str
    info: DatasetInfo
    template: DiTConfig
    planned: int | None


def run_study(spec: StudySpec, out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Run every trial of the study on Ray, track it in MLflow and fit the laws.

    The tracking store is checked before any compute, so wrong credentials or an unreachable
    server fail in seconds with one line.
    """
    out = out or _print
    t0 = time.monotonic()
    spec = resolved_spec(spec)
    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    tracking.check_access()
    info = prepare_data(spec, out)
    template = model_template(spec, info)
    trials = fixed_grid(spec, template)

    study_run_id = tracking.start_study_run(spec.name, _flat_params(spec_to_toml_dict(spec)))
    path = experiment_path(spec, study_run_id)
    tracking.set_tags(study_run_id, {SPEC_TAG: spec.model_dump_json(exclude_none=True),
                                     EXPERIMENT_TAG: path, "dit.planned_trials": len(trials)})
    study = _Study(spec, tracking, study_run_id, info, template, len(trials))
    connect_ray(spec)
    k, trial_resources = trial_concurrency(spec, ray.cluster_resources())
    out(f"study {spec.name}: {len(trials)} trials over {len(spec.budgets)} budgets "
        f"(C = {spec.convention}, a multiply-add = 2 FLOPs), {k} at a time")
    out(f"MLflow: {spec.tracking_uri}  experiment {spec.name!r}  study run {study_run_id}")
    fid_reference(spec, study_context(study), out)
    return _fit(study, _new_tuner(study, trials, path, k, trial_resources, out), out, t0)


def _new_tuner(study: _Study, trials: list, path: str, k: int, trial_resources: dict,
               out: Callable[[str], None]) -> tune.Tuner:
    spec = study.spec
    searcher, sweep = study_searcher(spec, study.template, trials, study.tracking,
                                     study.study_run_id, out)
    progress = StudyProgress(len(trials) + len(sweep), spec.metric, out)
    progress.tracking_uri = spec.tracking_uri
    try:  # the Tuner writes its state into the storage at once
        return tune.Tuner(
            _trainable(study, trial_resources),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                        max_concurrent_trials=k),
            run_config=tune.RunConfig(
                name=path.rsplit("/", 1)[1], storage_path=path.rsplit("/", 1)[0], verbose=0,
                callbacks=[progress, StorageGuard(spec.storage_path, spec.name),
                           RunsTableWriter(spec, path)],
                failure_config=tune.FailureConfig(max_failures=1)),
        )
    except OSError as err:
        if storage_full(err):
            raise StudyStopped(_storage_line(err, spec)) from None
        raise


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


def unreadable_state(path: str) -> str | None:
    """Why Tune could not restore the experiment at `path` (None if it can): missing, or state
    files cut short, e.g. by a disk that filled up while Tune was saving them."""
    from pyarrow import fs as pafs

    if not tune.Tuner.can_restore(path):
        return "no Tune experiment state there"
    filesystem, root = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path)))
    infos = filesystem.get_file_info(pafs.FileSelector(root))
    for prefix, load in (("experiment_state-", json.loads), ("searcher-state-", cloudpickle.loads),
                         ("search_gen_state-", json.loads)):
        files = sorted(i.path for i in infos if i.base_name.startswith(prefix))
        if not files:
            continue
        try:
            with filesystem.open_input_stream(files[-1]) as f:
                load(f.read())
        except Exception as err:
            return f"{files[-1].rsplit('/', 1)[-1]} is unreadable ({type(err).__name__})"
    return None


def resume_study(study_name: str, tracking_uri: str,
                 out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Continue a study whose driver died or stopped: `Tuner.restore` from the same storage.

    Finished trials are not rerun (Tune's experiment state, and MLflow's record of each trial
    for those Tune had not yet recorded); unfinished and errored trials resume from their last
    checkpoints; the searcher (the allocator) continues from its saved state; trial runs are found
    again by their `dit.trial_key` tag, and the same study run carries on.
    """
    out = out or _print
    t0 = time.monotonic()
    tracking = Tracking(tracking_uri)
    tracking.check_access()
    run = tracking.latest_study_run(study_name)
    if SPEC_TAG not in run.data.tags:
        raise TrackingError(f"study {study_name!r}: study run {run.info.run_id} in MLflow at "
                            f"{tracking_uri} has no {SPEC_TAG} tag, so it cannot be resumed")
    spec = StudySpec.model_validate_json(run.data.tags[SPEC_TAG])
    study_run_id = run.info.run_id
    path = run.data.tags.get(EXPERIMENT_TAG) or experiment_path(spec, study_run_id)
    tracking = Tracking(spec.tracking_uri if spec.tracking.uri else tracking_uri,
                        spec.artifact_root)
    info = prepare_data(spec, out)
    template = model_template(spec, info)
    planned = run.data.tags.get("dit.planned_trials")
    study = _Study(spec, tracking, study_run_id, info, template,
                   int(planned) if planned else None)
    connect_ray(spec)
    k, trial_resources = trial_concurrency(spec, ray.cluster_resources())
    tracking.reopen(study_run_id)
    fid_reference(spec, study_context(study), out)
    problem = unreadable_state(path)
    if problem is None:
        out(f"study {spec.name}: resuming study run {study_run_id} from {path}")
        tuner = tune.Tuner.restore(path, trainable=_trainable(study, trial_resources),
                                   resume_unfinished=True, resume_errored=True)
        return _fit(study, tuner, out, t0)
    # Without Tune's state the study still resumes: the grid follows from the spec, MLflow knows
    # which trials finished (they report their record instead of training) and each unfinished
    # trial's Train run, named by study run and trial, continues from its last checkpoint.
    trials = fixed_grid(spec, template)
    fresh = f"{experiment_path(spec, study_run_id)}-r{time.strftime('%Y%m%d%H%M%S')}"
    tracking.set_tags(study_run_id, {EXPERIMENT_TAG: fresh})
    out(f"study {spec.name}: Tune's state at {path} cannot be restored ({problem}); resuming "
        f"study run {study_run_id} from MLflow and the trials' checkpoints in {fresh}")
    return _fit(study, _new_tuner(study, trials, fresh, k, trial_resources, out), out, t0)


def study_context(study: _Study) -> StudyContext:
    """What every trial of the study needs to know, shipped to the trial actors."""
    spec, info = study.spec, study.info
    return StudyContext(study=spec.name, study_run_id=study.study_run_id,
                        tracking_uri=spec.tracking_uri, storage_path=spec.storage_path,
                        spec=spec.model_dump(mode="json"), template=study.template,
                        train_urls=tuple(info.urls("train")), val_urls=tuple(info.urls("val")),
                        ood_urls=tuple(info.urls("ood")) if info.splits.get("ood") else (),
                        dataset_root=str(info.root), dataset_hash=info.content_hash,
                        autoencoder=info.params.get("autoencoder")
                        if info.image_key == "latent.npy" else None,
                        latent_scale=float(info.params.get("latent_scale", 1.0)))


def _trainable(study: _Study, trial_resources: dict):
    ctx = study_context(study)
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources)


def _fit(study: _Study, tuner: tune.Tuner, out: Callable[[str], None],
         t0: float) -> StudyOutcome:
    spec, tracking, study_run_id = study.spec, study.tracking, study.study_run_id
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    try:
        results = tuner.fit()
    except Exception as err:
        if storage_full(err):
            message = _storage_line(err, spec)
            tracking.set_tags(study_run_id, {STATUS: "stopped", "dit.error": message[:5000]})
            raise StudyStopped(message) from None
        raise
    progress = next((c for c in _callbacks(tuner) if isinstance(c, StudyProgress)), None)
    if progress is not None:
        out(progress.startup_summary())
    laws_text, figures = fit_and_log(tracking, spec, study_run_id, out)
    startup = progress.startup_seconds() if progress is not None else []
    if startup:
        median = sorted(startup)[len(startup) // 2]
        tracking.log_metrics(study_run_id, {"trial_startup_s_median": median})
    errors = sum(1 for r in results if r.error is not None)
    finished = len(results) - errors
    tracking.set_status(study_run_id, "finished")
    return StudyOutcome(study_run_id, finished, errors, laws_text, figures, startup,
                        time.monotonic() - t0)


def _callbacks(tuner: tune.Tuner) -> list:
    # The callbacks Tune runs: the ones given to a fresh Tuner, or their restored copies.
    internal = getattr(tuner, "_local_tuner", None)
    run_config = getattr(internal, "_run_config", None)
    return list(getattr(run_config, "callbacks", None) or [])


def _storage_line(err: BaseException, spec: StudySpec) -> str:
    while err is not None:
        if isinstance(err, StorageFullError):
            return err.strerror or str(err)
        err = err.__cause__ or err.__context__
    return (f"storage {spec.storage_path} is full (No space left on device): free space there, "
            f"then continue the study with `dit-scaling resume --study {spec.name}`")


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
