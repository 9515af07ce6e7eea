"""Evaluation at the end of a trial, beyond the validation loss: the loss on an out-of-distribution
set (overall and per t-bin, at the same fixed t and noise seeds) and the FID of samples drawn with
the Euler probability-flow sampler and classifier-free guidance.

`validation_loss` measures the loss on held-out shards at fixed t and noise seeds, the same for
every trial. `train` calls it and then `evaluate` once, at the end, when `TrainConfig.eval` is set;
both read the configuration through `HeldOut` (which `TrainConfig` satisfies), so this module
needs nothing from the training loop. The loss parts run on every rank (each takes its share of the
batches); FID runs on rank 0 only, while the others wait at the next report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from scaling.data import DataStats, eval_batches
from scaling.objective import euler_sample, flow_loss, sample_timesteps
from scaling.precision import autocast, on_device

FID_NOISE_SEED = 20241011  # the same starting noise for every trial's FID samples
VAL_SEED = 20241010  # one fixed seed for every trial, so validation losses are comparable
VAL_CHUNK = 256  # validation draws t and eps per chunk of this many samples, whatever the batch
T_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FIDConfig:
    """FID of `samples` generated images against cached statistics of real ones.

    Captions (their cached text features) come from the first `samples` samples of
    `caption_urls`; reference images are the first `reference_samples` images of
    `reference_urls` (the same held-out split), identified in the statistics cache by `dataset`
    (content hash and split). Latent datasets are decoded by `autoencoder` (a diffusers
    `AutoencoderKL` path or hub name) after dividing by `latent_scale`.
    """

    caption_urls: tuple[str, ...]
    reference_urls: tuple[str, ...]
    dataset: str
    cache_dir: str
    extractor: str = "inception"
    extractor_path: str | None = None
    samples: int = 256
    reference_samples: int = 1024
    steps: int = 20  # Euler steps of the probability-flow ODE
    cfg_scale: float = 1.5  # 1: no guidance
    batch_size: int = 64
    autoencoder: str | None = None
    latent_scale: float = 1.0

    def __post_init__(self) -> None:
        for name, least in (("samples", 2), ("reference_samples", 2), ("steps", 1),
                            ("batch_size", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"fid.{name}={getattr(self, name)} must be at least {least}")
        if not self.caption_urls or not self.reference_urls:
            raise ValueError("fid needs caption_urls and reference_urls (a held-out split)")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate at the end of a trial besides the validation loss."""

    ood_urls: tuple[str, ...] = ()
    ood_samples: int = 512
    fid: FIDConfig | None = None


class HeldOut(Protocol):
    """What the evaluation reads of a trial's configuration (a dataclass, e.g. `TrainConfig`)."""

    val_urls: tuple[str, ...]
    val_samples: int
    micro_batch: int | None
    timestep_sampling: str
    precision: str
    eval: EvalConfig | None


@torch.no_grad()
def validation_loss(
    model: nn.Module, cfg: HeldOut, rank: int = 0, world: int = 1,
    stats: DataStats | None = None,
) -> dict[str, float]:
    """Loss on held-out shards at fixed t and eps (the same for every trial), overall and per
    t-bin, in the training precision. `model` must run without collectives (see
    `scaling.train.evaluation_model`); ranks share the chunks and sum their results."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(VAL_SEED)
    chunk = min(VAL_CHUNK, cfg.val_samples)
    step = min(chunk, cfg.micro_batch or chunk)
    bins_at = torch.tensor(T_BINS[1:-1])
    sums = torch.zeros(2 * (len(T_BINS) - 1) + 2, dtype=torch.float64)
    for i, batch in enumerate(eval_batches(list(cfg.val_urls), chunk, limit=cfg.val_samples,
                                           stats=stats)):
        # Draw t and eps for every chunk on every rank so the draws do not depend on world size.
        t = sample_timesteps(batch.image.shape[0], cfg.timestep_sampling, gen)
        eps = torch.randn(batch.image.shape, generator=gen)
        if i % world != rank:
            continue
        for start in range(0, t.shape[0], step):
            part = slice(start, start + step)
            with autocast(device, cfg.precision):
                losses = flow_loss(model, *on_device(device, batch.image[part], batch.text[part],
                                               batch.mask[part], t[part], eps[part]))
            losses = losses.double().cpu()
            sums[0] += losses.sum()
            sums[1] += losses.numel()
            bins = torch.bucketize(t[part], bins_at)
            for b in range(len(T_BINS) - 1):
                sel = bins == b
                sums[2 + 2 * b] += losses[sel].sum()
                sums[3 + 2 * b] += sel.sum()
    if world > 1:
        sums = sums.to(device)  # NCCL reduces device tensors only
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sums = sums.cpu()
    model.train(was_training)
    if sums[1] == 0:
        return {}
    out = {"val_loss": float(sums[0] / sums[1])}
    for b in range(len(T_BINS) - 1):
        if sums[3 + 2 * b] > 0:
            out[f"val_loss_t{b}"] = float(sums[2 + 2 * b] / sums[3 + 2 * b])
    return out


def ood_loss(model: nn.Module, cfg: HeldOut, rank: int = 0, world: int = 1
             ) -> dict[str, float]:
    """Validation loss on the out-of-distribution shards, as `ood_loss` and `ood_loss_t{b}`."""
    ev = cfg.eval
    if ev is None or not ev.ood_urls:
        return {}
    shifted = replace(cfg, val_urls=ev.ood_urls, val_samples=ev.ood_samples)
    return {k.replace("val_", "ood_", 1): v
            for k, v in validation_loss(model, shifted, rank, world).items()}


def _captions(urls: tuple[str, ...], count: int, batch_size: int
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in eval_batches(list(urls), batch_size, limit=count):
        yield batch.text, batch.mask


class _Decoder:
    """Model output [B, C, h, w] -> uint8 images [B, H, W, 3] (latents go through the VAE)."""

    def __init__(self, autoencoder: str | None, latent_scale: float):
        self.vae = None
        self.scale = latent_scale
        if autoencoder:
            from scaling.prepare import load_autoencoder

            self.vae = load_autoencoder(autoencoder)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if self.vae is not None:
            x = self.vae.decode(x / self.scale).sample
        pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()


def generate(model: nn.Module, fid: FIDConfig) -> Iterator[np.ndarray]:
    """Batches of generated uint8 images [B, H, W, 3], one per caption, from fixed noise."""
    decode = _Decoder(fid.autoencoder, fid.latent_scale)
    gen = torch.Generator().manual_seed(FID_NOISE_SEED)
    cfg = model.cfg
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    for text, mask in _captions(fid.caption_urls, fid.samples, fid.batch_size):
        noise = torch.randn((text.shape[0], *shape), generator=gen)
        x0 = euler_sample(model, noise, text, mask, fid.steps, fid.cfg_scale)
        yield decode(x0)


@torch.no_grad()
def fid_score(model: nn.Module, fid: FIDConfig) -> dict[str, float]:
    """FID of the model's samples against the cached reference statistics, and its cost."""
    from scaling.fid import Stats, features, frechet, load_extractor, reference_stats

    started = time.perf_counter()
    was_training = model.training
    model.eval()
    extractor = load_extractor(fid.extractor, fid.extractor_path)
    reference = reference_stats(list(fid.reference_urls), fid.reference_samples, extractor,
                                cache_dir=fid.cache_dir, dataset=fid.dataset,
                                batch_size=fid.batch_size)
    with torch.random.fork_rng():  # clean-fid draws (unused) latents from the global generator
        feats = features(generate(model, fid), fid.samples, extractor, fid.batch_size)
    model.train(was_training)
    return {"fid": frechet(Stats.of(feats), reference), "fid_samples": float(len(feats)),
            "fid_seconds": time.perf_counter() - started}


def evaluate(model: nn.Module, cfg: HeldOut, rank: int = 0, world: int = 1
             ) -> dict[str, float]:
    """The end-of-trial evaluation of `cfg.eval` (OOD loss, FID), with its wall time."""
    if cfg.eval is None:
        return {}
    started = time.perf_counter()
    out = ood_loss(model, cfg, rank, world)
    if cfg.eval.fid is not None and rank == 0:
        out.update(fid_score(model, cfg.eval.fid))
    out["eval_seconds"] = time.perf_counter() - started
    return out
