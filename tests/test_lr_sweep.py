"""LR by size: the spec's rule per trial, the sweep phase, and its proposer (no cluster needed)."""

import math

import pytest

from scaling.model import DiTConfig, ModelShape
from search.grid import GridError, GridProposer, fixed_grid
from search.lr_sweep import LRSweepProposer, spec_rule, sweep_configs
from search.proposal import FINISHED
from search.spec import parse_spec
from search.study.tune_searcher import TuneSearcher
from search.trial import StudyContext, parallel_for, train_config

TEMPLATE = DiTConfig(ModelShape(1, 16, 1), image_size=16, text_dim=384, text_len=14)


def study(**trainer):
    return parse_spec({"name": "s", "budgets": [1e11, 4e11], "model": {"sizes": [3e4, 1e5, 3e5]},
                       "trainer": {"batch_size": 16, "lr": 2e-3, "warmup_steps": 10, **trainer}})


def context(spec) -> StudyContext:
    return StudyContext(study="s", study_run_id="0" * 32, tracking_uri="sqlite:///x.db",
                        storage_path="/tmp/x", spec=spec.model_dump(mode="json"),
                        template=TEMPLATE, train_urls=("a.tar",), val_urls=("b.tar",))


def test_trials_take_lr_and_warmup_from_the_rule_or_their_config():
    spec = study(lr_rule={"ref_width": 64, "lr_exponent": 1.0, "warmup_exponent": 1.0})
    trial = fixed_grid(spec, TEMPLATE)[-1]
    width = trial.shape.width
    cfg, params = train_config(context(spec), trial)
    assert cfg.lr == pytest.approx(2e-3 * 64 / width)
    assert cfg.warmup_steps == round(10 * width / 64)
    assert params["lr"] == f"{cfg.lr:.6g}" and params["phase"] == "study"
    cfg, params = train_config(context(spec), trial, {"lr": 5e-4, "warmup_steps": 3,
                                                      "phase": "lr_sweep"})
    assert (cfg.lr, cfg.warmup_steps, params["phase"]) == (5e-4, 3, "lr_sweep")


def test_fsdp_from_the_spec_threshold():
    spec = parse_spec({"name": "s", "budgets": [1e11, 4e11],
                       "resources": {"fsdp_min_params": 1e5}})
    assert parallel_for(99_999, spec) == "ddp" and parallel_for(100_000, spec) == "fsdp"
    assert parallel_for(10**9, study()) == "ddp"


def test_sweep_configs_cover_sizes_times_factors():
    spec = study(lr_sweep={"factors": [0.5, 1, 2]})
    grid = fixed_grid(spec, TEMPLATE)
    configs = sweep_configs(spec, TEMPLATE, grid)
    widths = sorted({c["width"] for c in configs})
    assert len(configs) == 3 * len(widths) and len(widths) == 3  # min, mid and max of the grid
    assert len({c["trial_key"] for c in configs}) == len(configs)
    assert all(c["phase"] == "lr_sweep" and c["budget"] == 1e11 for c in configs)
    rule = spec_rule(spec)
    assert sorted(c["lr"] / rule.lr(c["width"]) for c in configs if c["width"] == widths[0]) == \
        pytest.approx([0.5, 1, 2])
    assert sweep_configs(study(), TEMPLATE, grid) == []
    with pytest.raises(GridError, match="raise lr_sweep.budget"):
        sweep_configs(study(lr_sweep={"budget": 1e9}), TEMPLATE, grid)


def loss_at(config) -> float:
    """A loss surface whose best LR is 2e-3 x (64 / width)^0.5, inside the swept range."""
    best = 2e-3 * math.sqrt(64 / config["width"])
    return 1.0 + 0.1 * math.log(config["lr"] / best) ** 2


def test_searcher_sweeps_then_serves_the_grid_with_the_fitted_rule(tmp_path):
    spec = study(lr_sweep={"factors": [0.5, 1, 2, 4]})
    grid = fixed_grid(spec, TEMPLATE)
    sweep = sweep_configs(spec, TEMPLATE, grid)
    fitted = []
    searcher = LRSweepProposer(sweep, GridProposer(grid), spec_rule(spec), "val_loss",
                               on_rule=lambda rule, points, error: fitted.append((rule, error)))
    issued = [searcher.suggest(f"t{i}") for i in range(len(sweep))]
    assert [c["trial_key"] for c in issued] == [c["trial_key"] for c in sweep]
    assert searcher.suggest("early") is None  # the grid waits for the sweep

    # Save mid-sweep, restore into a fresh searcher (a restarted driver) and finish there.
    for i, config in enumerate(issued[:-1]):
        searcher.on_trial_complete(f"t{i}", {"val_loss": loss_at(config)})
    TuneSearcher(searcher).save(str(tmp_path / "searcher.pkl"))  # as Tune saves it
    restored = LRSweepProposer(sweep, GridProposer(grid), spec_rule(spec), "val_loss",
                               on_rule=lambda rule, points, error: fitted.append((rule, error)))
    TuneSearcher(restored).restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("still-early") is None
    restored.on_trial_complete(f"t{len(issued) - 1}", {"val_loss": loss_at(issued[-1])})

    served = []
    while (config := restored.suggest(f"g{len(served)}")) != FINISHED:
        served.append(config)
    assert len(served) == len(grid) and len(fitted) == 1
    assert sorted({c["width"] for c in sweep}) == [24, 56, 96]
    rule, error = fitted[0]
    assert error is None
    assert rule.lr_exponent == pytest.approx(0.5, abs=0.05)
    for config in served:
        assert config["phase"] == "study"
        assert config["lr"] == pytest.approx(rule.lr(config["width"]))
        restored.on_trial_complete(config["trial_key"], {"val_loss": 1.0})


def test_a_sweep_where_everything_diverged_keeps_the_spec_rule():
    spec = study(lr_sweep={"factors": [1, 2, 4], "sizes": [1e5]})
    grid = fixed_grid(spec, TEMPLATE)
    sweep = sweep_configs(spec, TEMPLATE, grid)
    errors = []
    searcher = LRSweepProposer(sweep, GridProposer(grid), spec_rule(spec), "val_loss",
                               on_rule=lambda rule, points, error: errors.append(error))
    for i in range(len(sweep)):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", {"val_loss": float("nan"), "diverged": 1.0})
    searcher.on_trial_complete("t1", None, error=True)
    searcher.on_trial_complete("t2", {"loss": 1.0})  # no val_loss: failed before the end
    config = searcher.suggest("g0")
    assert config["lr"] == pytest.approx(spec_rule(spec).lr(config["width"]))
    assert "kept the spec's" in errors[0]


def test_bad_sweep_specs():
    from search.spec import SpecError

    with pytest.raises(SpecError, match="trainer.lr_sweep.factors"):
        study(lr_sweep={"factors": [1, 2]})
    with pytest.raises(SpecError, match=r"lr_sweep.factors\[1\]: -2 is not allowed"):
        study(lr_sweep={"factors": [1, -2, 3]})
