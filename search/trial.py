"""One trial on Ray: a Tune function trainable that trains one isoFLOP point.

A single-worker trial trains in the Tune trial's own process: Tune checkpoints it
(`tune.report(checkpoint=)`) and restarts it from its last checkpoint after a failure, and the
actor, torch and the data readers already loaded serve the study's next trial. That removes the
Train controller and worker group a `TorchTrainer` would start per trial (10-15 s before the
first step on a 2-core machine). Ray Train V2's own local mode (`num_workers=0`) is no substitute:
its reports never reach Tune and its checkpoints stay in memory.

A multi-worker trial builds a Ray Train `TorchTrainer` and forwards the workers' reports to Tune
with `TuneReportCallback` (Ray Train V2, the default in Ray 2.60, cannot be passed to `Tuner`
directly). Its Train run name is fixed per study run and trial, so a retried trial resumes its own
run from its last checkpoint instead of starting over (or silently resuming another trial's run).

Both run the same loop (`_train_loop`). Metrics reach MLflow from rank 0 through a buffered
`MetricSink`, so nothing depends on the driver or the tracking server staying up; rank 0 also sets
the trial's final status (finished or diverged). A full storage disk ends the trial with
`StorageFullError`, which the driver turns into one message and a resumable stop.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from scaling.data import register_pyarrow_schemes
from scaling.evaluate import EvalConfig, FIDConfig
from scaling.model import DiTConfig
from scaling.train import CHECKPOINT_FILE, TrainConfig, load_checkpoint, train
from search.branches import branch_dir, keep_branch_point, reuse_params
from search.grid import TrialSpec, plan
from search.lr_sweep import spec_rule
from search.records import BRANCH_OF, BRANCH_POINTS, BRANCH_STEP
from search.spec import StudySpec
from search.tracking import STATUS, MetricSink, Tracking, load_metrics, save_metrics, stamp


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares; shipped to trainables with `tune.with_parameters`."""

    study: str
    study_run_id: str
    tracking_uri: str
    storage_path: str
    spec: dict  # StudySpec as JSON-able data
    template: DiTConfig  # model family and data dimensions; shape replaced per trial
    train_urls: tuple[str, ...]
    val_urls: tuple[str, ...]
    ood_urls: tuple[str, ...] = ()
    dataset_root: str = ""  # holds dataset.json, logged to every trial run
    dataset_hash: str = ""
    autoencoder: str | None = None  # decodes latents for FID
    latent_scale: float = 1.0

    @property
    def study_spec(self) -> StudySpec:
        return StudySpec.model_validate(self.spec)

    def train_run_name(self, trial_key: str) -> str:
        return f"{self.study}-{self.study_run_id[:8]}-{trial_key}"


def eval_config(ctx: StudyContext) -> EvalConfig | None:
    """The spec's end-of-trial evaluation for this study's dataset; None if there is nothing."""
    spec = ctx.study_spec
    e = spec.eval
    ood = ctx.ood_urls if e.ood else ()
    fid = None
    if e.fid:
        fid = FIDConfig(
            caption_urls=ctx.val_urls, reference_urls=ctx.val_urls,
            dataset=f"{ctx.dataset_hash}/val", cache_dir=str(spec.fid_cache),
            extractor=e.fid_extractor, extractor_path=e.fid_extractor_path,
            samples=e.fid_samples, reference_samples=e.fid_reference_samples,
            steps=e.sampler_steps, cfg_scale=e.cfg_scale, batch_size=e.fid_batch_size,
            autoencoder=ctx.autoencoder, latent_scale=ctx.latent_scale)
    if not ood and fid is None:
        return None
    return EvalConfig(ood_urls=ood, ood_samples=e.ood_samples, fid=fid)


UNDELIVERED_FILE = "undelivered_metrics.json"  # in rank 0's checkpoints


def parallel_for(params: int, spec: StudySpec) -> str:
    """DDP below `resources.fsdp_min_params` parameters (or without it), FSDP2 from there on."""
    threshold = spec.resources.fsdp_min_params
    return "fsdp" if threshold is not None and params >= threshold else "ddp"


def train_config(ctx: StudyContext, trial: TrialSpec,
                 config: dict | None = None) -> tuple[TrainConfig, dict[str, str]]:
    """The trial's training configuration and the MLflow params that describe it.

    LR and warmup come from the trial `config` when the searcher set them (an LR sweep or its
    fitted rule), else from the spec's rule for this width (`search.lr_sweep.spec_rule`).
    """
    config = config or {}
    spec = ctx.study_spec
    t = spec.trainer
    model = replace(ctx.template, shape=trial.shape)
    p = plan(spec, ctx.template, trial)
    rule = spec_rule(spec)
    width = trial.shape.width
    lr = float(config.get("lr", rule.lr(width)))
    warmup = int(config.get("warmup_steps", rule.warmup(width)))
    cfg = TrainConfig(
        model=model, steps=p.steps, batch_size=t.batch_size, train_urls=ctx.train_urls,
        val_urls=ctx.val_urls if t.val_samples else (), lr=lr, warmup_steps=warmup,
        schedule=t.schedule, cooldown_fraction=t.cooldown_fraction, weight_decay=t.weight_decay,
        grad_clip=t.grad_clip, timestep_sampling=t.timestep_sampling, ema_alpha=t.ema_alpha,
        report_every=t.report_every, checkpoint_every=t.checkpoint_every,
        val_samples=t.val_samples, seed=trial.seed(spec.seed),
        threads=max(1, math.floor(spec.resources.cpus_per_worker)),
        micro_batch=t.micro_batch, precision=t.precision, compile=t.compile,
        parallel=parallel_for(p.params, spec), peak_flops=t.peak_flops,
        data_workers=t.data_workers, branch_points=tuple(config.get(BRANCH_POINTS, ())),
        caption_dropout=t.caption_dropout, eval=eval_config(ctx))
    params = {
        "budget": f"{trial.budget:.6g}", "convention": spec.convention,
        "params": p.params, "non_embedding_params": p.non_embedding_params,
        "tokens": p.tokens, "samples": p.samples, "steps": p.steps, "batch_size": p.batch_size,
        "compute_6nd": f"{p.compute_6nd:.6g}", "compute_exact": f"{p.compute_exact:.6g}",
        "depth": trial.shape.depth, "width": trial.shape.width, "heads": trial.shape.heads,
        "conditioning": model.conditioning, "patch_size": model.patch_size,
        "image_size": model.image_size, "image_tokens": model.image_tokens,
        "text_tokens": model.text_len, "seed": trial.seed(spec.seed),
        "workers": spec.resources.workers,
        "phase": config.get("phase", "study"), "lr": f"{lr:.6g}", "warmup_steps": warmup,
        "schedule": t.schedule,
        "micro_batch": t.micro_batch or t.batch_size // spec.resources.workers,
        "precision": t.precision, "compile": t.compile, "parallel": cfg.parallel,
        "caption_dropout": t.caption_dropout, "dataset_hash": ctx.dataset_hash,
    }
    if t.reuse != "off":
        params.update(reuse_params(config))
    if cfg.eval is not None and cfg.eval.fid is not None:
        f = cfg.eval.fid
        params.update({"fid_extractor": f.extractor, "fid_samples": f.samples,
                       "fid_reference_samples": f.reference_samples,
                       "sampler_steps": f.steps, "cfg_scale": f.cfg_scale})
    return cfg, {k: str(v) for k, v in params.items()}


def in_trial_process(spec: StudySpec) -> bool:
    """Whether the study's trials train in the Tune trial's own process (one worker each)."""
    return spec.resources.workers == 1


def trial_resources(spec: StudySpec) -> dict[str, float]:
    """What one trial's training process asks of the cluster (CPUs and GPUs)."""
    res = spec.resources
    need = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        need["GPU"] = res.gpus_per_worker
    return need


class StorageFullError(OSError):
    """The study's storage ran out of space; the study resumes once space is freed."""


def storage_full(err: BaseException | None) -> bool:
    """Whether an error (or anything in its chain, or its text) is a full disk (ENOSPC)."""
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, StorageFullError) or (isinstance(err, OSError)
                                                 and err.errno == errno.ENOSPC):
            return True
        if "No space left on device" in str(err) or "StorageFullError" in str(err):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _storage_message(storage: str, study: str, err: BaseException) -> str:
    return (f"storage {storage} is full ({err}): free space there, then continue the study with "
            f"`dit-scaling resume --study {study}`")


class _TrainWorker:
    """A Ray Train worker's view of its run: rank, device, checkpoint and reports."""

    def rank(self) -> int:
        return ray.train.get_context().get_world_rank()

    def device(self):
        return ray.train.torch.get_device()  # this worker's GPU, or the CPU

    def checkpoint(self) -> Checkpoint | None:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


class _TuneTrial:
    """The Tune trial's own process as the only worker: reports and checkpoints go to Tune."""

    def rank(self) -> int:
        return 0

    def device(self):
        import torch

        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so its first is device 0
        return torch.device("cuda", 0) if ray.get_gpu_ids() else torch.device("cpu")

    def checkpoint(self) -> tune.Checkpoint | None:
        return tune.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)


def _worker_loop(config: dict) -> None:
    """Runs on every Train worker of a multi-worker trial."""
    _train_loop(config, _TrainWorker())


def _train_loop(config: dict, worker: _TrainWorker | _TuneTrial) -> None:
    """Train, report to Tune and (rank 0) to MLflow.

    Rank 0 sends metrics through a buffered `MetricSink`, so an unreachable tracking server never
    stops training; while it is unreachable each report also carries `mlflow_pending` (metrics
    waiting) so the driver can say so. A worker restarted from a checkpoint logs
    `resumed_from_step`, and the node it runs on is tagged `dit.node`.

    Where a start's seconds went, logged with the first report of each start (at its step):
    `startup_setup_s` from the trial function's entry to this loop (its MLflow run, and for a
    multi-worker trial the Train controller and worker group), `startup_train_s` from this loop
    to its first report (model, data readers, the first `report_every` steps).
    """
    loop_start = time.time()
    cfg: TrainConfig = config["train"]
    register_pyarrow_schemes()  # shards under s3://, gs://, ... are read through pyarrow.fs
    rank = worker.rank()
    device = worker.device()
    sink = MetricSink(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    checkpoint = worker.checkpoint()
    if sink is not None:
        sink.set_tags({"dit.node": ray.get_runtime_context().get_node_id(),
                       "dit.hostname": socket.gethostname()})

    def report(metrics: dict[str, float], checkpoint_dir) -> None:
        nonlocal reported
        extra = {"mlflow_pending": float(sink.pending)} if sink is not None and sink.failing else {}
        items = stamp(metrics, int(metrics["step"])) if sink is not None else []
        if checkpoint_dir and sink is not None:
            # Metrics MLflow may not hold yet travel with the checkpoint: a worker lost before
            # its sink delivers them leaves no hole in the curve (the resumed worker sends them).
            save_metrics(Path(checkpoint_dir) / UNDELIVERED_FILE, sink.run_id,
                         sink.undelivered() + items)
        try:
            target = branch_points.get(int(metrics["step"]))
            if checkpoint_dir and target is not None:  # there before Tune hears of the step
                keep_branch_point(checkpoint_dir, target, skip=(UNDELIVERED_FILE,))
            worker.report({**metrics, **extra}, str(checkpoint_dir) if checkpoint_dir else None)
        except OSError as err:  # pyarrow's copy may leave errno unset; its text says ENOSPC
            if storage_full(err):
                raise StorageFullError(errno.ENOSPC, _storage_message(
                    config["storage_path"], config["study"], err)) from err
            raise
        # Logged once Train has the report (and its checkpoint): a report whose checkpoint could
        # not be stored is trained again, and logged then.
        if sink is not None:
            if not reported:
                reported = True
                entered = config.get("trial_start", loop_start)
                items += stamp({"startup_setup_s": loop_start - entered,
                                "startup_train_s": time.time() - loop_start},
                               int(metrics["step"]))
            sink.log_stamped(items)

    reported = False  # the first report of this start carries its start-up times
    branch_points = {int(s): Path(p) for s, p in config.get("branch_points", {}).items()}
    try:
        branch = config.get("branch_from")
        if checkpoint is None and branch is not None:
            if sink is not None:
                sink.log({branch["metric"]: branch["step"]}, step=branch["step"])
            final = train(cfg, report, resume_from=branch["dir"], device=device)
        elif checkpoint is not None:
            with checkpoint.as_directory() as resume_dir:
                if sink is not None:
                    sink.log_stamped(load_metrics(Path(resume_dir) / UNDELIVERED_FILE, sink.run_id))
                    step = int(load_checkpoint(resume_dir)["state"]["step"])
                    sink.log({"resumed_from_step": step}, step=step)
                final = train(cfg, report, resume_from=resume_dir, device=device)
        else:
            final = train(cfg, report, device=device)
    finally:
        if sink is not None:
            sink.close()
    if rank == 0:
        status = "diverged" if final.get("diverged") else "finished"
        tracking = Tracking(config["tracking_uri"])
        tracking.set_tags(config["run_id"], {"dit.final_step": str(int(final["step"]))})
        tracking.set_status(config["run_id"], status)


def _finished_before(tracking: Tracking, run_id: str) -> dict | None:
    """The final metrics of a trial that already finished (or diverged) in MLflow, else None."""
    run = tracking.client.get_run(run_id)
    if run.data.tags.get(STATUS) in ("finished", "diverged"):
        return dict(run.data.metrics)
    return None


def run_trial(config: dict, ctx: StudyContext) -> None:
    """The Tune function trainable: one isoFLOP point, trained here (one worker) or by a
    TorchTrainer (several).

    A trial that MLflow already holds as finished (the driver died after the trial ended but
    before Tune recorded it) reports its recorded metrics instead of training again. Each start
    logs `attempt` (1, 2, ...), so reruns are visible.
    """
    trial_start = time.time()
    trial = TrialSpec.from_config(config)
    key = config.get("trial_key", trial.key)  # sweep trials share a shape, not a key
    spec = ctx.study_spec
    cfg, params = train_config(ctx, trial, config)
    tracking = Tracking(ctx.tracking_uri)
    run_id = tracking.trial_run(ctx.study, ctx.study_run_id, key, params, trial.budget,
                                trunk=config.get(BRANCH_OF))
    done = _finished_before(tracking, run_id)
    if done is not None:
        tune.report({**done, "reused": 1.0})
        return
    attempts = len(tracking.client.get_metric_history(run_id, "attempt"))
    if attempts:
        tracking.reopen(run_id)
    tracking.log_metrics(run_id, {"attempt": attempts + 1}, step=attempts + 1)
    dataset_json = Path(ctx.dataset_root) / "dataset.json"
    if ctx.dataset_root and dataset_json.is_file():
        tracking.log_artifacts(run_id, [dataset_json], "data")
    loop_config = {"train": cfg, "run_id": run_id, "tracking_uri": ctx.tracking_uri,
                   "storage_path": ctx.storage_path, "study": ctx.study,
                   "trial_start": trial_start, **_branching(ctx, key, config, tracking, run_id)}
    try:
        if in_trial_process(spec):
            _train_loop(loop_config, _TuneTrial())
        else:
            _torch_trainer(ctx, key, loop_config).fit()
    except Exception as err:
        full = storage_full(err)
        tracking.set_status(run_id, "failed")
        tracking.set_tags(run_id, {"dit.error": (_storage_message(ctx.storage_path, ctx.study, err)
                                                 if full else _first_line(err))[:5000]})
        if full:
            raise StorageFullError(errno.ENOSPC, _storage_message(ctx.storage_path, ctx.study,
                                                                  err)) from None
        raise


def _branching(ctx: StudyContext, key: str, config: dict, tracking: Tracking,
               run_id: str) -> dict:
    """The loop's run-reuse settings: where a trunk leaves its branch-point checkpoints, and the
    checkpoint a branch starts from (used only when Tune has no checkpoint of the trial's own).
    A branch whose trunk left none (it failed before the step) trains from scratch and is tagged
    so."""
    def where(trunk: str, step: int) -> str:
        return str(branch_dir(ctx.storage_path, ctx.study, ctx.study_run_id, trunk, step))

    out: dict = {}
    if config.get(BRANCH_POINTS):
        out["branch_points"] = {int(s): where(key, int(s)) for s in config[BRANCH_POINTS]}
        # A trunk Tune restarts without a checkpoint (its driver was killed before it recorded
        # one) goes on from the furthest branch point it left: its own state at that step.
        kept = [s for s, path in out["branch_points"].items()
                if Path(path, CHECKPOINT_FILE).is_file()]
        if kept:
            out["branch_from"] = {"dir": out["branch_points"][max(kept)], "step": max(kept),
                                  "metric": "resumed_from_step"}
    if BRANCH_OF in config:
        trunk, step = str(config[BRANCH_OF]), int(config[BRANCH_STEP])
        path = where(trunk, step)
        if Path(path, CHECKPOINT_FILE).is_file():
            out["branch_from"] = {"dir": path, "step": step, "metric": "branched_from_step"}
            tracking.set_tags(run_id, {"dit.branch": f"off trunk {trunk} at step {step}"})
        else:
            tracking.set_tags(run_id, {"dit.branch": f"trained from scratch: trunk {trunk} left "
                                                     f"no checkpoint at step {step}"})
    return out


def _torch_trainer(ctx: StudyContext, key: str, loop_config: dict) -> TorchTrainer:
    """The Ray Train run of a multi-worker trial; its workers restart from its last checkpoint
    up to `resources.max_failures` times."""
    res = ctx.study_spec.resources
    return TorchTrainer(
        _worker_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
                                     resources_per_worker=trial_resources(ctx.study_spec)),
        run_config=ray.train.RunConfig(
            name=ctx.train_run_name(key), storage_path=ctx.storage_path,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=res.max_failures, controller_failure_limit=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
