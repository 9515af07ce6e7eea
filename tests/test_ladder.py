"""The size ladder: one rule from ~25K to past 1B parameters, fine-grained and deterministic."""

from dataclasses import replace

import numpy as np
import pytest

from scaling.ladder import allowed, heads_for, ladder, nearest, shape_for
from scaling.model import DiTConfig, ModelShape, parameter_count

TEMPLATE = DiTConfig(ModelShape(1, 16, 1), text_len=14)


@pytest.mark.parametrize("design", ["in_context", "cross_attention"])
def test_ladder_spans_tiny_to_billion_finely(design):
    t = replace(TEMPLATE, conditioning=design)
    shapes = ladder(t, 2e4, 2e9)
    n = np.array([parameter_count(replace(t, shape=s)).total for s in shapes])
    assert n[0] <= 60e3 and n[-1] >= 1e9
    assert np.all(np.diff(n) > 0)
    ratios = n[1:] / n[:-1]
    assert ratios[n[:-1] > 2e5].max() < 1.4


@pytest.mark.parametrize("target", [3e4, 1e5, 1e6, 1.5e7, 1e8, 1e9])
def test_nearest_is_close_and_follows_the_rule(target):
    shape, n = nearest(target, TEMPLATE)
    assert n == parameter_count(replace(TEMPLATE, shape=shape)).total
    assert abs(np.log(n / target)) < np.log(1.25)
    assert shape.heads == heads_for(shape.width)
    assert (shape.width // shape.heads) % 8 == 0
    assert 0.5 < shape.width / (64 * shape.depth) < 2.5 or shape.depth == 1
    assert shape_for(target, TEMPLATE) == shape == nearest(target, TEMPLATE)[0]


def test_deterministic_and_accepts_numpy_numbers():
    assert nearest(np.int64(2_000_000), TEMPLATE) == nearest(2e6, TEMPLATE)
    assert ladder(TEMPLATE, 1e5, 1e7) == ladder(TEMPLATE, 1e5, 1e7)


def test_heads_are_about_64_wide_at_scale():
    shape, _ = nearest(1e9, TEMPLATE)
    assert 48 <= shape.width // shape.heads <= 96 and shape.depth >= 20


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_a_fixed_depth_keeps_the_depth_and_takes_the_nearest_allowed_width(depth):
    def count(width):
        return parameter_count(replace(TEMPLATE, shape=ModelShape(depth, width,
                                                                  heads_for(width)))).total

    widths = [w for w in range(16, 2000, 8) if allowed(w)]
    for target in (3e4, 2e5, 3e6):
        shape, n = nearest(target, TEMPLATE, depth)
        assert shape.depth == depth and n == count(shape.width)
        assert shape.width == min(widths, key=lambda w: abs(np.log(count(w) / target)))
    shapes = ladder(TEMPLATE, 2e4, 2e7, depth)
    assert {s.depth for s in shapes} == {depth}
    assert [s.width for s in shapes] == sorted(s.width for s in shapes)


def test_a_bad_depth_is_named():
    with pytest.raises(ValueError, match="depth=0 is not a positive number of blocks"):
        nearest(1e5, TEMPLATE, 0)


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf")])
def test_bad_targets(bad):
    with pytest.raises(ValueError, match="not a positive number of parameters"):
        nearest(bad, TEMPLATE)
    with pytest.raises(ValueError):
        ladder(TEMPLATE, 1e6, 1e5)
