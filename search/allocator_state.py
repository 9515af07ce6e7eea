"""The allocator's plain data: trials, budgets and decisions (what `get_state` saves), and how
they read in progress lines. Units: C in FLOPs, N in parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def human(n: float) -> str:
    """A count with a K/M/B suffix: 4123456 -> '4.12M'."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def flops_text(c: float) -> str:
    return f"{c:.3g}".replace("e+", "e")


def half_width(interval: tuple[float, float] | None) -> float | None:
    """Relative half-width of an interval [lo, hi] in N: sqrt(hi / lo) - 1 (0.15 = +-15%)."""
    if interval is None:
        return None
    return math.sqrt(interval[1] / interval[0]) - 1


@dataclass
class Point:
    """One trial of a budget: a ladder size, its state and (when finished) its loss."""

    key: str
    index: int  # into the catalogue
    params: int
    state: str = "queued"  # queued | running | finished | failed
    loss: float | None = None
    trunk: str | None = None  # with run reuse: the key of the run it branches off
    branch_step: int | None = None  # ... and the step it restores that run's checkpoint at


@dataclass
class Budget:
    compute: float  # FLOPs
    status: str = "waiting"  # waiting | open | done | skipped
    reason: str = ""
    centre: float | None = None  # log N the budget opened around
    points: dict[str, Point] = field(default_factory=dict)
    queue: list[str] = field(default_factory=list)
    n_opt: float | None = None
    interval: tuple[float, float] | None = None
    last_decision: int | None = None
    cap: int | None = None  # trials at most; None: allocator.max_trials_per_budget

    def count(self, state: str) -> int:
        return sum(p.state == state for p in self.points.values())

    @property
    def busy(self) -> bool:
        return any(p.state in ("queued", "running") for p in self.points.values())


@dataclass
class Decision:
    """One allocator decision; `line()` is its progress line."""

    time: float  # seconds since the epoch
    budget: float | None  # FLOPs; None for a study-wide decision
    action: str  # open | extend | centre | refine | retry | done | stop | skip
    sizes: list[int]  # parameters of the sizes added
    reason: str
    interval_before: list[float] | None = None  # N_opt 95% interval (parameters) when decided
    interval_after: list[float] | None = None  # ... once the sizes it added were back
    running: int = 0  # trials of the budget still running when decided (> 0: a speculation)

    def line(self) -> str:
        where = "study" if self.budget is None else flops_text(self.budget)
        return f"{where}: {self.reason}"


def sizes_text(sizes: list[int]) -> str:
    names = [human(n) for n in sizes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
