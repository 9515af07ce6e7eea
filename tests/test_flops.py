"""Analytic forward FLOPs against torch's FlopCounterMode; trial planning in both conventions."""

from dataclasses import replace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from scaling.flops import compute_6nd, compute_exact, forward_flops, plan_trial
from scaling.model import DiT, DiTConfig, ModelShape, parameter_count

BASE = DiTConfig(ModelShape(2, 32, 2), image_size=16, patch_size=4, text_dim=24, text_len=6)


def counted_forward_flops(cfg: DiTConfig, batch: int = 2) -> float:
    model = DiT(cfg)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim)
    mask = torch.ones(batch, cfg.text_len, dtype=torch.bool)
    # The math backend runs attention as matmuls the counter sees (CPU fused kernels it does not).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, torch.rand(batch), text, mask)
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("design", ["in_context", "cross_attention"])
@pytest.mark.parametrize("shape, image, patch, text_len", [
    (ModelShape(1, 16, 1), 16, 4, 6),
    (ModelShape(2, 48, 3), 32, 4, 14),
    (ModelShape(3, 64, 2), 32, 2, 1),
    (ModelShape(4, 96, 2), 16, 8, 32),
])
def test_forward_flops_match_the_counter(design, shape, image, patch, text_len):
    cfg = replace(BASE, shape=shape, conditioning=design, image_size=image, patch_size=patch,
                  text_len=text_len)
    counted = counted_forward_flops(cfg)
    assert forward_flops(cfg) == pytest.approx(counted, rel=0.02)


def test_attention_and_condition_tokens_are_counted():
    short, long = replace(BASE, text_len=1), replace(BASE, text_len=64)
    assert forward_flops(long) > forward_flops(short) * 1.5


def test_plan_6nd():
    cfg = BASE
    n = parameter_count(cfg).total
    budget = 6.0 * n * 64 * cfg.image_tokens * 10.5  # 10.5 steps of batch 64
    plan = plan_trial(cfg, budget, batch_size=64)
    assert plan.steps == 11
    assert plan.samples == 11 * 64 and plan.tokens == plan.samples * cfg.image_tokens
    assert plan.compute_6nd == compute_6nd(n, plan.tokens) >= budget
    assert plan.compute_exact == compute_exact(cfg, plan.samples)
    assert plan.params == n


def test_plan_exact():
    budget = 3.0 * forward_flops(BASE) * 640
    plan = plan_trial(BASE, budget, batch_size=64, convention="exact")
    assert plan.steps == 10 and plan.compute_exact == pytest.approx(budget)


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": -1.0, "batch_size": 8}, "budget=-1.0 is not a positive number of FLOPs"),
    ({"budget": 1e12, "batch_size": 0}, "batch_size=0"),
    ({"budget": 1e12, "batch_size": 8, "convention": "5ND"}, "convention '5ND'"),
])
def test_bad_plans(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_trial(BASE, **kwargs)
