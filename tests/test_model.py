"""The DiT in both conditioning designs: shapes, parameter counting, masking, autocast."""

from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

from scaling.model import DiT, DiTConfig, ModelShape, gelu_tanh, parameter_count, reference_ops

BASE = DiTConfig(ModelShape(2, 32, 2), image_size=16, patch_size=4, text_dim=24, text_len=6)
DESIGNS = ("in_context", "cross_attention")


def inputs(cfg: DiTConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.rand(batch, generator=g)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    mask = torch.ones(batch, cfg.text_len, dtype=torch.bool)
    mask[:, cfg.text_len // 2:] = False
    return x, t, text, mask


def randomised(cfg: DiTConfig) -> DiT:
    """A model whose zero-initialised head and gates are perturbed, so outputs depend on inputs."""
    torch.manual_seed(1)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("shape", [ModelShape(1, 16, 1), ModelShape(2, 48, 3),
                                   ModelShape(3, 64, 1)])
@pytest.mark.parametrize("patch, channels, text_len", [(2, 3, 5), (4, 4, 16), (8, 3, 1)])
def test_parameter_count_matches_the_module(design, shape, patch, channels, text_len):
    cfg = replace(BASE, shape=shape, conditioning=design, patch_size=patch, in_channels=channels,
                  text_len=text_len)
    counted = parameter_count(cfg)
    assert counted.total == sum(p.numel() for p in DiT(cfg).parameters())
    assert counted.total == counted.embedding + counted.non_embedding
    model = DiT(cfg)
    stack = sum(p.numel() for m in (model.blocks, model.norm) for p in m.parameters())
    assert counted.non_embedding == stack


@pytest.mark.parametrize("design", DESIGNS)
def test_forward_backward_shapes_and_finite(design):
    cfg = replace(BASE, conditioning=design)
    model = randomised(cfg)
    x, t, text, mask = inputs(cfg)
    out = model(x, t, text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("design", DESIGNS)
def test_padded_text_does_not_change_the_output(design):
    cfg = replace(BASE, conditioning=design)
    model = randomised(cfg).eval()
    x, t, text, mask = inputs(cfg)
    changed = text.clone()
    changed[~mask] = 100 * torch.randn_like(changed[~mask])
    assert torch.allclose(model(x, t, text, mask), model(x, t, changed, mask), atol=1e-5)
    real = text.clone()
    real[:, 0] += 1.0  # a real token does change it
    assert not torch.allclose(model(x, t, text, mask), model(x, t, real, mask), atol=1e-4)


@pytest.mark.parametrize("design", DESIGNS)
def test_dropped_caption_is_well_defined(design):
    cfg = replace(BASE, conditioning=design)
    model = randomised(cfg).eval()
    x, t, text, mask = inputs(cfg)
    out = model(x, t, text, torch.zeros_like(mask))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("design", DESIGNS)
def test_zero_initialised_head_and_timestep_dependence(design):
    cfg = replace(BASE, conditioning=design)
    x, t, text, mask = inputs(cfg)
    fresh = DiT(cfg)
    assert torch.count_nonzero(fresh(x, t, text, mask)) == 0  # DiT's zero init
    if design == "cross_attention":  # adaLN-Zero: gates start closed for every timestep
        assert all(torch.count_nonzero(b.table[2::3]) == 0 for b in fresh.blocks)
        assert torch.count_nonzero(fresh.adaln[1].weight) == 0
    model = randomised(cfg).eval()
    assert not torch.allclose(model(x, t, text, mask), model(x, 1 - t, text, mask), atol=1e-4)


@pytest.mark.parametrize("design", DESIGNS)
def test_bf16_autocast_forward(design):
    cfg = replace(BASE, conditioning=design)
    model = randomised(cfg)
    x, t, text, mask = inputs(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, text, mask)
    ref = model(x, t, text, mask)
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 1e-3


def test_patchify_roundtrip():
    model = DiT(BASE)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.unpatchify(model.patchify(x)), x)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 30}, "not divisible by patch_size"),
    ({"conditioning": "film"}, "conditioning 'film'"),
    ({"text_len": 0}, "text_len=0"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        replace(BASE, **kwargs)
    with pytest.raises(ValueError, match="width=30 is not divisible by heads=4"):
        ModelShape(1, 30, 4)


@pytest.mark.parametrize("design", DESIGNS)
def test_fused_projections_and_cpu_gelu_compute_the_reference_function(design):
    # The default layers (q/k/v in one matmul, the sigmoid-form GELU) and the plain ones
    # (`reference_ops`) share parameters and differ by float rounding only, values and gradients.
    cfg = replace(BASE, conditioning=design)
    model = randomised(cfg)
    x, t, text, mask = inputs(cfg)
    results = []
    for context in (reference_ops, nullcontext):
        model.zero_grad(set_to_none=True)
        with context():
            out = model(x, t, text, mask)
        out.pow(2).mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref_out, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cpu_gelu_is_the_tanh_approximation():
    x = torch.linspace(-12, 12, 10001, dtype=torch.float32, requires_grad=True)
    y = gelu_tanh(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    (ref_g,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(g, ref_g)  # torch's own backward kernel
    # Other dtypes take F.gelu itself.
    xb = x.detach().bfloat16()
    assert torch.equal(gelu_tanh(xb), torch.nn.functional.gelu(xb, approximate="tanh"))
