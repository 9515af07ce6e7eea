"""Rectified flow: the training objective and the probability-flow sampler.

x_t = (1 - t) * x0 + t * eps, with t in [0, 1] (t = 0 is data, t = 1 is noise). The model predicts
the velocity v = dx_t/dt = eps - x0 and is trained with the mean squared error against it, as in
the paper.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

TimestepSampling = Literal["uniform", "logit_normal"]


def sample_timesteps(
    n: int, kind: TimestepSampling, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """`n` timesteps in (0, 1): uniform, or logit-normal(0, 1) (denser mid-way, as SD3)."""
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    raise ValueError(f"timestep sampling {kind!r} is not one of 'uniform', 'logit_normal'")


def interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps, with t broadcast over the non-batch dimensions."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * eps


def flow_loss(
    model: nn.Module, x0: Tensor, text: Tensor, mask: Tensor, t: Tensor, eps: Tensor
) -> Tensor:
    """Per-sample rectified-flow loss [B]: mean over pixels of (v_theta(x_t, t) - (eps - x0))^2."""
    v = model(interpolate(x0, eps, t), t, text, mask)
    return (v.float() - (eps - x0)).pow(2).flatten(1).mean(1)


@torch.no_grad()
def euler_sample(
    model: nn.Module,
    noise: Tensor,
    text: Tensor,
    mask: Tensor,
    steps: int,
    cfg_scale: float = 1.0,
) -> Tensor:
    """Integrate the probability-flow ODE dx/dt = v from t = 1 (noise) to t = 0 in `steps` Euler
    steps.

    With cfg_scale != 1, classifier-free guidance mixes the conditional velocity with the one for a
    dropped caption (mask all False): v = v_uncond + s * (v_cond - v_uncond).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    x = noise
    ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    null_mask = torch.zeros_like(mask)
    for t_now, t_next in zip(ts[:-1], ts[1:], strict=True):
        t = t_now.expand(x.shape[0])
        v = model(x, t, text, mask).float()
        if cfg_scale != 1.0:
            v_uncond = model(x, t, text, null_mask).float()
            v = v_uncond + cfg_scale * (v - v_uncond)
        x = x + (t_next - t_now) * v
    return x


def drop_captions(mask: Tensor, probability: float, generator: torch.Generator | None = None
                  ) -> Tensor:
    """The text mask with each sample's caption dropped (all False) with `probability`.

    Training with dropped captions teaches the model the unconditional velocity that classifier-
    free guidance (`euler_sample(cfg_scale=...)`) extrapolates away from.
    """
    if not 0 <= probability < 1:
        raise ValueError(f"caption dropout {probability} is not in [0, 1)")
    if probability == 0:
        return mask
    keep = torch.rand(mask.shape[0], generator=generator, device=mask.device) >= probability
    return mask & keep[:, None]
