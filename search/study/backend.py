"""How a study's trials run on Ray: the cluster, how many trials fit at once, and the Tune
trainable of each trainer kind.

- real: `search.trial.run_trial`, a Tune function trainable that builds a Ray Train
  `TorchTrainer` per trial, writes its own MLflow trial run and checkpoints into the study's
  storage; a `StorageGuard` stops the study at the first full disk, and the runs table is
  rewritten as each trial ends;
- simulated: `search.simulated.run_simulated_trial` reports a parametric surface's loss curve;
  `SimulatedTrialLog` writes its MLflow trial runs from the driver (the only writer of them).
"""

from __future__ import annotations

import errno
import logging
import math
import os
from dataclasses import dataclass, field, replace

import ray
from ray import tune
from ray.tune import Callback

from search.branches import reuse_params
from search.grid import TrialSpec, plan
from search.progress import StudyProgress
from search.runs_writer import RunsTableWriter
from search.simulated import (
    SimContext,
    gpu_request,
    report_metrics,
    run_simulated_trial,
    trained_flops,
)
from search.spec import StudySpec
from search.study.session import StudySession
from search.trial import (
    StorageFullError,
    StudyContext,
    eval_config,
    in_trial_process,
    run_trial,
    trial_resources,
)
from search.trial_log import SimulatedTrialLog, Usage, known_trial_runs

# Ray Train reports at most every 2 s by default; tiny trials report far more often than that.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
# Tune's own tables and banners would bury the one line per trial that StudyProgress prints.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune keeps a trial's newest 2 checkpoints (num_to_keep) but saves the experiment state, which
# names each trial's latest one, at most every 10 s by default: a driver killed in between leaves
# a state naming a checkpoint already deleted, which `resume` cannot restore (Ray 2.60 has no
# fallback to an older one). Saved twice a second, the state trails the checkpoints by less than
# their interval.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0.5")
TRIAL_SLOT = "trial_slot"
SIMULATED_SLOTS = 4  # concurrent simulated trials on an embedded cluster without a GPU rule


class ClusterError(RuntimeError):
    """The cluster cannot run the study's trials as specified."""


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
             # A multi-worker trial starts a controller and its workers; let them start together.
             _system_config={"worker_maximum_startup_concurrency": 2 * cpus}, **extra, **kwargs)


def trial_concurrency(spec: StudySpec, resources: dict[str, float]) -> tuple[int, dict]:
    """How many real trials fit at once, and what each trial's own actor reserves.

    A single-worker trial trains in its trial actor, which reserves the worker's CPUs and GPUs.
    A multi-worker trial's actor only drives its Train worker group; a worker group that cannot
    get its resources waits 60 s and is then killed, so trials run only as many at a time as their
    worker groups fit.
    """
    r = spec.resources
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ClusterError(f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
                           f"({r.workers} workers); the cluster has {have_cpu:g} CPUs and "
                           f"{have_gpu:g} GPUs: lower resources.workers or *_per_worker")
    if in_trial_process(spec):  # trial slots are for actors that only drive worker groups
        actor, k = trial_resources(spec), math.floor(have_cpu / need_cpu)
    elif TRIAL_SLOT in resources:
        actor = {"CPU": 0, TRIAL_SLOT: 1}
        k = min(math.floor(have_cpu / need_cpu), int(resources[TRIAL_SLOT]))
    else:  # a cluster without slots: the driving actor takes a sliver of a CPU
        actor = {"CPU": 0.01}
        k = math.floor(have_cpu / (need_cpu + 0.01))
    if need_gpu:
        k = min(k, math.floor(have_gpu / need_gpu))
    if r.max_concurrent_trials:
        k = min(k, r.max_concurrent_trials)
    return max(1, k), actor


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


def study_context(session: StudySession) -> StudyContext:
    """What every real trial of the study needs to know, shipped to the trial actors."""
    spec, info = session.spec, session.info
    return StudyContext(study=spec.name, study_run_id=session.study_run_id,
                        tracking_uri=spec.tracking_uri, storage_path=spec.storage_path,
                        spec=spec.model_dump(mode="json"), template=session.template,
                        train_urls=tuple(info.urls("train")), val_urls=tuple(info.urls("val")),
                        ood_urls=tuple(info.urls("ood")) if info.splits.get("ood") else (),
                        dataset_root=str(info.root), dataset_hash=info.content_hash,
                        autoencoder=info.params.get("autoencoder")
                        if info.image_key == "latent.npy" else None,
                        latent_scale=float(info.params.get("latent_scale", 1.0)))


def fid_reference(session: StudySession) -> None:
    """Compute (or find cached) the FID reference statistics once, before the trials need them."""
    from scaling.fid import load_extractor, reference_stats

    cfg = eval_config(study_context(session))
    if cfg is None or cfg.fid is None:
        return
    f = cfg.fid
    reference_stats(list(f.reference_urls), f.reference_samples,
                    load_extractor(f.extractor, f.extractor_path), cache_dir=f.cache_dir,
                    dataset=f.dataset, batch_size=f.batch_size, log=session.out)


def simulated_params(session: StudySession):
    """MLflow params of a simulated trial: those of a real trial, plus the simulation's."""
    spec, template = session.spec, session.template

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
            "text_tokens": model.text_len, "seed": trial.seed(spec.seed),
            "trainer": "simulated",
            "surface": t.surface, "noise": t.noise, "gpus": config.get("gpus", 0),
            "gpu_hours": f"{trained_flops(config) / (r.gpu_peak_flops * r.mfu) / 3600:.6g}",
            **(reuse_params(config) if t.reuse != "off" else {}),
        }.items()}
    return params_of


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
                # Tune appends each failure ("Failure # N ..."): only the latest says why this
                # one failed, not a disk that was full before a resume.
                text = f.read().rsplit("Failure # ", 1)[-1]
        if "No space left on device" in text or "StorageFullError" in text:
            raise StorageFullError(errno.ENOSPC, f"storage {self.storage} is full (No space left "
                                   f"on device): free space there, then continue the study with "
                                   f"`dit-scaling resume --study {self.study}`")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check(trial)


@dataclass
class Backend:
    """The trainable of one execution, its concurrency and callbacks, and what to do after."""

    session: StudySession
    trainable: object = None
    concurrency: int = 1
    callbacks: list = field(default_factory=list)
    progress: StudyProgress | None = None

    @staticmethod
    def start(session: StudySession) -> Backend:
        """Connect to Ray and build the study's trainable for its trainer kind."""
        spec = session.spec
        connect_ray(spec)
        cluster = ray.cluster_resources()
        backend = Backend(session)
        if spec.simulated:
            k, resources = simulated_concurrency(spec, cluster)
            # trials Tune restores as running but MLflow holds as finished report at once
            finished = frozenset(key for key, (_, _, status) in known_trial_runs(
                session.tracking, spec.name, session.study_run_id).items()
                if status == "finished")
            ctx = SimContext.from_spec(spec, finished=finished)
            fn = tune.with_parameters(run_simulated_trial, ctx=ctx)
            log = SimulatedTrialLog(spec.tracking_uri, spec.name, session.study_run_id,
                                    simulated_params(session))
            backend.trainable, backend.concurrency = tune.with_resources(fn, resources), k
            backend.callbacks = [log]
        else:
            k, trial_resources = trial_concurrency(spec, cluster)
            fid_reference(session)
            fn = tune.with_parameters(run_trial, ctx=study_context(session))
            backend.trainable, backend.concurrency = tune.with_resources(fn, trial_resources), k
            backend.callbacks = [StorageGuard(spec.storage_path, spec.name)]
            if session.kind == "study":  # the runs table holds isoFLOP points only
                backend.callbacks.append(RunsTableWriter(spec, session.experiment))
        gpus = cluster.get("GPU", 0)
        session.out(f"Ray: up to {k} trials at a time"
                    + (f" on {gpus:g} GPUs" + (" (simulated)" if spec.simulated else "")
                       if gpus else ""))
        return backend

    def all_callbacks(self, planned: int | None) -> list:
        spec = self.session.spec
        self.progress = StudyProgress(planned, spec.metric, self.session.out)
        self.progress.tracking_uri = spec.tracking_uri
        return [self.progress, *self.callbacks]

    def after(self, results) -> list[Usage]:
        """Close the trial log, and write the simulated trials Tune finished that a driver
        stopped before writing; the GPU usage of simulated trials."""
        usage: list[Usage] = []
        for cb in self.callbacks:
            if isinstance(cb, SimulatedTrialLog):
                cb.close()
                usage = cb.usage
        session = self.session
        if session.spec.simulated and results is not None:
            log = SimulatedTrialLog(session.spec.tracking_uri, session.spec.name,
                                    session.study_run_id, simulated_params(session))
            ctx = SimContext.from_spec(session.spec)
            done = []
            for r in results:
                if r.config and "trial_key" in r.config and r.metrics.get("final"):
                    run = ctx.run(r.config)
                    history = [report_metrics(ctx, r.config, run, i) for i in range(len(run.steps))]
                    done.append((r.config, history, "failed" if r.error else "finished"))
            written = log.reconcile(done)
            if written:
                session.out(f"MLflow: wrote {written} trial runs the stopped driver had not "
                            "written")
        return usage
