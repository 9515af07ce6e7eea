import math

import numpy as np
import pytest

from scaling.surface import (
    PAPER_BUDGETS,
    PAPER_LOSS_EXPONENT,
    SURFACES,
    LossSurface,
    paper_surface,
    synthetic_study,
)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_optimum_is_the_minimum_along_the_isoflop_line(name):
    surface = SURFACES[name]
    for c in (1e17, 1e19):
        opt = surface.optimum(c)
        assert 6 * opt.n_opt * opt.d_opt == pytest.approx(c, rel=1e-12)
        n = opt.n_opt * np.logspace(-1, 1, 2001)
        losses = surface.loss(n, c / (6 * n))
        assert n[np.argmin(losses)] == pytest.approx(opt.n_opt, rel=2e-3)
        assert opt.loss == pytest.approx(losses.min(), rel=1e-9)


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_exponents_match_the_frontier(name):
    surface = SURFACES[name]
    ex = surface.exponents()
    assert ex.a + ex.b == pytest.approx(1.0)
    slope = math.log(surface.optimum(1e20).n_opt / surface.optimum(1e17).n_opt) / math.log(1e3)
    assert slope == pytest.approx(ex.a, rel=1e-9)
    # Reducible loss at the optimum falls as C^-gamma exactly.
    red = [surface.optimum(c).loss - surface.E for c in (1e17, 1e20)]
    assert -math.log(red[1] / red[0]) / math.log(1e3) == pytest.approx(ex.gamma, rel=1e-9)


def test_paper_surface_reproduces_the_papers_laws():
    surface = SURFACES["paper"]
    # N_opt = 0.000894 C^0.5681: the paper's quoted 958.3M at 1.5e21 FLOPs.
    assert surface.optimum(1.5e21).n_opt == pytest.approx(958.3e6, rel=0.005)
    assert surface.exponents().a == pytest.approx(0.5681, abs=1e-9)
    c = np.array(PAPER_BUDGETS)
    n = [surface.optimum(x).n_opt for x in c]
    slope, intercept = np.polyfit(np.log10(c), np.log10(n), 1)
    assert slope == pytest.approx(0.5681, abs=1e-9)
    assert 10**intercept == pytest.approx(0.000894, rel=1e-6)
    # A power law through the optimum losses over the paper's budgets: exponent within 0.01.
    loss = [surface.optimum(x).loss for x in c]
    loss_slope = np.polyfit(np.log10(c), np.log10(loss), 1)[0]
    assert abs(loss_slope - PAPER_LOSS_EXPONENT) < 0.01
    # ...and the loss level matches 2.3943 C^-0.0273 within 2% over that range.
    assert np.allclose(loss, 2.3943 * c**-0.0273, rtol=0.02)


def test_paper_surface_gamma_is_a_documented_free_choice():
    s = paper_surface(gamma=0.3)
    assert s.exponents().gamma == pytest.approx(0.3)
    assert s.exponents().a == pytest.approx(0.5681)
    assert s.optimum(1.5e21).n_opt == pytest.approx(958.3e6, rel=0.005)


def test_builtin_surfaces():
    chin = SURFACES["chinchilla"]
    assert (chin.E, chin.A, chin.B, chin.alpha, chin.beta) == (1.82, 482.0, 2085.0, 0.348, 0.366)
    assert chin.exponents().a == pytest.approx(0.513, abs=1e-3)  # Besiroglu et al.'s a
    asym = SURFACES["asymmetric"]
    assert asym.beta - asym.alpha >= 0.15
    assert 1e7 < asym.optimum(1e18).n_opt < 1e8


def test_noisy_loss_is_multiplicative_with_the_given_sd_and_reproducible():
    s = SURFACES["chinchilla"]
    n, d = np.full(20000, 1e8), np.full(20000, 2e9)
    a = s.noisy_loss(n, d, np.random.default_rng(3), rel_sigma=0.01)
    b = s.noisy_loss(n, d, np.random.default_rng(3), rel_sigma=0.01)
    assert np.array_equal(a, b)
    rel = np.log(a / s.loss(n, d))
    assert rel.std() == pytest.approx(0.01, rel=0.03)
    assert abs(rel.mean()) < 3 * 0.01 / math.sqrt(n.size)


def test_curve_ends_at_the_final_loss_and_decreases():
    s = SURFACES["paper"]
    clean = s.curve(1e7, 1e10, 50, np.random.default_rng(0), rel_sigma=0.0)
    assert clean.shape == (50,)
    assert np.all(np.diff(clean) < 0)
    assert clean[-1] == pytest.approx(float(s.loss(1e7, 1e10)))
    assert clean[9] == pytest.approx(float(s.loss(1e7, 1e10 * 10 / 50)))
    noisy = s.curve(1e7, 1e10, 50, np.random.default_rng(0), rel_sigma=0.005)
    assert np.all(np.abs(np.log(noisy / clean)) < 0.03)
    with pytest.raises(ValueError, match="steps=0"):
        s.curve(1e7, 1e10, 0, np.random.default_rng(0))


def test_invalid_surface_names_the_field():
    with pytest.raises(ValueError, match="alpha"):
        LossSurface(E=1.0, A=1.0, B=1.0, alpha=-0.1, beta=0.3)
    with pytest.raises(ValueError, match="E="):
        LossSurface(E=float("nan"), A=1.0, B=1.0, alpha=0.1, beta=0.3)


def test_synthetic_study_grid():
    s = SURFACES["chinchilla"]
    points = synthetic_study(s, (1e17, 1e18), np.random.default_rng(0), sizes=5, width=0.5,
                             offset=(0.0, 0.3), rel_sigma=0.0)
    assert len(points) == 10
    first = [p for p in points if p.compute == 1e17]
    logs = np.log10([p.params for p in first])
    assert np.mean(logs) == pytest.approx(math.log10(s.optimum(1e17).n_opt))
    assert logs.max() - logs.min() == pytest.approx(1.0)
    second = np.log10([p.params for p in points if p.compute == 1e18])
    assert np.mean(second) == pytest.approx(math.log10(s.optimum(1e18).n_opt) + 0.3)
    for p in points:
        assert p.tokens == pytest.approx(p.compute / (6 * p.params))
        assert p.loss == pytest.approx(float(s.loss(p.params, p.tokens)))
