"""Scaling-law fitting: isoFLOP optima (Chinchilla Approach 2), power laws in compute, the
parametric surface (Approach 3), prediction with intervals, design comparison and the paper's
reference law.

Pure numpy/scipy; see `result.py` for units, conventions and the JSON schema.
"""

from scaling.laws.compare import Comparison, ExponentDifference, compare
from scaling.laws.fit import LawFitError, fit_laws
from scaling.laws.isoflop import BudgetFit
from scaling.laws.parametric import ParametricFit, fit_parametric
from scaling.laws.powerlaw import PowerLaw, SaturatingLaw
from scaling.laws.reference import PAPER_TABLE1, paper_law
from scaling.laws.result import Estimate, FitOptions, LawFit, Prediction

__all__ = [
    "PAPER_TABLE1",
    "BudgetFit",
    "Comparison",
    "Estimate",
    "ExponentDifference",
    "FitOptions",
    "LawFit",
    "LawFitError",
    "ParametricFit",
    "PowerLaw",
    "Prediction",
    "SaturatingLaw",
    "compare",
    "fit_laws",
    "fit_parametric",
    "paper_law",
]
