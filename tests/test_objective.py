"""Rectified flow: interpolation, the velocity target, timestep sampling and the Euler sampler."""

import pytest
import torch
from torch import nn

from scaling.objective import euler_sample, flow_loss, interpolate, sample_timesteps


class ExactVelocity(nn.Module):
    """The exact velocity field for data concentrated at one point x0: v = (x_t - x0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, text, mask):
        return (x - self.x0) / t.view(-1, 1, 1, 1).clamp_min(1e-6)


def test_interpolation_endpoints():
    x0, eps = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert torch.equal(interpolate(x0, eps, torch.tensor([0.0, 1.0]))[0], x0[0])
    assert torch.equal(interpolate(x0, eps, torch.tensor([0.0, 1.0]))[1], eps[1])


def test_loss_is_zero_for_the_true_velocity():
    x0 = torch.randn(1, 3, 4, 4)
    eps = torch.randn(4, 3, 4, 4)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9])
    loss = flow_loss(ExactVelocity(x0), x0.expand(4, -1, -1, -1), None, None, t, eps)
    assert loss.shape == (4,)
    assert torch.allclose(loss, torch.zeros(4), atol=1e-10)


def test_euler_sampler_transports_noise_to_data():
    x0 = torch.randn(1, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4)
    text, mask = torch.zeros(2, 1, 8), torch.ones(2, 1, dtype=torch.bool)
    out = euler_sample(ExactVelocity(x0), noise, text, mask, steps=10)
    assert torch.allclose(out, x0.expand(2, -1, -1, -1), atol=1e-5)


def test_timestep_distributions():
    g = torch.Generator().manual_seed(0)
    u = sample_timesteps(20000, "uniform", g)
    ln = sample_timesteps(20000, "logit_normal", g)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert 0 < ln.min() and ln.max() < 1 and abs(ln.median() - 0.5) < 0.01
    assert ln.std() < u.std()  # logit-normal concentrates mid-way
    with pytest.raises(ValueError, match="'beta'"):
        sample_timesteps(3, "beta")
