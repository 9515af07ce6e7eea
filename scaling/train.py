"""The training loop of one trial: a DiT trained with rectified flow on webdataset shards.

It knows nothing of Ray or MLflow. Progress leaves through `report(metrics, checkpoint_dir)`, called
every `report_every` steps on every rank (a distributed runner may use it as a barrier); rank 0
passes a checkpoint directory every `checkpoint_every` steps and at the end, the others pass None.
If `torch.distributed` is initialised (Ray Train does so), the model is wrapped in DDP.

Units: `tokens` counts image tokens seen (D in C = 6ND); `flops_6nd` and `flops_exact` are training
FLOPs so far (a multiply-add = 2 FLOPs), the latter as 3 x analytic forward FLOPs per sample.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from scaling.data import DataStats, eval_batches, train_batches
from scaling.evaluate import EvalConfig, evaluate
from scaling.flops import forward_flops
from scaling.model import DiT, DiTConfig, parameter_count
from scaling.objective import TimestepSampling, drop_captions, flow_loss, sample_timesteps
from scaling.schedule import LRSchedule, Schedule

Report = Callable[[dict[str, float], "Path | None"], None]

CHECKPOINT_FILE = "state.pt"
VAL_SEED = 20241010  # one fixed seed for every trial, so validation losses are comparable
T_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


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
    val_samples: int = 512
    seed: int = 0
    threads: int | None = None
    caption_dropout: float = 0.0  # fraction of samples trained without caption (for CFG)
    eval: EvalConfig | None = None  # end-of-trial evaluation beyond the validation loss
    # Fault injection for testing the service: the loss is made NaN at this step, so the
    # divergence path (stop, report `diverged`, exclusion from the fit) runs for real.
    nan_loss_at_step: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "report_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.ema_alpha < 1:
            raise ValueError(f"ema_alpha={self.ema_alpha} is not in [0, 1)")
        if not self.train_urls:
            raise ValueError("train_urls is empty: a trial needs training shards")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout={self.caption_dropout} is not in [0, 1)")


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


def _all_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world
    return value


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    # Seeded per step so that a resumed run draws the same t and eps as an uninterrupted one.
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _save_checkpoint(model: nn.Module, opt, state: _State, cfg: TrainConfig) -> Path:
    path = Path(tempfile.mkdtemp(prefix="dit-ckpt-"))
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "state": asdict(state),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "config_model": asdict(cfg.model),
        },
        path / CHECKPOINT_FILE,
    )
    return path


def load_checkpoint(path: str | Path) -> dict:
    """The saved training state of a checkpoint directory written by `train`."""
    file = Path(path) / CHECKPOINT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {CHECKPOINT_FILE}")
    return torch.load(file, map_location="cpu", weights_only=False)


@torch.no_grad()
def validation_loss(
    model: nn.Module, cfg: TrainConfig, rank: int = 0, world: int = 1,
    stats: DataStats | None = None,
) -> dict[str, float]:
    """Loss on held-out shards at fixed t and eps (the same for every trial), overall and per
    t-bin."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(VAL_SEED)
    batch_size = min(256, cfg.val_samples)
    sums = torch.zeros(2 * (len(T_BINS) - 1) + 2, dtype=torch.float64)
    for i, batch in enumerate(eval_batches(list(cfg.val_urls), batch_size, limit=cfg.val_samples,
                                           stats=stats)):
        # Draw t and eps for every batch on every rank so the draws do not depend on world size.
        t = sample_timesteps(batch.image.shape[0], cfg.timestep_sampling, gen)
        eps = torch.randn(batch.image.shape, generator=gen)
        if i % world != rank:
            continue
        losses = flow_loss(model, batch.image, batch.text, batch.mask, t, eps).double()
        sums[0] += losses.sum()
        sums[1] += losses.numel()
        bins = torch.bucketize(t, torch.tensor(T_BINS[1:-1]))
        for b in range(len(T_BINS) - 1):
            sel = bins == b
            sums[2 + 2 * b] += losses[sel].sum()
            sums[3 + 2 * b] += sel.sum()
    if world > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    model.train(was_training)
    if sums[1] == 0:
        return {}
    out = {"val_loss": float(sums[0] / sums[1])}
    for b in range(len(T_BINS) - 1):
        if sums[3 + 2 * b] > 0:
            out[f"val_loss_t{b}"] = float(sums[2 + 2 * b] / sums[3 + 2 * b])
    return out


def train(cfg: TrainConfig, report: Report,
          resume_from: str | Path | None = None) -> dict[str, float]:
    """Train one DiT for `cfg.steps` optimizer steps; returns the final metrics (also reported)."""
    rank, world = _distributed()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by {world} workers")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = DiT(cfg.model)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = _optimizer(model, cfg)
    schedule = LRSchedule(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.schedule, cfg.cooldown_fraction)
    state = _State()
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = _State(**saved["state"])
        torch.set_rng_state(saved["torch_rng"])
        np.random.set_state(saved["numpy_rng"])

    counts = parameter_count(cfg.model)
    tokens_per_sample = cfg.model.image_tokens
    fwd = forward_flops(cfg.model)
    local_batch = cfg.batch_size // world
    stats = DataStats(samples=0, skipped=0, epochs=0.0)
    data = train_batches(list(cfg.train_urls), local_batch, seed=cfg.seed, rank=rank,
                         world_size=world, start_batch=state.step, stats=stats)

    def metrics_now(loss: float) -> dict[str, float]:
        tokens = state.samples * tokens_per_sample
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
            "tokens_per_s": tokens / state.train_seconds if state.train_seconds else 0.0,
            "model_flops_per_s": 3.0 * fwd * state.samples / state.train_seconds
            if state.train_seconds else 0.0,
            "data_skipped": stats.skipped,
        }

    net.train()
    loss_value = float("nan")
    window: list[float] = []
    while state.step < cfg.steps:
        started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = schedule(state.step)
        batch = next(data)
        gen = _step_generator(cfg.seed, rank, state.step)
        t = sample_timesteps(batch.image.shape[0], cfg.timestep_sampling, gen)
        eps = torch.randn(batch.image.shape, generator=gen)
        mask = drop_captions(batch.mask, cfg.caption_dropout, gen)
        loss = flow_loss(net, batch.image, batch.text, mask, t, eps).mean()
        if cfg.nan_loss_at_step is not None and state.step + 1 >= cfg.nan_loss_at_step:
            loss = loss * float("nan")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_value = float(_all_mean(loss.detach().clone(), world))
        state.step += 1
        state.samples += cfg.batch_size
        state.train_seconds += time.perf_counter() - started
        window.append(loss_value)
        state.loss_ema = (loss_value if state.loss_ema is None
                          else cfg.ema_alpha * state.loss_ema + (1 - cfg.ema_alpha) * loss_value)

        if not math.isfinite(loss_value):
            report({**metrics_now(loss_value), "diverged": 1.0, "final": 1.0}, None)
            return {**metrics_now(loss_value), "diverged": 1.0}
        last = state.step == cfg.steps
        if state.step % cfg.report_every and not last:
            continue
        metrics = metrics_now(float(np.mean(window)))
        window.clear()
        if last and cfg.val_urls:
            metrics.update(validation_loss(model, cfg, rank, world))
        if last:
            metrics.update(evaluate(model, cfg, rank, world))
            metrics["final"] = 1.0
        checkpoint = None
        wants_ckpt = last or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0)
        if wants_ckpt and rank == 0:
            checkpoint = _save_checkpoint(model, opt, state, cfg)
        try:
            report(metrics, checkpoint)
        finally:
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
        if last:
            return metrics
    # Resumed from a checkpoint taken at the final step: nothing left to train.
    metrics = {**metrics_now(state.loss_ema if state.loss_ema is not None else loss_value),
               "final": 1.0}
    if cfg.val_urls:
        metrics.update(validation_loss(model, cfg, rank, world))
    metrics.update(evaluate(model, cfg, rank, world))
    report(metrics, None)
    return metrics
