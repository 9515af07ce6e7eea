"""`dit-scaling plan`: in-process simulations of a study under both strategies, no Ray."""

import json
import math
import textwrap

import pytest
import ray

from scaling.surface import SURFACES
from search.allocator import resolve_prior
from search.branches import grid_cost, reuse_plan
from search.cli import main
from search.grid import plan
from search.plan import plan_study, simulate_study, simulated_template, true_exponents
from search.spec import SpecError, parse_spec
from search.study.proposers import grid_trials

SPEC = {"name": "pl", "budgets": [1e17, 3e17, 1e18, 3e18],
        "trainer": {"kind": "simulated", "batch_size": 256},
        "model": {"sizes_per_budget": 7, "size_spacing": 1.5},
        "allocator": {"kind": "adaptive", "prior": "paper", "spacing": 3.0}}


def test_a_simulated_study_spends_and_fits_like_the_service():
    spec = parse_spec(SPEC)
    sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                         SURFACES["chinchilla"], concurrency=2)
    assert {t.budget for t in sim.trials} == set(spec.budgets)
    assert sim.flops == pytest.approx(sum(t.flops for t in sim.trials))
    assert sim.flops == pytest.approx(sum(t.budget for t in sim.trials), rel=1e-3)
    assert sim.gpu_hours == pytest.approx(sim.flops / (989e12 * 0.4) / 3600)
    value, lo, hi = sim.exponent("n_opt")
    assert lo <= SURFACES["chinchilla"].exponents().a <= hi
    fixed = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "fixed",
                           SURFACES["chinchilla"], fit=False)
    assert len(fixed.trials) == 4 * 7 and fixed.decisions == []


def test_the_exponent_stop_agrees_with_the_interval_the_service_logs():
    data = {**SPEC, "budgets": [1e17 * 2**k for k in range(10)],
            "allocator": {**SPEC["allocator"], "exponent_tolerance": 0.05}}
    spec = parse_spec(data)
    sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                         SURFACES["chinchilla"])
    assert sim.decisions[-1].action == "stop" and "N_opt exponent" in sim.decisions[-1].reason
    _, lo, hi = sim.exponent("n_opt")  # the final fit, as fit_and_log runs it
    assert (hi - lo) / 2 <= 0.05
    assert f"[{lo:.4f}, {hi:.4f}]" in sim.decisions[-1].reason
    # The stop saves trials: without it every budget refines to its own tolerance or cap.
    unstopped = parse_spec({**data, "allocator": SPEC["allocator"]})
    full = simulate_study(unstopped, simulated_template(spec), resolve_prior(spec), "adaptive",
                          SURFACES["chinchilla"], fit=False)
    assert len(sim.trials) < len(full.trials)


def test_a_target_budget_study_stops_once_its_n_opt_is_known():
    data = {**SPEC, "allocator": {**SPEC["allocator"], "target": "n_opt", "target_budget": 1e20,
                                  "tolerance": 0.3}}
    spec = parse_spec(data)
    sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                         SURFACES["chinchilla"])
    last = sim.decisions[-1]
    assert last.action == "stop" and "N_opt at 1e20 FLOPs" in last.reason, last.reason
    lo, hi = sim.fit.n_opt.interval(1e20)
    assert (hi / lo) ** 0.5 - 1 <= 0.3
    with pytest.raises(SpecError, match="target_budget"):
        parse_spec({**SPEC, "allocator": {**SPEC["allocator"], "target": "n_opt"}})


def test_the_two_round_grid_refines_around_each_budgets_lowest_loss():
    spec = parse_spec(SPEC)
    surface = SURFACES["paper"]
    sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "two_round",
                         surface, concurrency=3)
    assert sim.strategy == "two_round" and sim.decisions == [] and sim.fit is not None
    for budget in spec.budgets:
        trials = [t for t in sim.trials if t.budget == budget]
        assert len(trials) == 8 and len({t.params for t in trials}) == 8  # 5 + 3, all distinct
        first, second = trials[:5], trials[5:]
        assert max(t.end for t in first) <= min(t.start for t in second)  # after round one
        span = math.log(max(t.params for t in first) / min(t.params for t in first))
        assert abs(span - 4 * math.log(2.0)) < 0.5  # 5 sizes x2, up to the ladder's rounding
        best = min(first, key=lambda t: t.loss).params
        assert all(abs(math.log(t.params / best)) <= math.log(2.0) for t in second)
    with pytest.raises(ValueError, match="strategy"):
        simulate_study(spec, simulated_template(spec), resolve_prior(spec), "random", surface)


def test_true_exponents():
    truth = true_exponents(SURFACES["paper"], [1e17, 6e18])
    assert truth["n_opt"] == pytest.approx(0.5681)
    assert truth["d_opt"] == pytest.approx(0.4319)
    assert abs(truth["loss"] - -0.0273) < 0.01


def test_plan_report_compares_both_strategies():
    spec = parse_spec(SPEC)
    lines = []
    report = plan_study(spec, simulated_template(spec), resolve_prior(spec), "paper", 2,
                        progress=lines.append)
    assert len(lines) == 4 and lines[0].startswith("[adaptive 1/2]")
    text = report.text()
    for row in ("trials (median, range)", "total FLOPs", "GPU-hours", "N_opt exponent a",
                "D_opt exponent b", "loss exponent", "covers truth", "fixed grid"):
        assert row in text
    s = report.summary("adaptive")
    assert s["repeats"] == 2 and s["flops_median"] > 0 and "n_opt" in s


def test_plan_cli_needs_no_ray(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent("""
        name = "pl"
        budgets = [1e17, 3e17, 1e18]
        [trainer]
        kind = "simulated"
        batch_size = 256
        [allocator]
        kind = "adaptive"
        prior = "paper"
    """))
    assert main(["plan", str(path), "--surface", "chinchilla", "--repeats", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert "[fixed 2/2]" in out
    data = json.loads(out[out.index("\n{") + 1:])
    assert data["surface"] == "chinchilla" and data["adaptive"]["repeats"] == 2
    assert not ray.is_initialized()


def test_plan_refuses_bad_arguments(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text('name = "pl"\nbudgets = [1e17, 3e17]\n')
    assert main(["plan", str(path), "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


RULE = [{"max_params": 5e7, "gpus": 2}, {"max_params": 2e8, "gpus": 4}, {"gpus": 8}]


def gpu_spec(speculate: bool):
    return parse_spec({"name": "g", "seed": 0, "budgets": [1e17, 4e17, 1.6e18, 6.4e18, 1e19],
                       "trainer": {"kind": "simulated", "batch_size": 256},
                       "allocator": {"kind": "adaptive", "prior": "paper", "spacing": 3.0,
                                     "order": "descending", "tolerance": 0.01,
                                     "max_trials_per_budget": 10, "speculate": speculate},
                       "resources": {"gpus_per_trial": RULE}})


def test_on_gpus_trials_wait_for_theirs_and_speculation_fills_the_cluster():
    sims = {}
    for speculate in (False, True):
        spec = gpu_spec(speculate)
        sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                             SURFACES["paper"], concurrency=8, gpus=16, fit=False)
        events = sorted([(t.start, t.gpus) for t in sim.trials]
                        + [(t.end, -t.gpus) for t in sim.trials])
        held = [sum(g for _, g in events[:k + 1]) for k in range(len(events))]
        assert max(held) <= 16  # never more GPUs than the cluster has
        lower_bound = sum(t.gpus * (t.end - t.start) for t in sim.trials) / 16
        assert sim.makespan_s >= lower_bound * (1 - 1e-9)
        assert 0 < sim.occupancy <= 1
        sims[speculate] = sim
    # Budgets refined round by round leave GPUs idle; running ahead fills them.
    assert len(sims[True].trials) == len(sims[False].trials) == 50
    assert sims[True].occupancy > sims[False].occupancy + 0.1, (
        sims[True].occupancy, sims[False].occupancy)


def test_plan_cli_on_gpus_reports_makespan_and_needs_a_gpu_rule(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent("""
        name = "pl"
        budgets = [1e17, 3e17, 1e18]
        [trainer]
        kind = "simulated"
        batch_size = 256
        [allocator]
        kind = "adaptive"
        prior = "paper"
    """))
    assert main(["plan", str(path), "--repeats", "1", "--gpus", "16"]) == 2
    assert "resources.gpus_per_trial" in capsys.readouterr().err
    path.write_text(path.read_text() + '[resources]\ngpus_per_trial = [{ gpus = 32 }]\n')
    assert main(["plan", str(path), "--repeats", "1", "--gpus", "16"]) == 2
    assert "up to 32 GPUs" in capsys.readouterr().err
    path.write_text(path.read_text().replace("gpus = 32", "gpus = 4"))
    assert main(["plan", str(path), "--repeats", "1", "--gpus", "16"]) == 0
    out = capsys.readouterr().out
    assert "on 16 GPUs by resources.gpus_per_trial" in out
    assert "makespan on 16 GPUs, hours" in out and "GPU occupancy" in out



REUSE = {"name": "pr", "budgets": [1e17, 3e17, 1e18, 3e18],
         "trainer": {"kind": "simulated", "batch_size": 256, "reuse": "cooldown"},
         "model": {"sizes": [2e7, 4e7, 8e7, 1.6e8, 3.2e8]},
         "allocator": {"kind": "fixed", "prior": "paper"}}


def reuse_spec(**trainer):
    return parse_spec({**REUSE, "trainer": {**REUSE["trainer"], **trainer}})


@pytest.mark.parametrize("concurrency", [1, 3])
def test_with_reuse_the_grid_trains_each_size_once_and_its_branches_only_their_cooldown(
        concurrency):
    spec, scratch_spec = reuse_spec(), reuse_spec(reuse="off")
    template, prior = simulated_template(spec), resolve_prior(spec)
    sim = simulate_study(spec, template, prior, "fixed", SURFACES["paper"], concurrency,
                         fit=False)
    scratch = simulate_study(scratch_spec, template, prior, "fixed", SURFACES["paper"],
                             concurrency, fit=False)
    # the same isoFLOP points and losses (no cooldown gap), for fewer FLOPs trained
    assert {t.key: t.loss for t in sim.trials} == {t.key: t.loss for t in scratch.trials}
    assert sim.point_flops == pytest.approx(scratch.flops)
    grid = grid_trials(spec, template, prior)
    reuse = reuse_plan(spec, template, grid)
    assert len(reuse.branches) == 3 * 5
    assert sim.flops == pytest.approx(grid_cost(spec, template, grid, reuse).trained, rel=1e-3)
    # per size: 3e18 trained whole, the three smaller budgets only their last 20% of steps
    assert sim.flops / scratch.flops == pytest.approx((3e18 + 0.2 * 1.4e18) / 4.4e18, rel=0.01)
    # a branch starts once its trunk has passed its branch step, and lasts only its cooldown
    mine, alone = {t.key: t for t in sim.trials}, {t.key: t for t in scratch.trials}
    for b in reuse.branches:
        trunk, branch = mine[b.trunk], mine[b.key]
        trunk_steps = next(plan(spec, template, t).steps for t in grid if t.key == b.trunk)
        passed = trunk.start + (trunk.end - trunk.start) * b.step / trunk_steps
        assert branch.start >= passed - 1e-6 * trunk.end
        whole = alone[b.key].end - alone[b.key].start
        assert branch.end - branch.start == pytest.approx(whole * (b.steps - b.step) / b.steps)
    if concurrency > 1:  # branches run beside their trunks, so the study ends sooner
        assert sim.makespan_s < scratch.makespan_s


def test_a_cooldown_gap_moves_only_the_branches_losses():
    spec, gapped = reuse_spec(), reuse_spec(cooldown_gap=0.01)
    template, prior = simulated_template(spec), resolve_prior(spec)
    base = simulate_study(spec, template, prior, "fixed", SURFACES["paper"], fit=False)
    moved = simulate_study(gapped, template, prior, "fixed", SURFACES["paper"], fit=False)
    branches = {b.key for b in reuse_plan(spec, template, grid_trials(spec, template,
                                                                      prior)).branches}
    for a, b in zip(sorted(base.trials, key=lambda t: t.key),
                    sorted(moved.trials, key=lambda t: t.key), strict=True):
        assert b.loss == pytest.approx(a.loss * (1.01 if a.key in branches else 1.0), rel=1e-12)


def test_a_reuse_plan_prints_what_its_points_are_worth_beside_what_it_trains(tmp_path, capsys):
    path = tmp_path / "pr.toml"
    path.write_text(textwrap.dedent('''
        name = "pr"
        budgets = [1e17, 3e17, 1e18, 3e18]
        [trainer]
        kind = "simulated"
        batch_size = 256
        reuse = "cooldown"
        [model]
        sizes = [2e7, 4e7, 8e7, 1.6e8, 3.2e8]
        [allocator]
        kind = "fixed"
        prior = "paper"
    '''))
    assert main(["plan", str(path), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "each size trained once: the other budgets branch off it" in out
    row = next(line for line in out.splitlines() if "isoFLOP points' FLOPs" in line)
    trained = next(line for line in out.splitlines() if line.startswith("total FLOPs"))
    assert float(trained.split()[-1]) == pytest.approx(0.745 * float(row.split()[-1]), rel=0.02)
