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
import pickle
import pickletools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from scaling.builtin_data import DatasetInfo, write_builtin_dataset
from scaling.hparams import LRRule, SweepPoint, best_lrs
from scaling.model import DiTConfig, ModelShape
from scaling.text import DEFAULT_TEXT_ENCODER
from search.allocator import Prior, resolve_prior
from search.credentials import has_embedded_credentials, masked_uri
from search.grid import GridSearcher, TrialSpec, fixed_grid, plan, trial_config
from search.lr_sweep import LRSweepSearcher, rule_params, spec_rule, sweep_configs
from search.plan import simulated_template
from search.progress import StudyProgress
from search.results import RunsTableWriter, fit_and_log, load_laws
from search.searcher import AllocatorSearcher
from search.simulated import SimContext, gpu_request, report_metrics, run_simulated_trial
from search.spec import SpecError, StudySpec, spec_to_toml_dict
from search.tracking import KIND, STATUS, Tracking, TrackingError
from search.trial import StorageFullError, StudyContext, eval_config, run_trial, storage_full
from search.trial_log import SimulatedTrialLog, Usage, known_trial_runs
from search.trust import SIGNATURE_TAG, signature, trusted_state

# Ray Train reports at most every 2 s by default; tiny trials report far more often than that.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
# Tune's own tables and banners would bury the one line per trial that StudyProgress prints.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
TRIAL_SLOT = "trial_slot"
SIMULATED_SLOTS = 4  # concurrent simulated trials on an embedded cluster without a GPU rule
DECISIONS_FILE = "allocator_decisions.json"
SPEC_FILE = "spec.json"
STORAGE_TAG = "dit.storage_path"


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
    usage: list[Usage] = field(default_factory=list)  # simulated trials: when GPUs were held
    decisions: list[dict] = field(default_factory=list)  # the allocator's, in order


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
    """Join the cluster named by RAY_ADDRESS (a submitted job), else start one on this machine.

    The embedded cluster of a simulated study declares resources.simulated_gpus fake GPUs, and as
    many trial slots as resources.max_concurrent_trials (default 4: simulated trials need no CPU).
    """
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
    if spec.simulated:
        slots = spec.resources.max_concurrent_trials or SIMULATED_SLOTS
        extra = {"num_gpus": spec.resources.simulated_gpus} if spec.resources.simulated_gpus else {}
    else:
        per_trial = spec.resources.workers * spec.resources.cpus_per_worker
        slots, extra = max(1, math.floor(cpus / per_trial)), {}
    ray.init(num_cpus=cpus, resources={TRIAL_SLOT: slots}, include_dashboard=False,
             # Each trial starts ~4 processes (trial, controller, workers); let them start together.
             _system_config={"worker_maximum_startup_concurrency": 2 * cpus}, **extra, **kwargs)


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


def simulated_concurrency(spec: StudySpec, resources: dict[str, float]) -> tuple[int, object]:
    """How many simulated trials run at once, and what each asks for: GPUs by the size rule, else
    a trial slot (or a sliver of a CPU on a cluster without slots)."""
    r = spec.resources
    if r.gpus_per_trial:
        have = resources.get("GPU", 0.0)
        most = max(t.gpus for t in r.gpus_per_trial)
        if most > have:
            raise ClusterError(f"resources.gpus_per_trial asks up to {most} GPUs for one trial; "
                               f"the cluster has {have:g} GPUs (set resources.simulated_gpus "
                               "for a fake GPU cluster)")
        k = math.floor(have / min(t.gpus for t in r.gpus_per_trial))
        resources_of = gpu_request
    elif TRIAL_SLOT in resources:
        k, resources_of = int(resources[TRIAL_SLOT]), {"CPU": 0, TRIAL_SLOT: 1}
    else:
        k, resources_of = max(1, math.floor(resources.get("CPU", 1.0) / 0.01)), {"CPU": 0.01}
    if r.max_concurrent_trials:
        k = min(k, r.max_concurrent_trials)
    return max(1, k), resources_of


def study_template(spec: StudySpec, out: Callable[[str], None]) -> tuple[DatasetInfo | None,
                                                                        DiTConfig]:
    """The dataset (None for a simulated study, which trains nothing) and the model family."""
    if spec.simulated:
        return None, simulated_template(spec)
    info = prepare_data(spec, out)
    return info, model_template(spec, info)


def study_prior(spec: StudySpec, tracking: Tracking) -> Prior:
    return resolve_prior(spec, study_law=lambda name: load_laws(tracking, name)[0].n_opt)


def make_searcher(spec: StudySpec, template: DiTConfig, prior: Prior,
                  out: Callable[[str], None]) -> tuple[Searcher, int | None]:
    """The fixed grid (centred on the prior, unless that is the heuristic the grid uses anyway)
    or the adaptive allocator; and the number of planned trials when known."""
    if spec.allocator.kind == "adaptive":
        return AllocatorSearcher(spec, template, prior, out), None
    centre = None if spec.allocator.prior == "none" else prior
    trials = fixed_grid(spec, template, centre)
    return GridSearcher([trial_config(spec, template, t) for t in trials]), len(trials)


def simulated_params(spec: StudySpec, template: DiTConfig) -> Callable[[dict], dict[str, str]]:
    """MLflow params of a simulated trial: those of a real trial, plus the simulation's."""
    def params_of(config: dict) -> dict[str, str]:
        trial = TrialSpec.from_config(config)
        p = plan(spec, template, trial)
        model = replace(template, shape=trial.shape)
        t, r = spec.trainer, spec.resources
        return {k: str(v) for k, v in {
            "budget": f"{trial.budget:.6g}", "convention": spec.convention, "params": p.params,
            "non_embedding_params": p.non_embedding_params, "tokens": p.tokens,
            "samples": p.samples, "steps": p.steps, "batch_size": p.batch_size,
            "compute_6nd": f"{p.compute_6nd:.6g}", "compute_exact": f"{p.compute_exact:.6g}",
            "depth": trial.shape.depth, "width": trial.shape.width, "heads": trial.shape.heads,
            "conditioning": model.conditioning, "patch_size": model.patch_size,
            "image_size": model.image_size, "image_tokens": model.image_tokens,
            "text_tokens": model.text_len, "seed": spec.seed, "trainer": "simulated",
            "surface": t.surface, "noise": t.noise, "gpus": config.get("gpus", 0),
            "gpu_hours": f"{float(config['flops']) / (r.gpu_peak_flops * r.mfu) / 3600:.6g}",
        }.items()}
    return params_of


@dataclass
class StudyRun:
    """What one execution (run, refine or resume) of a study's trials on Ray needs."""

    spec: StudySpec
    info: DatasetInfo | None
    template: DiTConfig
    tracking: Tracking
    study_run_id: str
    out: Callable[[str], None]

    def trainable(self) -> tuple[object, int, list]:
        """The Tune trainable with its resources, the concurrency, and extra callbacks."""
        spec = self.spec
        connect_ray(spec)
        cluster = ray.cluster_resources()
        if spec.simulated:
            k, resources = simulated_concurrency(spec, cluster)
            finished = frozenset(key for key, (_, _, status) in known_trial_runs(
                self.tracking, spec.name, self.study_run_id).items() if status == "finished")
            ctx = SimContext.from_spec(spec, finished=finished)
            fn = tune.with_parameters(run_simulated_trial, ctx=ctx)
            log = SimulatedTrialLog(spec.tracking_uri, spec.name, self.study_run_id,
                                    simulated_params(spec, self.template))
            return tune.with_resources(fn, resources), k, [log]
        k, trial_resources = trial_concurrency(spec, cluster)
        ctx = study_context(self)
        fid_reference(spec, ctx, self.out)
        # as on the grid path: a full storage stops the study, each finished trial joins the table
        guards = [StorageGuard(spec.storage_path, spec.name),
                  RunsTableWriter(spec, experiment_path(spec, self.study_run_id))]
        trainable = tune.with_parameters(run_trial, ctx=ctx)
        return tune.with_resources(trainable, trial_resources), k, guards

    def execute(self, tuner_of: Callable[[object, int, list], tune.Tuner],
                planned: int | None) -> tuple[StudyProgress, list[Usage], Path]:
        """Build the Tuner (`tuner_of(trainable, k, callbacks)`), run it, reconcile MLflow."""
        spec = self.spec
        trainable, k, extra = self.trainable()
        gpus = ray.cluster_resources().get("GPU", 0)
        self.out(f"Ray: up to {k} trials at a time"
                 + (f" on {gpus:g} GPUs" + (" (simulated)" if spec.simulated else "")
                    if gpus else ""))
        progress = StudyProgress(planned, spec.metric, self.out)
        progress.tracking_uri = spec.tracking_uri
        callbacks = [progress, *extra]
        tuner = tuner_of(trainable, k, callbacks)
        results = fit_or_stop(tuner, spec, self.tracking, self.study_run_id)
        usage: list[Usage] = []
        for cb in extra:
            if isinstance(cb, SimulatedTrialLog):
                cb.close()
                usage = cb.usage
        if spec.simulated:  # trials Tune finished that the driver did not get to write
            log = SimulatedTrialLog(spec.tracking_uri, spec.name, self.study_run_id,
                                    simulated_params(spec, self.template))
            ctx = SimContext.from_spec(spec)
            done = []
            for r in results:
                if r.config and "trial_key" in r.config:
                    run = ctx.run(r.config)
                    history = [report_metrics(ctx, r.config, run, i) for i in range(len(run.steps))]
                    done.append((r.config, history, "failed" if r.error else "finished"))
            written = log.reconcile(done)
            if written:
                self.out(f"MLflow: wrote {written} trial runs the stopped driver had not written")
        return progress, usage, Path(results.experiment_path)

    def finish(self, progress: StudyProgress, experiment_path: Path, usage: list[Usage],
               t0: float, previous_decisions: list[dict] | None = None) -> StudyOutcome:
        """Log decisions and spec, fit and log the laws, close the study run."""
        spec, tracking = self.spec, self.tracking
        self.out(progress.startup_summary())
        decisions = (previous_decisions or []) + searcher_decisions(experiment_path)
        if decisions:
            tracking.client.log_text(self.study_run_id, json.dumps(decisions, indent=1),
                                     DECISIONS_FILE)
        laws_text, figures = fit_and_log(tracking, spec, self.study_run_id, self.out)
        startup = progress.startup_seconds()
        if startup:
            median = sorted(startup)[len(startup) // 2]
            tracking.log_metrics(self.study_run_id, {"trial_startup_s_median": median})
        tracking.set_status(self.study_run_id, "finished")
        return StudyOutcome(self.study_run_id, progress.done, progress.failed, laws_text, figures,
                            startup, time.monotonic() - t0, usage, decisions)


def searcher_decisions(experiment_path: Path) -> list[dict]:
    """The allocator's decisions from the searcher state Tune saved last (none for a grid)."""
    files = sorted(experiment_path.glob(Searcher.CKPT_FILE_TMPL.format("*")))
    if not files:
        return []
    with open(files[-1], "rb") as f:
        state = pickle.load(f)
    return list(state.get("allocator", {}).get("decisions", [])) if isinstance(state, dict) else []


def _tuner(spec: StudySpec, name: str, searcher: Searcher):
    def build(trainable, k: int, callbacks: list) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1,
                                        max_concurrent_trials=k, reuse_actors=spec.simulated),
            run_config=tune.RunConfig(name=name, storage_path=spec.storage_path, verbose=0,
                                      callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
    return build


def _run_allocated(spec: StudySpec, out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Run every trial of the study on Ray, track it in MLflow and fit the laws."""
    out = out or _print
    t0 = time.monotonic()
    info, template = study_template(spec, out)
    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    prior = study_prior(spec, tracking)
    searcher, planned = make_searcher(spec, template, prior, out)

    study_run_id = tracking.start_study_run(spec.name, _flat_params(spec_to_toml_dict(spec)))
    name = f"{spec.name}-{study_run_id[:8]}"
    tracking.client.log_text(study_run_id, spec.model_dump_json(indent=1), SPEC_FILE)
    record_state(tracking, study_run_id, spec.model_dump_json(exclude_none=True),
                 experiment_path(spec, study_run_id), {STORAGE_TAG: spec.storage_path})
    run = StudyRun(spec, info, template, tracking, study_run_id, out)
    trials = f"{planned} trials" if planned is not None else "adaptive trials"
    trainer = (f"simulated trainer (surface {spec.trainer.surface})" if spec.simulated
               else "real training")
    out(f"study {spec.name}: {trials} over {len(spec.budgets)} budgets (C = {spec.convention}, "
        f"a multiply-add = 2 FLOPs), allocator {spec.allocator.kind}, {trainer}")
    out(f"MLflow: {spec.tracking_uri}  experiment {spec.name!r}  study run {study_run_id}")
    if planned is not None:
        tracking.set_tags(study_run_id, {"dit.planned_trials": str(planned)})
    progress, usage, path = run.execute(_tuner(spec, name, searcher), planned)
    return run.finish(progress, path, usage, t0)


def record_state(tracking: Tracking, run_id: str, spec_json: str, experiment: str,
                 extra: dict[str, str] | None = None) -> None:
    """Store what `resume` needs (the resolved spec, the Tune experiment path) with the
    signature `search.trust` checks before any of it is loaded again."""
    tracking.set_tags(run_id, {SPEC_TAG: spec_json, EXPERIMENT_TAG: experiment,
                               SIGNATURE_TAG: signature(run_id, spec_json, experiment),
                               **(extra or {})})


def load_study(tracking: Tracking, study: str) -> tuple[object, StudySpec, str]:
    """The latest study run of a study, the spec it ran with and its Tune experiment path, each
    checked by `search.trust.trusted_state` (from MLflow; nothing is loaded from storage)."""
    run = tracking.latest_study_run(study)
    spec_json, experiment = trusted_state(study, run.info.run_id, run.data.tags, SPEC_TAG,
                                          EXPERIMENT_TAG, tracking.uri)
    return run, StudySpec.model_validate_json(spec_json), experiment


def _resume_allocated(study: str, tracking_uri: str,
                      out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Continue the latest run of a study whose driver stopped: `Tuner.restore` on its Tune
    experiment (finished trials are not rerun; the searcher continues its saved plan), then the
    MLflow runs the driver did not write and the laws."""
    out = out or _print
    t0 = time.monotonic()
    tracking = Tracking(tracking_uri)
    run, spec, experiment = load_study(tracking, study)
    tags = run.data.tags
    path = Path(experiment)
    if not tune.Tuner.can_restore(str(path)):
        raise TrackingError(f"study {study!r}: no restorable Tune experiment at {path}")
    info, template = study_template(spec, out)
    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    study_run = StudyRun(spec, info, template, tracking, run.info.run_id, out)
    out(f"study {spec.name}: resuming study run {run.info.run_id} from {path}")

    def restore(trainable, k: int, callbacks: list) -> tune.Tuner:
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        # Tune restores the callbacks pickled when the study started; this driver's own ones
        # count and time the resumed run (Ray 2.60 has no public way to pass them on restore).
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner

    planned = tags.get("dit.planned_trials")
    progress, usage, exp_path = study_run.execute(restore, int(planned) if planned else None)
    return study_run.finish(progress, exp_path, usage, t0)


def refine_study(study: str, tracking_uri: str, budgets: list[float] | None = None,
                 tolerance: float | None = None,
                 out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Add trials to a finished study to tighten chosen optima, reusing every finished trial:
    the adaptive allocator starts from them, new trials nest under the same study run, and the
    laws are refitted and logged again."""
    out = out or _print
    t0 = time.monotonic()
    tracking = Tracking(tracking_uri)
    run, spec, _ = load_study(tracking, study)
    run_id = run.info.run_id
    chosen = [float(c) for c in budgets or []]
    for c in chosen:
        if not any(math.isclose(c, b, rel_tol=1e-6) for b in spec.budgets):
            raise SpecError(f"--budget {c:g}: not a budget of study {study!r} (budgets "
                            f"{', '.join(f'{b:g}' for b in spec.budgets)})")
    chosen = [next(b for b in spec.budgets if math.isclose(c, b, rel_tol=1e-6)) for c in chosen]
    update = {"kind": "adaptive", **({"tolerance": tolerance} if tolerance else {})}
    spec = spec.model_copy(update={"allocator": spec.allocator.model_copy(update=update)})
    info, template = study_template(spec, out)
    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    records = tracking.trial_records(run_id, run.info.experiment_id)
    shapes = [ModelShape(int(r.params["depth"]), int(r.params["width"]), int(r.params["heads"]))
              for r in records]
    searcher = AllocatorSearcher(spec, template, study_prior(spec, tracking), out, shapes)
    cat = searcher.allocator.catalogue
    def budget_of(r) -> float:  # MLflow keeps 6 significant digits of the spec's budget
        return min(spec.budgets, key=lambda b: abs(math.log(b / float(r.params["budget"]))))

    seeded = [(budget_of(r), cat.shapes.index(shape),
               r.metrics.get(spec.metric) if r.status == "finished" else None)
              for r, shape in zip(records, shapes, strict=True)]
    searcher.allocator.seed(seeded)
    out(f"study {spec.name}: refining study run {run_id} from {len(records)} trials "
        f"({sum(r.status == 'finished' for r in records)} finished), tolerance "
        f"±{searcher.allocator.a.tolerance:.0%}")
    searcher.allocator.reopen(chosen, tolerance)
    previous = _previous_decisions(tracking, run_id)
    n = len(tracking.client.search_runs([run.info.experiment_id],
                                        f"tags.`{KIND}` = 'study'")) + len(previous)
    name = f"{spec.name}-{run_id[:8]}-refine-{n}-{int(time.time())}"
    study_run = StudyRun(spec, info, template, tracking, run_id, out)
    tracking.set_tags(run_id, {"dit.status": "running"})
    progress, usage, path = study_run.execute(_tuner(spec, name, searcher), None)
    return study_run.finish(progress, path, usage, t0, previous)


def _previous_decisions(tracking: Tracking, run_id: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(tracking.download_text(run_id, DECISIONS_FILE, Path(tmp)))
        except Exception:
            return []


# ---- the general study path (fixed grid, real training; issue 6) ----

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
    """The spec with every location made absolute, so the study can be resumed from anywhere.

    It is stored with the study (MLflow tags and params), so a tracking URI carrying credentials
    is refused here rather than written there."""
    if has_embedded_credentials(spec.tracking_uri):
        raise SpecError(f"tracking.uri {masked_uri(spec.tracking_uri)} carries credentials "
                        "(user:password@), which would be stored with the study: give them as "
                        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or in "
                        "~/.mlflow/credentials")
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
    if spec.simulated or spec.allocator.kind == "adaptive":
        return _run_allocated(spec, out)  # the allocator's searcher and/or simulated trials
    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    tracking.check_access()
    info = prepare_data(spec, out)
    template = model_template(spec, info)
    trials = fixed_grid(spec, template)

    study_run_id = tracking.start_study_run(spec.name, _flat_params(spec_to_toml_dict(spec)))
    path = experiment_path(spec, study_run_id)
    record_state(tracking, study_run_id, spec.model_dump_json(exclude_none=True), path,
                 {"dit.planned_trials": str(len(trials))})
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


def _pickle_complete(data: bytes) -> None:
    """Raise unless `data` is one whole pickle stream; its opcodes are parsed, never run."""
    ops = list(pickletools.genops(data))
    if not ops or ops[-1][0].name != "STOP":
        raise ValueError("no STOP opcode")


def unreadable_state(path: str) -> str | None:
    """Why Tune could not restore the experiment at `path` (None if it can): missing, or state
    files cut short, e.g. by a disk that filled up while Tune was saving them. Nothing is
    unpickled here: the trust check (`search.trust`) comes first, and Tune's restore is the
    only reader of its pickles."""
    from pyarrow import fs as pafs

    if not tune.Tuner.can_restore(path):
        return "no Tune experiment state there"
    filesystem, root = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path)))
    infos = filesystem.get_file_info(pafs.FileSelector(root))
    # experiment_state is JSON; the searcher's saved states are pickles, whatever their suffix
    for prefix, check in (("experiment_state-", json.loads), ("searcher-state-", _pickle_complete),
                          ("search_gen_state-", _pickle_complete)):
        files = sorted(i.path for i in infos if i.base_name.startswith(prefix))
        if not files:
            continue
        try:
            with filesystem.open_input_stream(files[-1]) as f:
                check(f.read())
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
    run, spec, path = load_study(tracking, study_name)
    if spec.simulated or spec.allocator.kind == "adaptive":
        # Tuner.restore as below, with the simulated trainable and the allocator's searcher state
        return _resume_allocated(study_name, tracking_uri, out)
    study_run_id = run.info.run_id
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
    record_state(tracking, study_run_id, run.data.tags[SPEC_TAG], fresh)
    out(f"study {spec.name}: Tune's state at {path} cannot be restored ({problem}); resuming "
        f"study run {study_run_id} from MLflow and the trials' checkpoints in {fresh}")
    return _fit(study, _new_tuner(study, trials, fresh, k, trial_resources, out), out, t0)


def study_context(study: _Study | StudyRun) -> StudyContext:
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
    results = fit_or_stop(tuner, spec, tracking, study_run_id)
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


def fit_or_stop(tuner: tune.Tuner, spec: StudySpec, tracking: Tracking, study_run_id: str):
    """`tuner.fit()`; a full storage marks the study run stopped and raises `StudyStopped` with
    the line that says how to resume."""
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    try:
        return tuner.fit()
    except Exception as err:
        if storage_full(err):
            message = _storage_line(err, spec)
            tracking.set_tags(study_run_id, {STATUS: "stopped", "dit.error": message[:5000]})
            raise StudyStopped(message) from None
        raise


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
