"""The training loop without Ray: it learns, reports, checkpoints, resumes, stops on divergence."""

import shutil
from dataclasses import replace

import pytest

from scaling.model import DiTConfig, ModelShape
from scaling.train import CHECKPOINT_FILE, TrainConfig, load_checkpoint, train


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
    assert load_checkpoint(tmp_path / "step20")["state"]["step"] == 20
    resumed, resumed_reports = run(cfg, resume=tmp_path / "step20")
    assert [m["step"] for m, _ in resumed_reports] == [30, 40]
    assert resumed_reports[-1][0]["tokens"] == full_reports[-1][0]["tokens"]
    # Same weights and optimizer state at step 20, same t/eps draws: only the data order differs.
    assert resumed["loss_ema"] == pytest.approx(full["loss_ema"], rel=0.1)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=0.05)


def test_divergence_stops_early_and_says_where(config):
    cfg = replace(config, lr=1e8, grad_clip=0.0, steps=200, warmup_steps=0)
    final, reports = run(cfg)
    assert final["diverged"] == 1.0
    assert final["step"] < 200
    assert reports[-1][0]["diverged"] == 1.0


def test_bad_configs(config):
    with pytest.raises(ValueError, match="steps=0"):
        replace(config, steps=0)
    with pytest.raises(ValueError, match="train_urls is empty"):
        replace(config, train_urls=())
