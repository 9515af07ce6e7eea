"""Scalability benchmark: two designs' exponents side by side, as in the paper's Table 1.

The paper reads a design as more scalable when its loss (or FID) exponent is more negative, and,
for a fixed data pipeline, when its model exponent is smaller and its data exponent larger. Each
difference B - A gets a 95% interval from the two fits' bootstrap draws: the studies are
independent, so draw j of A is paired with a random draw of B (a fixed permutation). Pairing draw j
with draw j would not do: two studies of the same shape fitted with the same seed resample the
same runs in draw j, and their errors would cancel in the difference, narrowing its interval.
An interval that covers 0 means "not distinguishable".

The paper's law is quoted without intervals: against it, the difference's interval comes from the
other design's draws alone (the paper's exponent taken as exact). A fitted law whose interval
could not be estimated gives no interval for the difference: "cannot tell", never a narrow one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scaling.laws.bootstrap import interval
from scaling.laws.reference import PAPER_TABLE1
from scaling.laws.result import LawFit, clean_json, text_columns

PAIRING_SEED = 0  # the permutation pairing B's draws with A's: fixed, so a comparison repeats
# (law in LawFit, label, whether the exponent is normally negative)
EXPONENTS = (("n_opt", "model exponent", False), ("d_opt", "data exponent", False),
             ("loss", "loss exponent", True), ("fid", "FID exponent", True))


@dataclass(frozen=True)
class ExponentDifference:
    """One exponent of designs A and B, the difference B - A, its 95% interval and the verdict."""

    law: str
    label: str
    a: float
    a_ci: tuple[float, float] | None
    b: float
    b_ci: tuple[float, float] | None
    difference: float
    ci: tuple[float, float] | None
    verdict: str


@dataclass(frozen=True)
class Comparison:
    names: tuple[str, str]
    rows: tuple[ExponentDifference, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return clean_json(asdict(self))

    def table(self, with_paper: bool = False) -> str:
        """Table 1 layout: one row per design, then B - A with intervals, then the verdicts."""
        a, b = self.names
        head = ("design",) + tuple(r.label for r in self.rows)
        rows = [head,
                (a,) + tuple(_with_ci(r.a, r.a_ci) for r in self.rows),
                (b,) + tuple(_with_ci(r.b, r.b_ci) for r in self.rows),
                (f"{b} - {a}",) + tuple(_with_ci(r.difference, r.ci, ".2g") for r in self.rows)]
        if with_paper:
            for design, values in PAPER_TABLE1.items():
                cells = dict(zip(("n_opt", "d_opt", "loss"), values, strict=True))
                rows.append((f"paper {design}",)
                            + tuple(f"{cells[r.law]:.4g}" if r.law in cells else "-"
                                    for r in self.rows))
        lines = ["Scalability benchmark: exponents with 95% intervals (C in FLOPs, multiply-add "
                 "= 2 FLOPs)", text_columns(rows)]
        lines.extend(f"- {r.verdict}" for r in self.rows)
        lines.extend(f"Note: {n}" for n in self.notes)
        return "\n".join(lines)


def compare(a: LawFit, b: LawFit, names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Compare the exponents of two fitted designs; B - A differences with bootstrap intervals."""
    name_a, name_b = names
    rows = []
    for law, label, negative in EXPONENTS:
        la, lb = a.law(law), b.law(law)
        if la is None or lb is None:
            continue
        diff = lb.exponent - la.exponent
        ci = None
        if all(x.draws is not None or fit.source == "paper" for x, fit in ((la, a), (lb, b))):
            ci = _difference_ci(la.draws, lb.draws, la.exponent, lb.exponent)
        rows.append(ExponentDifference(law, label, la.exponent, la.exponent_ci, lb.exponent,
                                       lb.exponent_ci, diff, ci,
                                       _verdict(name_a, name_b, label, negative, la.exponent,
                                                lb.exponent, diff, ci)))
    notes = []
    if a.convention != b.convention:
        notes.append(f"{name_a} counts compute as {a.convention} and {name_b} as {b.convention}: "
                     "their exponents are not directly comparable")
    return Comparison(names, tuple(rows), tuple(notes))


def _difference_ci(
    da: np.ndarray | None, db: np.ndarray | None, ea: float, eb: float
) -> tuple[float, float] | None:
    if da is None and db is None:
        return None
    if da is None:
        diffs = db[:, 1] - ea
    elif db is None:
        diffs = eb - da[:, 1]
    else:
        k = min(len(da), len(db))
        shuffled = db[np.random.default_rng(PAIRING_SEED).permutation(len(db))]
        diffs = shuffled[:k, 1] - da[:k, 1]
    lo, hi = interval(diffs)
    return (float(lo), float(hi))


def _verdict(
    name_a: str, name_b: str, label: str, negative: bool, ea: float, eb: float, diff: float,
    ci: tuple[float, float] | None,
) -> str:
    numbers = f"{eb:.4g} vs {ea:.4g}, difference {diff:.2g}"
    if ci is None:
        return f"{name_b}'s {label}: {numbers} (no intervals: cannot tell whether they differ)"
    numbers += f" [{ci[0]:.2g}, {ci[1]:.2g}]"
    if ci[0] <= 0 <= ci[1]:
        return f"{name_b}'s {label} is not distinguishable from {name_a}'s: {numbers}"
    if negative:
        word = "more negative" if diff < 0 else "less negative"
    else:
        word = "smaller" if diff < 0 else "larger"
    return f"{name_b}'s {label} is {word}: {numbers}"


def _with_ci(value: float, ci: tuple[float, float] | None, fmt: str = ".4g") -> str:
    return f"{value:{fmt}}" if ci is None else f"{value:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
