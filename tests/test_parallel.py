"""DDP and FSDP2 on 2 CPU workers (gloo) through a real Ray `TorchTrainer` running the service's
worker loop, with metrics in a real MLflow store; an FSDP trial interrupted and resumed from its
checkpoint continues the DDP trial's loss curve."""

from dataclasses import replace
from pathlib import Path

import pytest
import ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from scaling.model import DiTConfig, ModelShape
from scaling.train import CHECKPOINT_FILE, TrainConfig, load_checkpoint
from search.tracking import Tracking
from search.trial import _worker_loop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                                       "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(cluster, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    tracking = Tracking(f"sqlite:///{out / 'mlflow.db'}", str(out / "artifacts"))
    study = tracking.start_study_run("parallel", {})
    model = DiTConfig(ModelShape(2, 32, 1), image_size=tiny_data.image_size,
                      in_channels=tiny_data.channels, text_dim=tiny_data.text_dim,
                      text_len=tiny_data.text_len, patch_size=4)
    # Constant LR after warmup: the first 20 steps of a 20- and a 40-step run are the same.
    base = TrainConfig(model=model, steps=40, batch_size=16, micro_batch=4, lr=3e-3,
                       warmup_steps=5, schedule="constant",
                       train_urls=tuple(tiny_data.urls("train")),
                       val_urls=tuple(tiny_data.urls("val")), report_every=10, val_samples=64,
                       threads=1)

    def fit(name: str, cfg: TrainConfig):
        run_id = tracking.trial_run("parallel", study, name, {"parallel": cfg.parallel}, 1.0)
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"train": cfg, "run_id": run_id, "tracking_uri": tracking.uri},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            # The same name resumes the same Train run from its latest checkpoint.
            run_config=RunConfig(name=name.split(":")[0], storage_path=str(out / "ray")))
        return trainer.fit(), run_id

    ddp = fit("ddp", base)
    half = fit("fsdp:first-half", replace(base, parallel="fsdp", steps=20))
    resumed = fit("fsdp:resumed", replace(base, parallel="fsdp"))
    return tracking, {"ddp": ddp, "half": half, "resumed": resumed}


def history(tracking, run_id, key):
    return {m.step: m.value for m in tracking.client.get_metric_history(run_id, key)}


def test_ddp_trains_on_two_workers_and_reports_throughput(runs):
    tracking, r = runs
    result, run_id = r["ddp"]
    assert result.error is None
    loss = history(tracking, run_id, "loss")
    assert sorted(loss) == [10, 20, 30, 40] and loss[40] < 0.9 * loss[10]
    for key in ("tokens_per_s", "model_flops_per_s", "mfu", "step_seconds"):
        assert all(v > 0 for v in history(tracking, run_id, key).values()), key
    assert "val_loss" in result.metrics
    assert tracking.client.get_run(run_id).data.tags["dit.status"] == "finished"


def test_fsdp_checkpoint_holds_the_whole_model(runs):
    _, r = runs
    result, _ = r["half"]
    with result.checkpoint.as_directory() as path:
        assert (Path(path) / CHECKPOINT_FILE).is_file()
        saved = load_checkpoint(path)
    assert saved["state"]["step"] == 20 and saved["data"]["world_size"] == 2
    # Gathered from both shards: whole tensors under the model's own names.
    assert saved["model"]["blocks.0.attn.q.weight"].shape == (32, 32)
    assert set(saved["optimizer"]["state"]) == set(saved["model"])


def test_resumed_fsdp_continues_the_ddp_curve(runs):
    tracking, r = runs
    (ddp, ddp_run), (resumed, resumed_run) = r["ddp"], r["resumed"]
    first = history(tracking, r["half"][1], "loss")
    assert sorted(first) == [10, 20]
    after = history(tracking, resumed_run, "loss")
    assert sorted(after) == [30, 40]  # picked up at step 20, not from scratch
    # Same data split, same draws, same weights: FSDP after a resume matches uninterrupted DDP
    # up to the order of float reductions.
    reference = history(tracking, ddp_run, "loss")
    for step in (10, 20):
        assert first[step] == pytest.approx(reference[step], rel=1e-4)
    for step in (30, 40):
        assert after[step] == pytest.approx(reference[step], rel=1e-4)
    assert resumed.metrics["val_loss"] == pytest.approx(ddp.metrics["val_loss"], rel=1e-4)
    assert resumed.metrics["loss_ema"] == pytest.approx(ddp.metrics["loss_ema"], rel=1e-4)
