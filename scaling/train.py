"""The training loop of one trial: a DiT trained with rectified flow on webdataset shards.

It knows nothing of Ray or MLflow. Progress leaves through `report(metrics, checkpoint_dir)`, called
every `report_every` steps and at each of `branch_points` on every rank (a distributed runner may
use it as a barrier); rank 0 passes a checkpoint directory every `checkpoint_every` steps, at each
branch point and at the end, the others pass None. A run restored from another run's branch-point
checkpoint (`scaling.reuse`) is that run's branch: it trains on from there under its own schedule.

- Parallelism: if `torch.distributed` is initialised (Ray Train does so), the model is replicated
  with DDP, or sharded with FSDP2 (`fully_shard` on every block and the root) when
  `parallel = "fsdp"`. Each rank takes batch_size / world samples per optimizer step, in
  micro-batches of `micro_batch` samples whose gradients accumulate (DDP syncs only the last).
- Precision: fp32, or bf16 autocast with fp32 weights and optimizer state (FSDP gathers bf16
  weights and reduces fp32 gradients). Attention runs through `scaled_dot_product_attention`;
  `compile` compiles each block in place with `torch.compile`.
- Throughput: every report carries the rates over the steps since the previous one: tokens/s,
  model FLOP/s of all ranks (3 x analytic forward FLOPs per sample) and MFU against the peak of
  `scaling.throughput.detect_peak`. Loss values leave the device once per report, not per step.
- Checkpoints (`state.pt`): the whole (unsharded) model and optimizer state, step, loss EMA and
  counters, the data position (the training stream resumes exactly there, see `scaling.data`) and
  RNG states. t and eps come from generators seeded per (seed, rank, step), so a resumed trial
  continues the same loss curve as an uninterrupted one (on the same number of ranks).

Units: `tokens` counts image tokens seen (D in C = 6ND); `flops_6nd` and `flops_exact` are training
FLOPs so far (a multiply-add = 2 FLOPs), the latter as 3 x analytic forward FLOPs per sample.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from scaling.data import Batch, DataStats, train_batches
from scaling.evaluate import EvalConfig, evaluate, validation_loss
from scaling.flops import forward_flops
from scaling.model import DiT, DiTConfig, fast_paths_enabled, parameter_count
from scaling.objective import TimestepSampling, drop_captions, flow_loss, sample_timesteps
from scaling.precision import autocast, on_device
from scaling.schedule import LRSchedule, Schedule
from scaling.throughput import Peak, detect_peak

Report = Callable[[dict[str, float], "Path | None"], None]
Precision = Literal["fp32", "bf16"]
Parallel = Literal["ddp", "fsdp"]

CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial needs; reproducible from this object alone."""

    model: DiTConfig
    steps: int
    batch_size: int  # global batch, samples per optimizer step across all ranks
    train_urls: tuple[str, ...]
    val_urls: tuple[str, ...] = ()
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: Schedule = "constant"
    cooldown_fraction: float = 0.2
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    timestep_sampling: TimestepSampling = "logit_normal"
    ema_alpha: float = 0.9
    report_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end
    # steps at which a report also carries a checkpoint, for runs that branch off this one
    # (`scaling.reuse`): each is the first step of a shorter run's cooldown
    branch_points: tuple[int, ...] = ()
    val_samples: int = 512
    seed: int = 0
    threads: int | None = None
    micro_batch: int | None = None  # samples per forward/backward on one rank; None: all at once
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile each block
    parallel: Parallel = "ddp"  # with several ranks: replicate (DDP) or shard (FSDP2)
    peak_flops: float | None = None  # FLOP/s of one device, for MFU; None: detected
    data_workers: int = 0  # DataLoader processes decoding shards; 0: in this process
    caption_dropout: float = 0.0  # fraction of samples trained without caption (for CFG)
    eval: EvalConfig | None = None  # end-of-trial evaluation beyond the validation loss

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "report_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.ema_alpha < 1:
            raise ValueError(f"ema_alpha={self.ema_alpha} is not in [0, 1)")
        if not self.train_urls:
            raise ValueError("train_urls is empty: a trial needs training shards")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch={self.micro_batch} must be at least 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {self.precision!r} is not fp32 or bf16")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel {self.parallel!r} is not ddp or fsdp")
        bad = [p for p in self.branch_points if not 0 < p < self.steps]
        if bad:
            raise ValueError(f"branch_points {bad} are not between step 0 and steps={self.steps}")
        if self.data_workers < 0:
            raise ValueError(f"data_workers={self.data_workers} must not be negative")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"peak_flops={self.peak_flops} must be a positive FLOP/s")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout={self.caption_dropout} is not in [0, 1)")

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(self.lr, self.steps, self.warmup_steps, self.schedule,
                          self.cooldown_fraction)

    def micro_batches(self, world: int) -> tuple[int, int]:
        """(samples per rank per step, samples per micro-batch) on `world` ranks."""
        if self.batch_size % world:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by {world} workers")
        local = self.batch_size // world
        micro = min(self.micro_batch or local, local)
        if local % micro:
            raise ValueError(f"micro_batch={self.micro_batch} does not divide the {local} "
                             f"samples each of {world} workers takes per step")
        return local, micro


@dataclass
class _State:
    step: int = 0
    loss_ema: float | None = None
    samples: int = 0
    train_seconds: float = 0.0


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    # Seeded per step so that a resumed run draws the same t and eps as an uninterrupted one.
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def build_model(cfg: TrainConfig, world: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(model, net): the DiT, sharded in place under FSDP, and the module the loop calls (DDP's
    wrapper, or the model itself). Weights start identical on every rank (seeded)."""
    torch.manual_seed(cfg.seed)
    model = DiT(cfg.model).to(device)
    if cfg.compile:
        for block in model.blocks:  # in place, so state-dict names do not change
            block.compile()
    if world == 1:
        return model, model
    if cfg.parallel == "fsdp":
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if cfg.precision == "bf16" else MixedPrecisionPolicy())
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model, model
    ids = [device.index] if device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel does the update of all tensors in one pass (CPU and CUDA).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def _rng_state() -> dict:
    """Every generator's state in types `torch.load(weights_only=True)` accepts (tensors, lists,
    numbers, strings): numpy's key array travels as a tensor."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _save_checkpoint(model: nn.Module, opt: torch.optim.Optimizer, state: _State,
                     cfg: TrainConfig, rank: int, world: int) -> Path | None:
    """Every rank takes part (FSDP gathers its shards); rank 0 writes and returns the directory."""
    model_state, optim_state = get_state_dict(
        model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    path = Path(tempfile.mkdtemp(prefix="dit-ckpt-"))
    torch.save(
        {
            "model": model_state,
            "optimizer": optim_state,
            "state": asdict(state),
            # The next training batch of every rank's stream, and the split it belongs to.
            "data": {"start_batch": state.step, "world_size": world,
                     "batch_size": cfg.batch_size},
            "rng": _rng_state(),
            "config_model": asdict(cfg.model),
        },
        path / CHECKPOINT_FILE,
    )
    return path


def load_checkpoint(path: str | Path) -> dict:
    """The saved training state of a checkpoint directory written by `train` (tensors mapped from
    the file, so every rank can open it cheaply). Only tensors and plain containers are read
    (`weights_only=True`): a checkpoint in shared storage cannot run code in the reader."""
    file = Path(path) / CHECKPOINT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {CHECKPOINT_FILE}")
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def _restore(model: nn.Module, opt: torch.optim.Optimizer, path: str | Path, world: int) -> _State:
    saved = load_checkpoint(path)
    options = StateDictOptions(full_state_dict=True)  # each rank keeps its own shard
    set_model_state_dict(model, saved["model"], options=options)
    set_optimizer_state_dict(model, opt, saved["optimizer"], options=options)
    _set_rng_state(saved["rng"])
    if saved["data"]["world_size"] != world:
        warnings.warn(f"checkpoint {path} was written by {saved['data']['world_size']} workers, "
                      f"resumed on {world}: the data order differs from then on", stacklevel=3)
    return _State(**saved["state"])


def evaluation_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """A module every rank can run on its own: the model itself, or under FSDP an unsharded copy
    (gathered by all ranks together), so evaluation needs no collective per forward."""
    if not isinstance(model, FSDPModule):
        return model
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    device = next(iter(full.values())).device
    with torch.device(device):
        copy = DiT(cfg.model)
    copy.load_state_dict(full)
    return copy


def final_evaluation(model: nn.Module, cfg: TrainConfig, rank: int, world: int
                     ) -> dict[str, float]:
    """Validation loss, then `scaling.evaluate` (OOD loss, FID on rank 0), on a model every rank
    runs alone (FSDP's shards gathered once)."""
    if not cfg.val_urls and cfg.eval is None:
        return {}
    whole = evaluation_model(model, cfg)
    out = validation_loss(whole, cfg, rank, world) if cfg.val_urls else {}
    out.update(evaluate(whole, cfg, rank, world))
    return out


def clip_gradients(model: nn.Module, max_norm: float) -> Tensor:
    """Scale the gradients so that their global L2 norm is at most `max_norm`; returns the norm
    before clipping (as `nn.utils.clip_grad_norm_`, whose result this equals up to rounding).

    torch uses its multi-tensor kernels for this on GPUs only; a plain CPU model gets them here
    (two kernel launches instead of two per parameter, most of the clipping time at 25K-500K
    parameters). Sharded and GPU models go through `clip_grad_norm_`.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if (not fast_paths_enabled() or isinstance(model, FSDPModule) or not grads
            or any(g.device.type != "cpu" or g.is_sparse for g in grads)):
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    # The coefficient clamped at 1 (as torch does) rather than a branch on its value: no sync.
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm


def _train_step(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, batch: Batch,
                cfg: TrainConfig, rank: int, step: int, micro: int,
                device: torch.device) -> Tensor:
    """One optimizer step over the rank's batch in micro-batches; the mean loss, on the device."""
    local = batch.image.shape[0]
    gen = _step_generator(cfg.seed, rank, step)
    # Drawn for the whole batch, so the micro-batch size does not change the draws.
    t = sample_timesteps(local, cfg.timestep_sampling, gen)
    eps = torch.randn(batch.image.shape, generator=gen)
    mask = drop_captions(batch.mask, cfg.caption_dropout, gen)
    image, text, mask, t, eps = on_device(device, batch.image, batch.text, mask, t, eps)
    total = torch.zeros((), device=device)
    for start in range(0, local, micro):
        part = slice(start, start + micro)
        last = start + micro >= local
        # DDP all-reduces gradients on the last micro-batch only.
        sync = nullcontext() if last or not isinstance(net, DistributedDataParallel) \
            else net.no_sync()
        with sync:
            with autocast(device, cfg.precision):
                loss = flow_loss(net, image[part], text[part], mask[part], t[part],
                                 eps[part]).sum() / local
            loss.backward()
        total += loss.detach()
    if cfg.grad_clip > 0:
        clip_gradients(model, cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


def train(cfg: TrainConfig, report: Report, resume_from: str | Path | None = None, *,
          device: torch.device | str | None = None) -> dict[str, float]:
    """Train one DiT for `cfg.steps` optimizer steps; returns the final metrics (also reported).

    `device` defaults to the current CUDA device if there is one, else the CPU.
    """
    rank, world = _distributed()
    local, micro = cfg.micro_batches(world)
    device = torch.device(device) if device is not None else _default_device()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, net = build_model(cfg, world, device)
    opt = _optimizer(model, cfg)
    schedule = cfg.lr_schedule()
    state = _restore(model, opt, resume_from, world) if resume_from is not None else _State()

    counts = parameter_count(cfg.model)
    tokens_per_sample = cfg.model.image_tokens
    fwd = forward_flops(cfg.model)
    peak: Peak = detect_peak(device, cfg.precision, cfg.peak_flops)
    stats = DataStats(samples=0, skipped=0, epochs=0.0)
    data = train_batches(list(cfg.train_urls), local, seed=cfg.seed, rank=rank,
                         world_size=world, start_batch=state.step, stats=stats,
                         num_workers=cfg.data_workers)

    def metrics_now(loss: float, steps: int, seconds: float) -> dict[str, float]:
        tokens = state.samples * tokens_per_sample
        samples_per_s = steps * cfg.batch_size / seconds if seconds > 0 else 0.0
        model_flops_per_s = 3.0 * fwd * samples_per_s
        return {
            "step": state.step,
            "loss": loss,
            "loss_ema": state.loss_ema if state.loss_ema is not None else loss,
            "lr": schedule(max(0, state.step - 1)),
            "samples": state.samples,
            "tokens": tokens,
            "epochs": stats.epochs,
            "flops_6nd": 6.0 * counts.total * tokens,
            "flops_exact": 3.0 * fwd * state.samples,
            "train_seconds": state.train_seconds,
            # Rates over the steps since the previous report, all ranks together.
            "step_seconds": seconds / steps if steps else 0.0,
            "tokens_per_s": samples_per_s * tokens_per_sample,
            "model_flops_per_s": model_flops_per_s,
            "mfu": model_flops_per_s / (peak.flops * world),
            "peak_flops": peak.flops,
            "data_skipped": stats.skipped,
        }

    net.train()
    window: list[Tensor] = []
    window_start, started = state.step, time.perf_counter()
    while state.step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = schedule(state.step)
        window.append(_train_step(net, model, opt, next(data), cfg, rank, state.step, micro,
                                  device))
        state.step += 1
        state.samples += cfg.batch_size
        last = state.step == cfg.steps
        branch_point = state.step in cfg.branch_points
        if state.step % cfg.report_every and not last and not branch_point:
            continue

        # One transfer (and one all-reduce) of the window's losses per report.
        losses = torch.stack(window).double()
        if world > 1:
            dist.all_reduce(losses, op=dist.ReduceOp.SUM)
            losses /= world
        values = losses.tolist()
        window.clear()
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        steps = state.step - window_start
        diverged_at = next((window_start + i + 1 for i, v in enumerate(values)
                            if not math.isfinite(v)), None)
        for v in values[:None if diverged_at is None else diverged_at - window_start - 1]:
            state.loss_ema = (v if state.loss_ema is None
                              else cfg.ema_alpha * state.loss_ema + (1 - cfg.ema_alpha) * v)
        if diverged_at is not None:
            # Losses leave the device once per report, so the window ran past the first
            # non-finite step; the trial is reported as stopped there.
            state.samples -= (state.step - diverged_at) * cfg.batch_size
            state.step = diverged_at
            metrics = metrics_now(float("nan"), steps, seconds)
            metrics.update(diverged=1.0, diverged_step=diverged_at, final=1.0)
            report(metrics, None)
            return metrics
        metrics = metrics_now(float(np.mean(values)), steps, seconds)
        if last:
            metrics.update(final_evaluation(model, cfg, rank, world))
            metrics["final"] = 1.0
        wants_ckpt = last or branch_point or (cfg.checkpoint_every
                                              and state.step % cfg.checkpoint_every == 0)
        checkpoint = _save_checkpoint(model, opt, state, cfg, rank, world) if wants_ckpt \
            else None
        try:
            report(metrics, checkpoint)
        finally:
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
        if last:
            return metrics
        window_start, started = state.step, time.perf_counter()
    # Resumed from a checkpoint taken at the final step: nothing left to train.
    metrics = {**metrics_now(state.loss_ema if state.loss_ema is not None else float("nan"),
                             0, 0.0), "final": 1.0}
    metrics.update(final_evaluation(model, cfg, rank, world))
    report(metrics, None)
    return metrics
