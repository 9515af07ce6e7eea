"""The size ladder: one rule maps a target parameter count to a (depth, width, heads) shape.

Rule, for a target N* (total parameters of the given model family and input dimensions):
1. depth d = max(1, round(cbrt(N* / (12 * 64^2)))): width about 64 x depth, since a block holds
   about 12 w^2 parameters;
2. heads h(w) = max(1, floor(w / 64 + 1/2)), so heads are about 64 wide, and a width is allowed
   when it splits into h(w) heads whose dimension is a multiple of 8 (flash attention's rule);
3. width w = the allowed width (at least 16) at that depth whose exact total N is nearest N* in
   log space.
Allowed widths are 8 apart up to 96 and about w / 8 apart beyond, so neighbouring ladder entries
differ by well under x1.5 in N above ~200K parameters: fine enough for an allocator to refine an
isoFLOP minimum. The ladder reaches from ~15-25K parameters (depth 1, width 16; the template's
input dimensions set the floor) past 1B (depth 27, width ~1,550-1,750).

A study may fix the depth (`depth`): step 1 is skipped and the ladder varies width only. At tiny
scales that matters: at equal N a deeper, narrower model trains to a different loss, and a ladder
that changes depth between neighbouring sizes puts that jump into the isoFLOP curves.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace
from functools import lru_cache

from scaling.model import DiTConfig, ModelShape, parameter_count

ASPECT = 64  # width per unit depth
WIDTH_STEP = 8
MIN_WIDTH = 16


def heads_for(width: int) -> int:
    """Heads of an allowed width: about 64 dimensions each."""
    return max(1, math.floor(width / 64 + 0.5))


def allowed(width: int) -> bool:
    return width >= MIN_WIDTH and width % (WIDTH_STEP * heads_for(width)) == 0


@lru_cache(maxsize=1)
def _allowed_widths() -> tuple[int, ...]:
    """Every allowed width up to 65,536 (past 10B parameters at depth 1), ascending."""
    return tuple(w for w in range(MIN_WIDTH, 65_537, WIDTH_STEP) if allowed(w))


def _shape(depth: int, width: int) -> ModelShape:
    return ModelShape(depth, width, heads_for(width))


def _params(template: DiTConfig, depth: int, width: int) -> int:
    return parameter_count(replace(template, shape=_shape(depth, width))).total


def shape_for(target_params: float, template: DiTConfig, depth: int | None = None) -> ModelShape:
    """The ladder's shape for `target_params` parameters in `template`'s family (at `depth`
    blocks when given)."""
    return nearest(target_params, template, depth)[0]


def nearest(target_params: float, template: DiTConfig,
            depth: int | None = None) -> tuple[ModelShape, int]:
    """The ladder's shape nearest `target_params` (in log N) and its exact parameter count; with
    `depth`, the nearest allowed width at that many blocks."""
    if not (isinstance(target_params, numbers.Real) and math.isfinite(target_params)
            and target_params > 0):
        raise ValueError(f"target_params={target_params} is not a positive number of parameters")
    if depth is not None and not (isinstance(depth, numbers.Integral) and depth >= 1):
        raise ValueError(f"depth={depth} is not a positive number of blocks")
    return _nearest(float(target_params), replace(template, shape=ModelShape(1, 16, 1)),
                    None if depth is None else int(depth))


@lru_cache(maxsize=4096)
def _nearest(target: float, template: DiTConfig, depth: int | None) -> tuple[ModelShape, int]:
    if depth is None:
        depth = max(1, round((target / (12 * ASPECT**2)) ** (1 / 3)))
    # N grows monotonically with width at fixed depth: find the first allowed width at or above
    # the target, then keep it or the allowed width below, whichever is nearer in log N.
    widths = _allowed_widths()
    lo, hi = 0, len(widths) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _params(template, depth, widths[mid]) < target:
            lo = mid + 1
        else:
            hi = mid
    width, below = widths[lo], widths[lo - 1] if lo > 0 else None
    candidates = [w for w in (below, width) if w is not None]
    best = min(candidates, key=lambda w: abs(math.log(_params(template, depth, w) / target)))
    return _shape(depth, best), _params(template, depth, best)


def ladder(template: DiTConfig, min_params: float, max_params: float,
           depth: int | None = None) -> list[ModelShape]:
    """Every distinct shape the rule gives for targets in [min_params, max_params], by N (at
    `depth` blocks when given)."""
    if not 0 < min_params < max_params:
        raise ValueError(f"min_params={min_params} and max_params={max_params} must satisfy "
                         "0 < min_params < max_params")
    found: dict[ModelShape, int] = {}
    target = min_params
    while target <= max_params:
        shape, n = nearest(target, template, depth)
        if min_params <= n <= max_params:
            found[shape] = n
        target *= 1.02
    return sorted(found, key=found.__getitem__)
