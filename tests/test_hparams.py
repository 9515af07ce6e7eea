"""LR and warmup by width, and fitting the rule to an LR sweep."""

import math

import pytest

from scaling.hparams import LRRule, SweepPoint, best_lrs, fit_lr_rule

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def test_rule_scales_lr_down_and_warmup_up_with_width():
    rule = LRRule(base_lr=1e-3, ref_width=64, lr_exponent=1.0, warmup_steps=100,
                  warmup_exponent=0.5)
    assert rule.lr(64) == pytest.approx(1e-3) and rule.lr(256) == pytest.approx(2.5e-4)
    assert rule.warmup(64) == 100 and rule.warmup(256) == 200
    flat = LRRule(base_lr=2e-3)
    assert flat.lr(16) == flat.lr(1024) == 2e-3 and flat.warmup(512) == 0


def sweep(true: LRRule, widths, guess: LRRule, curvature: float = 0.05) -> list[SweepPoint]:
    """Losses quadratic in log LR around the true rule's LR, at multiples of the guess."""
    return [SweepPoint(w, f * guess.lr(w),
                       2.0 + curvature * math.log(f * guess.lr(w) / true.lr(w)) ** 2 - 0.01 * w)
            for w in widths for f in FACTORS]


def test_sweep_recovers_the_rule():
    true = LRRule(base_lr=3e-3, ref_width=64, lr_exponent=0.7)
    guess = LRRule(base_lr=2e-3, ref_width=64, lr_exponent=0.5)  # optima inside the sweep
    fitted = fit_lr_rule(sweep(true, [64, 128, 256, 512], guess), guess)
    assert fitted.lr_exponent == pytest.approx(0.7, abs=1e-6)
    assert fitted.base_lr == pytest.approx(3e-3, rel=1e-6)
    assert fitted.ref_width == 64 and fitted.warmup_steps == guess.warmup_steps


def test_one_width_fits_the_base_and_keeps_the_exponent():
    true = LRRule(base_lr=2e-3, ref_width=64, lr_exponent=1.0)
    guess = LRRule(base_lr=1e-3, ref_width=64, lr_exponent=1.0)
    fitted = fit_lr_rule(sweep(true, [128], guess), guess)
    assert fitted.lr_exponent == 1.0 and fitted.lr(128) == pytest.approx(true.lr(128))


def test_edges_diverged_trials_and_empty_sweeps():
    points = [SweepPoint(64, lr, loss) for lr, loss in
              [(1e-4, 1.5), (1e-3, 1.2), (1e-2, 1.1), (1e-1, float("inf"))]]
    # The best finite LR sits next to a diverged one: no parabola, the swept value.
    assert best_lrs(points) == {64: 1e-2}
    assert best_lrs([SweepPoint(64, 1e-3, 0.9), SweepPoint(64, 1e-2, 1.0)]) == {64: 1e-3}
    with pytest.raises(ValueError, match="no LR sweep trial of 2 ended with a finite loss"):
        fit_lr_rule([SweepPoint(64, 1e-3, float("nan")), SweepPoint(96, 1e-3, float("inf"))],
                    LRRule(base_lr=1e-3))


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="base_lr=0"):
        LRRule(base_lr=0)
    with pytest.raises(ValueError, match="ref_width=0"):
        LRRule(base_lr=1e-3, ref_width=0)
