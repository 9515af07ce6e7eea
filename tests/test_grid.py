"""The fixed isoFLOP grid and the proposer that serves it."""

import pytest

from scaling.model import DiTConfig, ModelShape
from search.grid import (
    GridError,
    GridProposer,
    TrialSpec,
    budget_trials,
    fixed_grid,
    heuristic_params,
)
from search.proposal import FINISHED
from search.spec import SpecError, parse_spec
from search.trial import StudyContext, train_config

TEMPLATE = DiTConfig(ModelShape(1, 16, 1), image_size=16, text_len=14)


def spec(**overrides):
    data = {"name": "g", "budgets": [1e11, 1e12], "trainer": {"batch_size": 16}}
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return parse_spec(data)


def test_heuristic_centre():
    assert heuristic_params(6e12, 20.0) == pytest.approx(2.2360679e5)


def test_sizes_are_spaced_around_the_heuristic_and_distinct():
    s = spec(model__sizes_per_budget=5, model__size_spacing=1.5, model__tokens_per_param=5.0)
    trials = budget_trials(s, TEMPLATE, 1e12)
    params = [t.params for t in trials]
    assert params == sorted(params) and len(set(params)) == len(params) == 5
    centre = heuristic_params(1e12, 5.0)
    assert params[0] < centre < params[-1]
    assert len({t.shape for t in trials}) == len(trials)


def test_a_fixed_depth_varies_width_only():
    free = budget_trials(spec(model__sizes_per_budget=5, model__tokens_per_param=1.0),
                         TEMPLATE, 1e12)
    assert len({t.shape.depth for t in free}) > 1  # the default rule deepens with N here
    fixed = budget_trials(spec(model__sizes_per_budget=5, model__tokens_per_param=1.0,
                               model__depth=2), TEMPLATE, 1e12)
    assert {t.shape.depth for t in fixed} == {2} and len(fixed) == 5
    assert [t.shape.width for t in fixed] == sorted(t.shape.width for t in fixed)


def test_explicit_sizes_round_to_the_ladder_and_deduplicate():
    s = spec(model__sizes=[5e4, 5.1e4, 2e5])
    trials = budget_trials(s, TEMPLATE, 1e12)
    assert len(trials) == 2  # 5e4 and 5.1e4 are one ladder entry


def test_grid_refuses_a_budget_too_small_for_three_sizes():
    s = spec(budgets=[1e6, 1e12])
    with pytest.raises(GridError, match=r"budgets\[0\]: 1e\+06 FLOPs gives 0 distinct model sizes"):
        fixed_grid(s, TEMPLATE)


def test_trial_config_round_trip():
    t = budget_trials(spec(), TEMPLATE, 1e12)[0]
    assert TrialSpec.from_config(t.config()) == t
    assert t.key.startswith("C1e12-d")


def test_seeds_per_size_trains_each_size_with_consecutive_seeds():
    once = fixed_grid(spec(), TEMPLATE)
    s = spec(model__seeds_per_size=2, seed=7)
    twice = fixed_grid(s, TEMPLATE)
    assert len(twice) == 2 * len(once)
    assert [(t.budget, t.params) for t in twice[::2]] == [(t.budget, t.params) for t in once]
    assert [t.repeat for t in twice] == [0, 1] * len(once)
    assert len({t.key for t in twice}) == len(twice)  # distinct trials, distinct records
    assert twice[0].key == once[0].key and twice[1].key == once[0].key + "-r1"
    assert TrialSpec.from_config(twice[1].config()) == twice[1]
    ctx = StudyContext(study="g", study_run_id="0" * 32, tracking_uri="sqlite:///x.db",
                       storage_path="/tmp/x", spec=s.model_dump(mode="json"), template=TEMPLATE,
                       train_urls=("a.tar",), val_urls=("b.tar",))
    seeds = [(train_config(ctx, t)[0].seed, train_config(ctx, t)[1]["seed"]) for t in twice[:2]]
    assert seeds == [(7, "7"), (8, "8")]


def test_seeds_per_size_is_for_the_fixed_grid():
    with pytest.raises(SpecError, match="model.seeds_per_size applies to the fixed grid"):
        spec(model__seeds_per_size=2, allocator__kind="adaptive")


def test_proposer_serves_in_order_then_finishes():
    trials = fixed_grid(spec(), TEMPLATE)
    proposer = GridProposer(trials)
    first = proposer.suggest("t1")
    assert first["trial_key"] == trials[0].key
    restored = GridProposer([])
    restored.set_state(proposer.get_state())
    rest = [restored.suggest(f"t{i}") for i in range(2, len(trials) + 1)]
    assert [c["trial_key"] for c in rest] == [t.key for t in trials[1:]]
    assert restored.suggest("extra") == FINISHED
