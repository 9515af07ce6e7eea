"""The training loop without Ray: it learns, reports, checkpoints, resumes, stops on divergence."""

import shutil
from dataclasses import replace

import pytest
import torch
from torch import nn

from scaling.model import DiT, DiTConfig, ModelShape, reference_ops
from scaling.train import CHECKPOINT_FILE, TrainConfig, clip_gradients, load_checkpoint, train


class Stop(Exception):
    pass


@pytest.fixture
def config(tiny_data) -> TrainConfig:
    model = DiTConfig(ModelShape(1, 32, 1), image_size=tiny_data.image_size,
                      in_channels=tiny_data.channels, text_dim=tiny_data.text_dim,
                      text_len=tiny_data.text_len, patch_size=4)
    return TrainConfig(model=model, steps=40, batch_size=16, lr=3e-3, warmup_steps=5,
                       train_urls=tuple(tiny_data.urls("train")),
                       val_urls=tuple(tiny_data.urls("val")), report_every=10, val_samples=64,
                       threads=1)


def run(cfg, resume=None, stop_at=None, keep=None):
    reports = []

    def report(metrics, checkpoint_dir):
        reports.append((dict(metrics), checkpoint_dir is not None))
        if checkpoint_dir is not None and keep is not None:
            shutil.copytree(checkpoint_dir, keep / f"step{int(metrics['step'])}")
        if stop_at is not None and metrics["step"] >= stop_at:
            raise Stop

    try:
        final = train(cfg, report, resume_from=resume)
    except Stop:
        final = None
    return final, reports


def test_learns_and_reports_every_interval(config):
    final, reports = run(config)
    steps = [m["step"] for m, _ in reports]
    assert steps == [10, 20, 30, 40]
    first, last = reports[0][0], reports[-1][0]
    assert last["loss_ema"] < 0.8 * first["loss"]  # it really learns
    assert last["final"] == 1.0 and "val_loss" in last and "val_loss_t0" in last
    assert last["tokens"] == 40 * 16 * config.model.image_tokens
    assert last["flops_6nd"] > 0 and last["flops_exact"] > 0
    assert reports[-1][1] and not any(c for _, c in reports[:-1])  # checkpoint only at the end
    assert final["val_loss"] == last["val_loss"]


def test_validation_loss_is_fixed_for_fixed_weights(config):
    a, _ = run(replace(config, steps=5, report_every=5))
    b, _ = run(replace(config, steps=5, report_every=5))
    assert a["val_loss"] == b["val_loss"]  # same seeds, same t and eps, same data


def test_resume_continues_the_same_curve(config, tmp_path):
    cfg = replace(config, checkpoint_every=20)
    full, full_reports = run(cfg)
    _, part = run(cfg, stop_at=20, keep=tmp_path)
    assert (tmp_path / "step20" / CHECKPOINT_FILE).is_file()
    saved = load_checkpoint(tmp_path / "step20")
    assert saved["state"]["step"] == 20 and saved["data"]["start_batch"] == 20
    assert {"torch", "numpy", "python"} <= set(saved["rng"])
    resumed, resumed_reports = run(cfg, resume=tmp_path / "step20")
    assert [m["step"] for m, _ in resumed_reports] == [30, 40]
    assert resumed_reports[-1][0]["tokens"] == full_reports[-1][0]["tokens"]
    # Same weights, optimizer state, data position and t/eps draws: the same curve, report by
    # report, up to float noise.
    for (a, _), (b, _) in zip(full_reports[2:], resumed_reports, strict=True):
        for key in ("loss", "loss_ema", "lr", "samples", "flops_exact"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    # A run that learnt something else in between is told apart: the check is not vacuous.
    other, _ = run(replace(cfg, seed=1))
    assert other["loss_ema"] != pytest.approx(full["loss_ema"], rel=1e-3)


def test_a_branch_off_a_longer_run_trains_what_it_would_from_scratch(config, tmp_path):
    """A 24-step run with a cooldown restored from a 40-step trunk's checkpoint at its cooldown
    start (step 19 of 24 at cooldown_fraction 0.2) ends where the 24-step run from scratch does."""
    cfg = replace(config, schedule="constant_cooldown", cooldown_fraction=0.2)
    short = replace(cfg, steps=24)
    start = short.lr_schedule().cooldown_start
    assert start == 19 and cfg.lr_schedule().cooldown_start == 32
    _, trunk_reports = run(replace(cfg, branch_points=(start,)), keep=tmp_path)
    assert [(m["step"], c) for m, c in trunk_reports] == [
        (10, False), (19, True), (20, False), (30, False), (40, True)]
    scratch, _ = run(short)
    branch, branch_reports = run(short, resume=tmp_path / f"step{start}")
    assert [m["step"] for m, _ in branch_reports] == [20, 24]
    for key in ("loss_ema", "val_loss", "tokens", "flops_exact"):
        assert branch[key] == pytest.approx(scratch[key], rel=1e-5), key
    # the trunk's own end, trained at peak LR past step 19, is somewhere else
    assert trunk_reports[-1][0]["loss_ema"] != pytest.approx(scratch["loss_ema"], rel=1e-3)
    with pytest.raises(ValueError, match=r"branch_points \[40\] are not between"):
        replace(cfg, branch_points=(40,))


def test_micro_batches_accumulate_to_the_same_step(config):
    whole, _ = run(replace(config, steps=20))
    parts, _ = run(replace(config, steps=20, micro_batch=4))
    for key in ("loss_ema", "val_loss"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-4)
    with pytest.raises(ValueError, match="micro_batch=5 does not divide the 16 samples"):
        run(replace(config, micro_batch=5))


def test_bf16_autocast_trains_like_fp32(config):
    fp32, _ = run(config)
    bf16, reports = run(replace(config, precision="bf16"))
    assert bf16["loss_ema"] < 0.8 * reports[0][0]["loss"]
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.05)


def test_throughput_is_reported_every_interval(config):
    _, reports = run(replace(config, steps=20, peak_flops=1e11))
    for metrics, _ in reports:
        assert metrics["tokens_per_s"] > 0 and metrics["step_seconds"] > 0
        assert metrics["model_flops_per_s"] == pytest.approx(
            metrics["tokens_per_s"] / config.model.image_tokens * metrics["flops_exact"]
            / metrics["samples"])
        assert metrics["mfu"] == pytest.approx(metrics["model_flops_per_s"] / 1e11)
        assert metrics["peak_flops"] == 1e11
    _, detected = run(replace(config, steps=10))
    assert detected[-1][0]["peak_flops"] > 1e8  # measured matmul rate of this CPU


def test_divergence_stops_early_and_says_where(config):
    cfg = replace(config, lr=1e8, grad_clip=0.0, steps=200, warmup_steps=0)
    final, reports = run(cfg)
    assert final["diverged"] == 1.0
    assert final["step"] < 200
    assert 1 <= final["diverged_step"] <= final["step"]
    assert reports[-1][0]["diverged"] == 1.0


def test_bad_configs(config):
    with pytest.raises(ValueError, match="steps=0"):
        replace(config, steps=0)
    with pytest.raises(ValueError, match="train_urls is empty"):
        replace(config, train_urls=())
    with pytest.raises(ValueError, match="precision 'fp16'"):
        replace(config, precision="fp16")
    with pytest.raises(ValueError, match="parallel 'zero'"):
        replace(config, parallel="zero")


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_gradient_clipping_matches_torch(max_norm):
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DiT(DiTConfig(ModelShape(1, 16, 1), image_size=8, text_dim=8, text_len=3))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        models.append(model)
    ours = clip_gradients(models[0], max_norm)
    theirs = nn.utils.clip_grad_norm_(models[1].parameters(), max_norm)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_the_reference_ops_train_the_same_curve(config):
    # The step's fused / CPU-specific paths change float rounding only, not what is trained.
    cfg = replace(config, steps=20)
    fast, fast_reports = run(cfg)
    with reference_ops():
        plain, plain_reports = run(cfg)
    for (a, _), (b, _) in zip(fast_reports, plain_reports, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert fast["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-4)
