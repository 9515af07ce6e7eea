"""What the allocator chooses from: the prior for N_opt(C) and the ladder of model sizes.

Units: C in FLOPs (a multiply-add = 2 FLOPs), N in parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from scaling.flops import plan_trial
from scaling.ladder import ladder
from scaling.laws.powerlaw import PowerLaw
from scaling.model import DiTConfig
from scaling.surface import PAPER_N_COEFFICIENT, PAPER_N_EXPONENT
from search.grid import MIN_STEPS
from search.spec import StudySpec


@dataclass(frozen=True)
class Prior:
    """A prior for the compute-optimal size: N_opt = coefficient * C^exponent (C in FLOPs)."""

    coefficient: float
    exponent: float
    source: str

    def __call__(self, budget: float) -> float:
        return self.coefficient * budget**self.exponent


def heuristic_prior(tokens_per_param: float) -> Prior:
    """C = 6 N D with D = r N: N = sqrt(C / (6 r)) = (6 r)^-1/2 C^1/2."""
    return Prior((6 * tokens_per_param) ** -0.5, 0.5,
                 f"6ND heuristic with D = {tokens_per_param:g} N")


def resolve_prior(spec: StudySpec,
                  study_law: Callable[[str], PowerLaw] | None = None) -> Prior:
    """The spec's prior; `study_law(name)` reads a fitted study's N_opt law (from MLflow)."""
    a = spec.allocator
    if a.prior == "paper":
        return Prior(PAPER_N_COEFFICIENT, PAPER_N_EXPONENT, "the paper's law")
    if a.prior == "explicit":
        return Prior(a.prior_coefficient, a.prior_exponent, "the spec's explicit law")
    if a.prior.startswith("study:"):
        name = a.prior.split(":", 1)[1]
        if study_law is None:
            raise ValueError(f"allocator.prior = {a.prior!r} needs the study's laws from MLflow")
        law = study_law(name)
        return Prior(law.coefficient, law.exponent, f"study {name}'s fitted law")
    return heuristic_prior(spec.model.tokens_per_param)


class SizeCatalogue:
    """The ladder's distinct shapes between model.min_params and model.max_params, by N, and
    which of them a budget can train for at least MIN_STEPS steps."""

    def __init__(self, spec: StudySpec, template: DiTConfig, extra_shapes=()):
        self.spec, self.template = spec, template
        shapes = ladder(template, spec.model.min_params, spec.model.max_params,
                        spec.model.depth)
        shapes += [s for s in dict.fromkeys(extra_shapes) if s not in shapes]
        shapes.sort(key=self._count)
        self.shapes = shapes
        self.params = np.array([self._count(s) for s in shapes], dtype=np.int64)
        self.log_n = np.log(self.params.astype(float))
        self._usable: dict[float, np.ndarray] = {}

    def _count(self, shape) -> int:
        return plan_trial(replace(self.template, shape=shape), 1e30, 1).params

    def usable(self, budget: float) -> np.ndarray:
        """Indices of the sizes a budget can train (steps >= MIN_STEPS at the spec's batch)."""
        if budget not in self._usable:
            ok = [i for i, s in enumerate(self.shapes)
                  if plan_trial(replace(self.template, shape=s), budget,
                                self.spec.trainer.batch_size, self.spec.convention).steps
                  >= MIN_STEPS]
            self._usable[budget] = np.array(ok, dtype=np.int64)
        return self._usable[budget]
