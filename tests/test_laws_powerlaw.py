import numpy as np
import pytest

from scaling.laws.powerlaw import (
    LINE_SHARE,
    PowerLaw,
    fit_power_law,
    fit_saturating,
    weights_from_sd,
)

C = np.array([1e17, 3e17, 6e17, 1e18, 3e18, 6e18])


def draws_around(log_y: np.ndarray, sd: np.ndarray, n: int = 2000, seed: int = 0) -> np.ndarray:
    return log_y + sd * np.random.default_rng(seed).standard_normal((n, log_y.size))


def test_exact_power_law_is_recovered_with_intervals():
    log_y = np.log10(0.0009 * C**0.5681)
    law = fit_power_law(C, log_y, draws_around(log_y, np.full(6, 0.03)))
    assert law.coefficient == pytest.approx(0.0009, rel=1e-9)
    assert law.exponent == pytest.approx(0.5681, abs=1e-12)
    assert law.exponent_ci[0] < 0.5681 < law.exponent_ci[1]
    assert law.coefficient_ci[0] < 0.0009 < law.coefficient_ci[1]
    assert law.budgets == 6 and law.draws.shape == (2000, 2)
    # Exponent sd of a line through 6 points with sd 0.03: 0.03 / sqrt(sum (x - mean)^2).
    x = np.log10(C)
    expected = 0.03 / np.sqrt(((x - x.mean()) ** 2).sum())
    assert (law.exponent_ci[1] - law.exponent_ci[0]) / 3.92 == pytest.approx(expected, rel=0.1)


def test_interval_at_a_compute():
    law = PowerLaw(2.0, 0.5, draws=np.array([[1.0, 0.5], [2.0, 0.5], [3.0, 0.5], [4.0, 0.5]]))
    lo, hi = law.interval(100.0)
    assert 10.0 <= lo < hi <= 40.0
    assert law(100.0) == pytest.approx(20.0)
    assert law.interval(np.array([1.0, 4.0])).shape == (2, 2)
    assert PowerLaw(1.0, 1.0).interval(5.0) is None


def test_uncertain_budget_gets_less_weight():
    log_y = np.log10(C**0.5)
    log_y[-1] += 0.3  # an outlier...
    sd = np.full(6, 0.01)
    sd[-1] = 0.3  # ...that its own draws say is uncertain
    weighted = fit_power_law(C, log_y, draws_around(log_y, sd), weighted=True)
    naive = np.polyfit(np.log10(C), log_y, 1)[0]
    assert abs(weighted.exponent - 0.5) < 0.2 * abs(naive - 0.5)


def test_weights_floor():
    w = weights_from_sd(np.array([0.0, 0.1, 0.1, 0.2]))
    assert w[0] == pytest.approx(1 / 0.01**2)
    assert weights_from_sd(np.zeros(3)).tolist() == [1e12] * 3


def test_draws_are_rounded_so_json_round_trips():
    log_y = np.log10(C**0.5)
    law = fit_power_law(C, log_y, draws_around(log_y, np.full(6, 0.02), n=50))
    assert all(float(f"{v:.7g}") == v for v in law.draws.ravel())


def test_a_draw_leaves_out_the_budgets_whose_minimum_left_their_window():
    log_y = np.log10(0.0009 * C**0.5681)
    draws = draws_around(log_y, np.full(6, 0.03), n=400)
    inside = np.ones(draws.shape, bool)
    inside[0, 5] = False  # draw 0: the largest budget's minimum at its window's edge
    inside[1, 1:] = False  # draw 1: a single budget left, so no line
    law = fit_power_law(C, log_y, draws, inside=inside)
    through_five = np.polyfit(np.log10(C[:5]), draws[0, :5], 1)
    assert law.draws[0, 1] == pytest.approx(through_five[0], rel=1e-6)
    assert law.draws[0, 0] == pytest.approx(10 ** through_five[1], rel=1e-6)
    assert np.isnan(law.draws[1]).all()
    # Every other draw is the line through all budgets, as without the mask.
    plain = fit_power_law(C, log_y, draws)
    np.testing.assert_array_equal(law.draws[2:], plain.draws[2:])
    assert law.exponent == plain.exponent and law.coefficient == plain.coefficient


def test_a_law_whose_draws_mostly_have_no_line_has_no_interval():
    log_y = np.log10(0.0009 * C**0.5681)
    draws = draws_around(log_y, np.full(6, 0.03), n=400)
    inside = np.ones(draws.shape, bool)
    inside[: int(400 * (1 - LINE_SHARE)) + 1, 1:] = False
    law = fit_power_law(C, log_y, draws, inside=inside)
    assert law.exponent_ci is None and law.draws is None
    assert law.exponent == pytest.approx(0.5681, abs=1e-12)


def test_needs_two_budgets():
    with pytest.raises(ValueError, match="at least 2 budgets"):
        fit_power_law(C[:1], np.zeros(1), np.zeros((10, 1)))


def test_saturating_law_is_recovered():
    E, A, alpha = 1.8, 300.0, 0.18
    loss = E + A * C**-alpha
    rng = np.random.default_rng(0)
    draws = loss * np.exp(0.002 * rng.standard_normal((500, 6)))
    law = fit_saturating(C, loss, draws, np.full(6, 1.0))
    assert law.E == pytest.approx(E, rel=1e-5)
    assert law.alpha == pytest.approx(alpha, rel=1e-4)
    assert law.A == pytest.approx(A, rel=1e-3)
    assert law.ci["alpha"][0] < alpha < law.ci["alpha"][1]
    assert law.ci["E"][0] < E < law.ci["E"][1]
    assert law(1e18) == pytest.approx(E + A * 1e18**-alpha, rel=1e-4)
    with pytest.raises(ValueError, match="at least 3 budgets"):
        fit_saturating(C[:2], loss[:2], draws[:, :2], np.ones(2))


def test_optima_scattered_beyond_their_intervals_widen_the_law():
    rng = np.random.default_rng(1)
    log_y = np.log10(C**0.5) + 0.05 * rng.standard_normal(6)  # scatter 0.05...
    narrow = fit_power_law(C, log_y, draws_around(log_y, np.full(6, 0.005)))  # ...sd 0.005
    assert narrow.scatter > 5
    honest = fit_power_law(C, log_y, draws_around(log_y, np.full(6, 0.05)))
    assert honest.scatter < 2
    width = [law.exponent_ci[1] - law.exponent_ci[0] for law in (narrow, honest)]
    assert width[0] == pytest.approx(width[1], rel=0.5)
    two = fit_power_law(C[:2], log_y[:2], draws_around(log_y[:2], np.full(2, 0.005)))
    assert two.scatter == 1.0


def test_law_over_a_budget_without_spread_has_no_interval():
    log_y = np.log10(C**0.5)
    draws = draws_around(log_y, np.full(6, 0.02))
    draws[:, 2] = log_y[2]  # this budget's draws never move
    law = fit_power_law(C, log_y, draws)
    assert law.exponent == pytest.approx(0.5)
    assert law.exponent_ci is None and law.coefficient_ci is None and law.draws is None
    assert law.interval(1e20) is None


def test_saturating_law_with_no_floor_is_flagged():
    loss = 300.0 * C**-0.18  # a pure power law: E = 0 fits best
    draws = loss * np.exp(0.002 * np.random.default_rng(0).standard_normal((300, 6)))
    law = fit_saturating(C, loss, draws, np.full(6, 1.0))
    assert "E" in law.at_bound and law.ci["E"] is None
    assert law.ci["alpha"] is not None


def test_one_tight_budget_does_not_widen_an_honest_unweighted_law():
    # Optima that scatter exactly as their draws say, one of them 25x tighter than the rest: a
    # true power law, so about 5% of fits widen (a chi-square in units of each sd, applied to the
    # unweighted line, widened 49%), and the interval is as wide as the error across repetitions.
    sd = np.array([0.05, 0.05, 0.002, 0.05, 0.05, 0.05])
    truth = np.log10(C**0.5)
    rng = np.random.default_rng(3)
    laws = [fit_power_law(C, y, draws_around(y, sd, n=400, seed=s))
            for s, y in enumerate(truth + sd * rng.standard_normal((200, 6)))]
    slopes = np.array([law.exponent for law in laws])
    rmse = float(np.sqrt(np.mean((slopes - 0.5) ** 2)))
    half = float(np.median([(law.exponent_ci[1] - law.exponent_ci[0]) / 2 for law in laws]))
    covered = np.mean([law.exponent_ci[0] <= 0.5 <= law.exponent_ci[1] for law in laws])
    widened = np.mean([law.scatter > 1 for law in laws])
    assert widened <= 0.12 and 0.9 <= covered <= 0.99 and half < 1.3 * 1.96 * rmse, (
        widened, covered, half, rmse)
