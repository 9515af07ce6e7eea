"""The adaptive allocator's decisions on hand-made result sequences, its caps, and its state."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from scaling.surface import SURFACES
from search.allocator import (
    FINISHED,
    SHAPE_RUNS,
    Allocator,
    Prior,
    SizeCatalogue,
    half_width,
    heuristic_prior,
    resolve_prior,
)
from search.allocator_refine import study_designs
from search.design import (
    MAX_WINDOW,
    SHAPE,
    BudgetDesign,
    bias_curve,
    choose,
    debiased_vertex,
    fit_parabola,
    target_weights,
)
from search.plan import simulated_template
from search.spec import parse_spec

PRIOR = Prior(1e-3, 0.55, "test prior")


def make_spec(**allocator):
    return parse_spec({"name": "a", "budgets": [1e17, 1e18], "seed": 3,
                       "trainer": {"kind": "simulated", "batch_size": 256},
                       "allocator": {"kind": "adaptive", **allocator}})


@pytest.fixture(scope="module")
def catalogue():
    spec = make_spec()
    return SizeCatalogue(spec, simulated_template(spec))


def allocator(catalogue, lines=None, **settings) -> Allocator:
    spec = make_spec(**settings)
    return Allocator(spec, catalogue, PRIOR, None if lines is None else lines.append)


def issue_all(a: Allocator) -> list:
    """Everything the allocator will start now (until it waits or finishes)."""
    out = []
    while True:
        p = a.suggest()
        if p is None or p == FINISHED:
            return out
        out.append(p)


def loss_at(n: float, n_opt: float, curvature: float = 0.05) -> float:
    """A clean parabola in ln N with its minimum at n_opt."""
    return 1.0 + curvature * math.log(n / n_opt) ** 2


def test_first_budget_opens_around_the_prior_with_spaced_distinct_sizes(catalogue):
    lines = []
    a = allocator(catalogue, lines, max_trials_per_budget=6)
    first = [a.suggest() for _ in range(3)]
    params = sorted(p.params for p in first)
    centre = PRIOR(1e17)
    assert params[0] < centre < params[-1]
    ratios = np.diff(np.log(params))
    assert np.allclose(ratios, math.log(2.0), atol=0.25)  # x2 apart up to the ladder's rounding
    assert len({p.key for p in first}) == 3
    assert lines[0].startswith("1e17: starting with") and "test prior" in lines[0]
    # With its round still out and nothing queued, the free slot opens the next budget.
    nxt = a.suggest()
    assert a.trial_of(nxt.key)[0] == 1e18


def test_descending_order_opens_the_costliest_budget_first(catalogue):
    lines = []
    a = allocator(catalogue, lines, order="descending")
    first = [a.suggest() for _ in range(4)]
    assert [a.trial_of(p.key)[0] for p in first] == [1e18, 1e18, 1e18, 1e17]
    assert lines[0].startswith("1e18: starting with")


def test_an_edge_minimum_extends_outward(catalogue):
    lines = []
    a = allocator(catalogue, lines)
    first = [a.suggest() for _ in range(3)]
    n_max = max(p.params for p in first)
    for p in first:  # losses fall all the way to the largest size: the minimum is beyond it
        a.complete(p.key, loss_at(p.params, 20 * n_max))
    decision = a.decisions[-1]
    assert decision.action == "extend" and decision.budget == 1e17
    assert len(decision.sizes) == 1 and decision.sizes[0] > n_max
    assert "beyond the upper edge" in lines[-1] and "adding" in lines[-1]
    nxt = a.suggest()
    assert nxt.params == decision.sizes[0]


def open_both(a: Allocator, n_opt_ratio: float = 1.1) -> dict[float, list]:
    """Run both budgets' first rounds (3 sizes each) back with a clean interior minimum near the
    middle size; returns their trials by budget."""
    first = issue_all(a)
    assert [a.trial_of(p.key)[0] for p in first] == [1e17] * 3 + [1e18] * 3
    by_budget: dict[float, list] = {}
    for p in first:
        by_budget.setdefault(a.trial_of(p.key)[0], []).append(p)
    noise = iter([1.002, 0.997, 1.003] * 2)
    for points in by_budget.values():
        n_opt = sorted(p.params for p in points)[1] * n_opt_ratio
        for p in points:
            a.complete(p.key, loss_at(p.params, n_opt) * next(noise))
    return by_budget


def test_once_every_budget_has_a_minimum_it_refines_where_the_target_gains_most_per_flop(
        catalogue):
    lines = []
    a = allocator(catalogue, lines, spacing=3.0, tolerance=0.01, speculate=False)
    # Nothing runs, every budget has its first round: the free slot is refined.
    rounds = open_both(a)
    p = a.suggest()
    d = a.decisions[-1]
    assert d.action == "refine" and d.sizes == [p.params], lines[-1]
    # Both parabolas have the same shape and weigh alike on the exponent (two budgets: +-h), so
    # the 10x cheaper budget gives 10x the information per FLOP.
    assert a.trial_of(p.key)[0] == 1e17
    assert "the most reduction per FLOP of the N_opt exponent a's expected error" in lines[-1]
    assert p.key not in {q.key for q in rounds[1e17]}
    assert d.interval_before is not None and half_width(d.interval_before) > 0.01
    # Without speculation the budget with a trial out waits; the other one is refined next.
    q = a.suggest()
    assert a.trial_of(q.key)[0] == 1e18 and a.suggest() is None
    # Once its size is back, the refine decision learns the interval after it.
    a.complete(p.key, loss_at(p.params, sorted(x.params for x in rounds[1e17])[1] * 1.1))
    assert a.decisions[a.decisions.index(d)].interval_after is not None


def test_a_free_slot_runs_ahead_on_a_budget_still_refining(catalogue):
    lines = []
    a = allocator(catalogue, lines, spacing=3.0, tolerance=0.01, max_trials_per_budget=9)
    rounds = open_both(a)
    # Trials issued but not back count in the design: the slots fill with distinct sizes, each
    # chosen knowing where the running ones are.
    ahead = [a.suggest() for _ in range(4)]
    assert all(p not in (None, FINISHED) for p in ahead)
    later = [d for d in a.decisions[-4:] if d.running]
    assert later and all(d.action == "refine" for d in a.decisions[-4:])
    assert any("running trial" in line and "(a slot is free)" in line for line in lines[-3:])
    more = issue_all(a)
    for budget in (1e17, 1e18):
        keys = [p.key for p in rounds[budget] + ahead + more if a.trial_of(p.key)[0] == budget]
        assert len(keys) == len(set(keys)) <= 9  # never a size twice, never past the cap
        assert not a.budgets[budget].queue
    # The results come back in any order and every budget still decides and closes.
    while (running := [(c, k) for c, b in a.budgets.items() for k, p in b.points.items()
                       if p.state == "running"]):
        c, key = running[-1]
        p = a.budgets[c].points[key]
        a.complete(p.key, loss_at(p.params, PRIOR(c)))
        issue_all(a)
    assert all(b.status == "done" for b in a.budgets.values())


def test_without_room_under_the_cap_a_free_slot_waits(catalogue):
    full = allocator(catalogue, spacing=3.0, tolerance=0.01, max_trials_per_budget=3)
    open_both(full)  # both budgets hold 3 trials: their cap
    assert full.suggest() == FINISHED
    assert all(b.status == "done" and "trial cap 3" in b.reason for b in full.budgets.values())


def test_the_criterion_prefers_the_size_that_most_reduces_variance_per_flop():
    """Hand-made parabolas: the choice is the brute-force best variance reduction per FLOP."""
    def design(compute, weight, sizes, curvature=0.02, vertex=0.0):
        return BudgetDesign(compute, weight, np.array(sizes, dtype=float), vertex, curvature,
                            0.005, np.linspace(-2.5, 2.5, 11))

    def vertex_var(sizes, curvature=0.02):  # textbook: sigma^2 [(X'X)^-1]_11 / (4 c2^2)
        x = np.vander(np.array(sizes, dtype=float), 3, increasing=True)
        return 0.005**2 * np.linalg.inv(x.T @ x)[1, 1] / (4 * curvature**2)

    sizes = [-1.0, 0.0, 1.0]
    # Same shape and |weight| at two budgets: the 10x cheaper one wins, with the size a
    # brute-force search over the candidates finds best.
    designs = [design(1e17, -1.0, sizes), design(1e18, 1.0, sizes)]
    c = choose(designs, kappa=0.0)
    gains = [[(vertex_var(sizes) - vertex_var(sizes + [u])) * d.weight**2 / d.compute
              for u in d.candidates] for d in designs]
    assert c.budget == 0 and c.candidate in np.flatnonzero(np.isclose(gains[0], max(gains[0])))
    assert c.gain_per_flop == pytest.approx(max(gains[0]), rel=0.01)  # SPREAD's tie-break: tiny
    assert c.sd_after < c.sd_before
    # Further out is better once the window is balanced: with a size at -2.5 already, +2.5 wins.
    wide = [design(1e17, -1.0, sizes + [-2.5]), design(1e18, 1.0, sizes)]
    c = choose(wide, kappa=0.0)
    assert c.budget == 0 and wide[0].candidates[c.candidate] == 2.5
    # At equal cost the budget whose vertex is less certain (a flatter parabola) wins ...
    flat = [design(1e17, -1.0, sizes, curvature=0.005), design(1e17, 1.0, sizes)]
    assert choose(flat, kappa=0.0).budget == 0
    # ... and a budget the target does not weigh is only refined when nothing else is left.
    unweighted = [design(1e17, 0.0, sizes), design(1e18, 1.0, sizes)]
    assert choose(unweighted, kappa=0.0).budget == 1
    # The window-bias guard: a lopsided design gets its next size on its short side.
    lopsided = [design(1e17, -1.0, [-0.5, 0.0, 0.5, 1.5, 2.0]), design(1e17, 1.0, sizes)]
    biased = choose(lopsided, kappa=1.0)
    assert biased.budget == 0 and lopsided[0].candidates[biased.candidate] < 0
    # With run reuse a candidate costs what it trains: a size that branches off a trunk at a
    # larger budget (its cooldown, a fifth of the FLOPs) beats the best size from scratch of a
    # budget alike in every other way.
    reuse = design(1e18, 1.0, sizes)
    costs = np.full(reuse.candidates.size, 1e18)
    trunk = int(np.argmin(np.abs(reuse.candidates - 1.5)))  # not the best size from scratch
    costs[trunk] = 0.2e18
    c = choose([design(1e18, -1.0, sizes), replace(reuse, costs=costs)], kappa=0.0)
    assert (c.budget, c.candidate) == (1, trunk)
    plain = choose([design(1e18, -1.0, sizes), reuse], kappa=0.0)
    assert (plain.budget, plain.candidate) != (1, trunk)


def test_a_lopsided_windows_vertex_is_traced_back_to_the_curves_minimum():
    """On the assumed isoFLOP curve, a parabola over a wide window puts its vertex off the
    minimum; the debiased vertex is the minimum again."""
    minimum = 0.3
    x = minimum + np.linspace(-3.0, 3.0, 7)
    fit = fit_parabola(x, 1.0 + 0.05 * bias_curve(x - minimum))
    assert abs(fit.vertex - minimum) > 0.1
    assert debiased_vertex(x, fit.vertex) == pytest.approx(minimum, abs=2e-3)
    balanced = minimum + np.linspace(-2.0, 2.0, 5)  # and one centred alike at every budget
    vertex = fit_parabola(balanced, 1.0 + 0.05 * bias_curve(balanced - minimum)).vertex
    assert debiased_vertex(balanced, vertex) == pytest.approx(minimum, abs=2e-3)


def seeded_on(catalogue, surface, windows: dict[float, tuple[float, float, int]]) -> Allocator:
    """An allocator over the budgets of `windows` seeded with the surface's exact losses at the
    ladder sizes nearest `k` points spread over [lo, hi] in ln N about each budget's N_opt."""
    spec = parse_spec({"name": "a", "budgets": sorted(windows), "seed": 1,
                       "trainer": {"kind": "simulated", "batch_size": 256},
                       "allocator": {"kind": "adaptive"}})
    a = Allocator(spec, catalogue, PRIOR)
    results = []
    for c, (lo, hi, k) in windows.items():
        centre = math.log(surface.optimum(c).n_opt)
        usable = catalogue.usable(c)
        sizes = {int(min(usable, key=lambda i: abs(catalogue.log_n[i] - centre - u)))
                 for u in np.linspace(lo, hi, k)}
        results += [(c, i, float(surface.loss(catalogue.params[i],
                                              c / (6 * catalogue.params[i])))) for i in sizes]
    a.seed(results)
    return a


def test_the_criterion_centres_each_budget_on_the_minimum_its_window_implies(catalogue):
    """Windows of different widths and sides on the asymmetric surface: the criterion centres
    each budget on its true minimum, not on a line through vertices biased by different amounts
    (which would make their biases look balanced)."""
    surface = SURFACES["asymmetric"]
    a = seeded_on(catalogue, surface, {1e17: (-3.0, 3.0, 7), 3e17: (-1.0, 3.0, 7),
                                       1e18: (-2.0, 2.0, 7)})
    truth = {c: math.log(surface.optimum(c).n_opt) for c in a.budgets}
    vertices = [a.fit(c).vertex - truth[c] for c in a.budgets]
    assert max(vertices) - min(vertices) > 0.1  # the raw vertices are biased unequally
    designs, _, _ = study_designs(a, [])
    for d in designs:
        assert d.vertex == pytest.approx(truth[d.compute], abs=0.02)


def test_window_biases_are_reckoned_on_the_curve_the_trials_show(catalogue):
    """Until SHAPE_RUNS trials are back the assumed lopsided curve is used; from then on the
    exponents of the trials' own L(N, D), refitted as they grow, kept through a restore. On
    the nearly symmetric Chinchilla surface the assumed curve puts the minimum of a wide window
    off; the study's own shape puts it back."""
    surface = SURFACES["chinchilla"]
    few = seeded_on(catalogue, surface, {1e17: (-3.0, 3.0, 5), 3e17: (-3.0, 3.0, 5),
                                         1e18: (-3.0, 3.0, 5)})
    assert len(few.finished_points()) < SHAPE_RUNS and few.curve_shape() == SHAPE
    truth = math.log(surface.optimum(1e17).n_opt)
    assert abs(few.minimum(1e17) - truth) > 0.1
    a = seeded_on(catalogue, surface, {1e17: (-3.0, 3.0, 9), 3e17: (-3.0, 3.0, 9),
                                       1e18: (-3.0, 3.0, 9)})
    runs = len(a.finished_points())
    assert runs >= SHAPE_RUNS
    assert a.curve_shape() == pytest.approx((surface.alpha, surface.beta), abs=0.01)
    assert a.shape[0] == runs
    assert a.minimum(1e17) == pytest.approx(truth, abs=0.02)
    restored = seeded_on(catalogue, surface, {1e17: (-3.0, 3.0, 3), 1e18: (-3.0, 3.0, 3)})
    restored.set_state(json.loads(json.dumps(a.get_state())))
    assert restored.shape == a.shape


def test_target_weights_are_the_least_squares_line():
    c = np.log([1e17, 3e17, 1e18, 6e18])
    h = target_weights(c, "a")
    assert h.sum() == pytest.approx(0, abs=1e-12) and h @ c == pytest.approx(1)
    target = math.log(1e21)
    h = target_weights(c, "n_opt", target)
    assert h.sum() == pytest.approx(1) and h @ c == pytest.approx(target)
    assert h[-1] == max(h)  # extrapolating up: the costliest budget weighs most


def test_proposals_stay_on_the_ladder_near_the_minimum_and_never_repeat(catalogue):
    spec = make_spec(max_trials_per_budget=15, tolerance=0.001, spacing=3.0)
    a = Allocator(spec, catalogue, PRIOR)
    rng = np.random.default_rng(2)
    seen: dict[float, list] = {}
    while (p := a.suggest()) not in (None, FINISHED):
        budget, _ = a.trial_of(p.key)
        assert p.index in set(catalogue.usable(budget))
        assert catalogue.params[p.index] == p.params
        seen.setdefault(budget, []).append(p)
        a.complete(p.key, loss_at(p.params, PRIOR(budget)) * math.exp(0.003 * rng.normal()))
    for budget, points in seen.items():
        assert len({p.index for p in points}) == len(points) == 15
        assert all(abs(math.log(p.params / PRIOR(budget))) <= MAX_WINDOW + 0.3
                   for p in points[3:])


def test_a_budget_stops_once_its_interval_is_within_tolerance(catalogue):
    a = allocator(catalogue, spacing=1.5, tolerance=0.5, initial_sizes=5)
    first = [a.suggest() for _ in range(5)]
    n_opt = sorted(p.params for p in first)[2]
    for p in first:
        a.complete(p.key, loss_at(p.params, n_opt, curvature=0.5))
    d = a.decisions[-1]
    assert d.action == "done" and "<= 50%" in d.reason
    assert a.budgets[1e17].status == "done"


def test_caps_are_honoured(catalogue):
    a = allocator(catalogue, max_trials=4)
    issued = issue_all(a)
    assert len(issued) == 4  # 3 at the first budget, 1 at the second, then the cap
    assert a.stopped and "trial cap 4" in a.stopped
    for p in issued:
        a.complete(p.key, 1.0)
    assert a.suggest() == FINISHED
    assert a.trials_issued == 4

    b = allocator(catalogue, max_flops=3.5e17)
    issued = issue_all(b)
    assert [b.trial_of(p.key)[0] for p in issued] == [1e17] * 3
    assert b.flops_issued <= 3.5e17 and "FLOPs cap" in b.stopped


def test_per_budget_cap_and_nothing_is_ever_run_twice(catalogue):
    spec = make_spec(max_trials_per_budget=7, tolerance=0.001, spacing=1.5)
    a = Allocator(spec, catalogue, PRIOR)
    rng = np.random.default_rng(0)
    seen: dict[float, list] = {}
    while (p := a.suggest()) not in (None, FINISHED):
        budget, _ = a.trial_of(p.key)
        seen.setdefault(budget, []).append(p)
        a.complete(p.key, loss_at(p.params, PRIOR(budget)) * math.exp(0.01 * rng.normal()))
    assert a.suggest() == FINISHED
    for budget, points in seen.items():
        assert len(points) <= 7
        assert len({p.key for p in points}) == len(points)  # no size twice at a budget
        assert len({catalogue.shapes[p.index] for p in points}) == len(points)
        assert a.budgets[budget].status == "done"
    assert any("trial cap 7 reached" in d.reason for d in a.decisions)


def test_refine_reuses_finished_trials_and_lifts_the_cap_of_chosen_budgets(catalogue):
    spec = make_spec(max_trials_per_budget=4, tolerance=0.001, spacing=1.5)
    a = Allocator(spec, catalogue, PRIOR)
    rng = np.random.default_rng(1)
    while (p := a.suggest()) not in (None, FINISHED):
        budget, _ = a.trial_of(p.key)
        a.complete(p.key, loss_at(p.params, PRIOR(budget)) * math.exp(0.01 * rng.normal()))
    done = a.finished_points()
    assert len(done) == 8  # both budgets at their cap of 4
    again = Allocator(spec, catalogue, PRIOR)
    again.seed([(c, p.index, p.loss) for c, p in done])
    again.reopen([1e18], tolerance=0.05)
    added = issue_all(again)
    assert added and all(again.trial_of(p.key)[0] == 1e18 for p in added)
    assert not {p.key for p in added} & {p.key for _, p in done}  # nothing run twice
    assert again.budgets[1e17].status == "done" and len(again.budgets[1e17].points) == 4


def test_refine_takes_a_size_trained_with_several_seeds_as_one_point_at_their_mean(catalogue):
    a = Allocator(make_spec(), catalogue, PRIOR)
    a.seed([(1e17, 5, 1.0), (1e17, 5, 1.2), (1e17, 6, None), (1e17, 7, float("nan")),
            (1e17, 7, 0.9)])
    points = {p.index: p for p in a.budgets[1e17].points.values()}
    assert set(points) == {5, 6, 7}
    assert points[5].state == "finished" and points[5].loss == pytest.approx(1.1)
    assert points[6].state == "failed" and points[6].loss is None
    assert points[7].state == "finished" and points[7].loss == 0.9


def test_failed_trials_are_not_retried_but_replaced(catalogue):
    a = allocator(catalogue)
    first = [a.suggest() for _ in range(3)]
    a.complete(first[0].key, None)
    a.complete(first[1].key, float("nan"))
    a.complete(first[2].key, 1.0)
    d = a.decisions[-1]
    assert d.action == "retry" and len(d.sizes) == 2
    assert not {p.params for p in first} & set(d.sizes)


def test_later_budgets_follow_the_law_fitted_so_far(catalogue):
    spec = parse_spec({"name": "a", "budgets": [1e17, 3e17, 1e18], "seed": 1,
                       "trainer": {"kind": "simulated", "batch_size": 256},
                       "allocator": {"kind": "adaptive", "tolerance": 0.3, "spacing": 2.5}})
    truth = Prior(2e-3, 0.52, "truth")
    lines = []
    a = Allocator(spec, catalogue, PRIOR, lines.append)
    while (p := a.suggest()) not in (None, FINISHED):
        budget, _ = a.trial_of(p.key)
        a.complete(p.key, loss_at(p.params, truth(budget), 0.2))
    opens = [line for line in lines if "starting with" in line]
    assert "the prior" in opens[0] and "the prior" in opens[1]
    assert "from the law fitted so far" in opens[2] and "through 2 budgets" in opens[2]


def test_state_round_trips_through_json_and_continues_the_same_plan(catalogue):
    spec = make_spec(tolerance=0.05)
    rng = np.random.default_rng(5)
    a = Allocator(spec, catalogue, PRIOR)

    def step(alloc, noise):
        p = alloc.suggest()
        if p in (None, FINISHED):
            return p
        budget, _ = alloc.trial_of(p.key)
        alloc.complete(p.key, loss_at(p.params, PRIOR(budget) * 1.3) * noise)
        return p.key

    noises = np.exp(0.003 * rng.normal(size=40))
    for k in range(8):
        step(a, noises[k])
    state = json.loads(json.dumps(a.get_state()))
    b = Allocator(spec, catalogue, PRIOR)
    b.set_state(state)
    assert b.get_state() == a.get_state()
    rest_a = [step(a, x) for x in noises[8:]]
    rest_b = [step(b, x) for x in noises[8:]]
    assert rest_a == rest_b and rest_a[0] is not None


def test_priors(tmp_path):
    spec = parse_spec({"name": "p", "budgets": [1e17, 1e18], "model": {"tokens_per_param": 20},
                       "allocator": {"prior": "paper"}})
    assert resolve_prior(spec)(1.5e21) == pytest.approx(958.3e6, rel=0.01)
    h = heuristic_prior(20)
    assert h(6e12) == pytest.approx(math.sqrt(6e12 / 120))
    spec = parse_spec({"name": "p", "budgets": [1e17, 1e18],
                       "allocator": {"prior": "explicit", "prior_coefficient": 2e-3,
                                     "prior_exponent": 0.5}})
    assert resolve_prior(spec)(1e18) == pytest.approx(2e6)
    spec = parse_spec({"name": "p", "budgets": [1e17, 1e18], "allocator": {"prior": "study:x"}})
    with pytest.raises(ValueError, match="needs the study's laws"):
        resolve_prior(spec)
