"""Which ladder sizes a budget opens with, and which bring its minimum inside its window.

Pure functions of the size catalogue (`search.catalogue.SizeCatalogue`: ladder shapes, their N
in parameters and ln N) and one budget's points (`search.allocator_state.Budget`); the
`Allocator` decides when to call them. Sizes are catalogue indices; `spacing` is the allocator's
step between neighbouring sizes, as a factor in N.
"""

from __future__ import annotations

import math

import numpy as np

from search.allocator_state import Budget, human
from search.catalogue import SizeCatalogue
from search.design import Parabola


def free_sizes(catalogue: SizeCatalogue, b: Budget) -> np.ndarray:
    """Catalogue indices usable at this budget (enough steps) and not yet tried there."""
    used = {p.index for p in b.points.values()}
    return np.array([i for i in catalogue.usable(b.compute) if i not in used], dtype=np.int64)


def nearest_free(catalogue: SizeCatalogue, b: Budget, target: float, side: int = 0,
                 pivot: float | None = None, taken: set[int] | None = None) -> int | None:
    """The free size nearest ln N = `target`; side +1 / -1 keeps it above / below `pivot`."""
    free = [i for i in free_sizes(catalogue, b) if not taken or i not in taken]
    if side:
        free = [i for i in free if side * (catalogue.log_n[i] - pivot) > 1e-9]
    if not free:
        return None
    return int(min(free, key=lambda i: abs(catalogue.log_n[i] - target)))


def opening_sizes(catalogue: SizeCatalogue, b: Budget, centre: float, k: int,
                  spacing: float) -> list[int]:
    """Up to `k` distinct free sizes nearest the points spaced x`spacing` around ln N =
    `centre`, smallest N first."""
    step = math.log(spacing)
    taken: set[int] = set()
    for j in range(k):
        i = nearest_free(catalogue, b, centre + step * (j - (k - 1) / 2), taken=taken)
        if i is not None:
            taken.add(i)
    return sorted(taken, key=lambda i: catalogue.params[i])


def bracket(catalogue: SizeCatalogue, b: Budget, fit: Parabola | None, spacing: float
            ) -> tuple[str, list[int], str]:
    """(action, sizes, why) that bring a budget's minimum inside its window: one size a step
    beyond the edge the parabola points past (two steps when it points further), both edges
    widened when the losses are not convex, or new sizes near the centre to replace failures
    when fewer than 3 sizes came back (`fit` None)."""
    step = math.log(spacing)
    finished = [p for p in b.points.values() if p.state == "finished"]
    if fit is None:
        need = 3 - len({p.params for p in finished})
        taken: set[int] = set()
        for _ in range(need):
            i = nearest_free(catalogue, b, b.centre, taken=taken)
            if i is not None:
                taken.add(i)
        return "retry", sorted(taken), (f"only {len(finished)} of {len(b.points)} trials "
                                        "finished, a parabola needs 3 sizes")
    lo, hi = fit.lo, fit.hi
    window = f"[{human(math.exp(lo))}, {human(math.exp(hi))}]"
    if fit.curvature > 0:
        up = fit.vertex > hi
        beyond = (fit.vertex - hi) if up else (lo - fit.vertex)
        dist = step * (2 if beyond > 1.5 * step else 1)
        target = hi + dist if up else lo - dist
        why = (f"minimum beyond the {'upper' if up else 'lower'} edge of {window} "
               f"(parabola's minimum at ~{human(math.exp(fit.vertex))})")
    else:
        best = math.log(min(finished, key=lambda p: p.loss).params)
        if best not in (lo, hi):
            below = nearest_free(catalogue, b, lo - step, -1, lo)
            above = nearest_free(catalogue, b, hi + step, +1, hi)
            return "extend", [i for i in (below, above) if i is not None], (
                f"no minimum in {window} (losses not convex in log N): widening")
        up = best == hi
        target = hi + step if up else lo - step
        why = (f"no minimum in {window} (losses not convex in log N), lowest loss at the "
               f"{'upper' if up else 'lower'} edge")
    i = nearest_free(catalogue, b, target, 1 if target > hi else -1, hi if target > hi else lo)
    return "extend", [] if i is None else [i], why
