"""`LawFit`: fitted compute-optimal laws, their prediction, plain-text table and JSON form.

Conventions: C is training compute in FLOPs, a multiply-add counts as 2 FLOPs, and the study's
convention (`6ND`: C = 6 N D, or `exact`: 3 x analytic forward FLOPs) is recorded. N is parameters,
D is tokens, loss is the training loss the study observed (dimensionless), FID is Frechet distance.
Every interval is a 95% percentile interval [lo, hi] of the parametric bootstrap (`fit.py`).
An interval the data cannot support (bootstrap draws that do not vary, a parameter on its
bound) is null in JSON and "not estimable" in tables, with the reason in `warnings`; an
interval is never reported with zero width.

JSON schema (`LawFit.to_dict()`; `to_json()` is the same as text; keys beyond issue 3's core are
marked +):

    {"approach2": {
        "n_opt":  {"coefficient", "exponent", "exponent_ci": [lo, hi], "coefficient_ci": [lo, hi],
                   "budgets"+,           # N_opt = coefficient * C^exponent, parameters
                   "scatter"+},          # widening for optima scattered beyond their intervals
        "d_opt":  {...},                 # D_opt, tokens
        "loss":   {...},                 # loss at the optimum (exponent negative)
        "fid":    {...} | null,          # FID at the optimum; null without FID measurements
        "loss_saturating"+: {"E", "A", "alpha", "ci": {name: [lo, hi]}, "budgets",
                             "at_bound"} | null,
                                         # L = E + A * C^-alpha, only when asked for
        "budgets": [{"compute",          # budget, FLOPs
                     "n_opt", "n_opt_ci",  # parameters; null when refused (ci: or not estimable)
                     "d_opt", "loss_opt", "points", "centred",
                     "status"+,          # "optimum" or "refused"
                     "log10_n_opt_ci"+, "d_opt_ci"+, "loss_opt_ci"+, "fid_opt"+, "fid_opt_ci"+,
                     "edge_fraction"+,   # share of draws whose minimum sat at the range's edge
                     "suggested_sizes"+, # parameters to add; [] when centred
                     "message"+,         # why refused or flagged; "" when fine
                     "params"+, "losses"+, "fids"+,  # the runs, for figures
                     "parabola"+: [c0, c1, c2]}],  # loss = c0 + c1 x + c2 x^2, x = log10 N
        "weighted"+: {"n_opt": {...}, "d_opt": {...}} | null},  # 1 / sd^2-weighted variant
     "approach3": {"E", "A", "B", "alpha", "beta", "a", "b", "ci": {name: [lo, hi] | null},
                   "points"+, "at_bound"+} | null,   # L(N, D) = E + A/N^alpha + B/D^beta,
                                         # variable projection, least squares on log loss
     "approach3_huber"+: {"E", "A", "B", "alpha", "beta", "a", "b", "points", "at_bound"} | null,
                                         # the Huber fit (Besiroglu et al.), point estimate
     "agreement"+: {"a": {"approach2": [v, lo, hi], "approach3": [v, lo, hi],
                          "difference": [d, lo, hi],  # Approach 2 - 3 over the same draws
                          "consistent"},  # the difference's interval holds 0
                    "b": {...}} | null,  # exponents of N_opt (a) and D_opt (b) by both approaches
     "convention": "6ND", "flops_per_multiply_add": 2, "schema"+: "dit-scaling/laws/1",
     "source"+: "fit" | "paper", "compute_range"+: [lo, hi],  # budgets the laws rest on, FLOPs
     "warnings"+: [str], "options"+: {FitOptions fields} | null,
     "run_noise"+: {"sigma", "dof": n | null} | null,  # one run's relative seed noise, as
                                         # estimated (dof null: known or assumed)
     "draws"+: {"n_opt": [[coefficient, exponent], ...], "d_opt": ..., "loss": ..., "fid": ...,
                "approach3": [[E, A, B, alpha, beta], ...] | null}}

`draws` keeps the bootstrap pairs of the four Approach 2 laws (7 significant digits, as the object
holds them) so that `LawFit.from_json(text).predict(C)` gives exactly the intervals of the original,
and Approach 3's draws (7 significant digits) so that its loss at a given N and D has an interval
(`ParametricFit.loss_interval`) after a round trip.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scaling.laws.bootstrap import interval, one_run
from scaling.laws.isoflop import BudgetFit, vertices
from scaling.laws.parametric import ParametricFit
from scaling.laws.powerlaw import PowerLaw, SaturatingLaw, rounded

SCHEMA = "dit-scaling/laws/1"
FEW_SIZES = 5  # budgets with fewer distinct sizes get seed noise in their bootstrap draws
LAWS = ("n_opt", "d_opt", "loss", "fid")
NOT_ESTIMABLE = "not estimable"  # printed for an interval the data cannot support (see warnings)
LAW_LABELS = {"n_opt": "N_opt (parameters)", "d_opt": "D_opt (tokens)", "loss": "loss at optimum",
              "fid": "FID at optimum"}


@dataclass(frozen=True)
class FitOptions:
    """How laws are fitted.

    draws: bootstrap draws (at least 20; 1,000 for reported intervals).
    noise_sigma: the loss's relative seed-to-seed sd when it is known (e.g. measured from repeated
      runs); the parametric bootstrap then uses it instead of estimating it. 0 (default):
      estimated from the fits' residuals (see `fit.py`).
    seed_noise: relative sd assumed when the runs cannot estimate it (no budget has more than 3
      runs, or Approach 3 has exactly 5), so that intervals rest on a stated assumption instead
      of being zero-width. Default 0.005, the seed-to-seed noise Porian et al. 2024 measured;
      0 turns it off, and such intervals are then not reported.
    floor_spacing: floor on the sd of a budget's log10 N_opt draws, as a fraction of its grid's
      log10 spacing, for callers of `isoflop.fit_budget` (pairs resampling); default 0, no floor.
      `fit_laws` never applies one: a floor tied to the design's own spacing tells a wide grid it
      knows less than it does (`benchmarks/calibration.py` measures it).
    saturating: also fit L = E + A C^-alpha to the optimum losses (needs 3 budgets).
    approach3: also fit the parametric L(N, D) to every run (needs 5 runs).
    convention: the compute convention of the runs, "6ND" or "exact" (a label, nothing converted).
    seed: seed of the bootstrap's random numbers.
    """

    draws: int = 1000
    noise_sigma: float = 0.0
    seed_noise: float = 0.005
    floor_spacing: float = 0.0
    saturating: bool = False
    approach3: bool = True
    convention: str = "6ND"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.draws < 20:
            raise ValueError(f"FitOptions.draws={self.draws} must be at least 20")
        if not (self.noise_sigma >= 0 and math.isfinite(self.noise_sigma)):
            raise ValueError(f"FitOptions.noise_sigma={self.noise_sigma} must be >= 0")
        if not (self.seed_noise >= 0 and math.isfinite(self.seed_noise)):
            raise ValueError(f"FitOptions.seed_noise={self.seed_noise} must be >= 0")
        if not (self.floor_spacing >= 0 and math.isfinite(self.floor_spacing)):
            raise ValueError(f"FitOptions.floor_spacing={self.floor_spacing} must be >= 0")
        if self.convention not in ("6ND", "exact"):
            raise ValueError(f"FitOptions.convention={self.convention!r} is not '6ND' or 'exact'")


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval (None for a law quoted without intervals)."""

    value: float
    ci: tuple[float, float] | None = None

    def text(self, fmt: str = ".4g") -> str:
        if self.ci is None:
            return f"{self.value:{fmt}}"
        return f"{self.value:{fmt}} [{self.ci[0]:{fmt}}, {self.ci[1]:{fmt}}]"


@dataclass(frozen=True)
class Prediction:
    """Compute-optimal N (parameters), D (tokens), loss and FID at `compute` FLOPs.

    extrapolation_decades: how far `compute` lies outside the budgets the laws were fitted on, in
    decades (0 inside the range).
    notes: why a fitted value comes without an interval.
    """

    compute: float
    n_opt: Estimate
    d_opt: Estimate
    loss: Estimate
    fid: Estimate | None
    extrapolation_decades: float
    convention: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return clean_json(asdict(self))

    def text(self) -> str:
        lines = [f"At C = {self.compute:.3g} FLOPs (convention {self.convention}, multiply-add = 2 "
                 f"FLOPs), values with 95% intervals:",
                 f"  N_opt  {self.n_opt.text()} parameters",
                 f"  D_opt  {self.d_opt.text()} tokens",
                 f"  loss   {self.loss.text()}"]
        if self.fid is not None:
            lines.append(f"  FID    {self.fid.text()}")
        if self.extrapolation_decades > 0:
            lines.append(f"  extrapolates {self.extrapolation_decades:.2f} decades beyond the "
                         "fitted budgets")
        else:
            lines.append("  within the fitted budgets")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class LawFit:
    """Compute-optimal laws from an isoFLOP study (Approach 2), with the Approach 3 cross-check.

    budgets holds every budget, refused ones included; compute_range spans the budgets the laws
    rest on. `warnings` lists refused or off-centre budgets and disagreements, in plain words.
    approach3 is the variable-projection least-squares fit with intervals; approach3_huber the
    Huber fit of Besiroglu et al. beside it (point estimate). weighted: the N_opt and D_opt laws
    weighted by 1 / sd^2 of each optimum, beside the unweighted headline. paired[name]:
    (Approach 2 - Approach 3, lo, hi) of exponent a or b over the same bootstrap draws.
    run_noise: (relative sd of one run's loss about the fitted curves, its degrees of freedom; inf
    when known or assumed), the seed noise Approach 2's draws carry; for the loss of one new run.
    """

    n_opt: PowerLaw
    d_opt: PowerLaw
    loss: PowerLaw
    fid: PowerLaw | None
    compute_range: tuple[float, float]
    budgets: tuple[BudgetFit, ...] = ()
    approach3: ParametricFit | None = None
    loss_saturating: SaturatingLaw | None = None
    convention: str = "6ND"
    warnings: tuple[str, ...] = ()
    source: str = "fit"
    options: FitOptions | None = None
    approach3_huber: ParametricFit | None = None
    weighted: dict[str, PowerLaw] | None = None
    paired: dict[str, tuple[float, float, float]] | None = None
    run_noise: tuple[float, float] | None = None

    def law(self, name: str) -> PowerLaw | None:
        if name not in LAWS:
            raise KeyError(f"law {name!r} is not one of {', '.join(LAWS)}")
        return getattr(self, name)

    def predict(self, compute: float) -> Prediction:
        """N_opt, D_opt, loss and FID at `compute` FLOPs with 95% intervals from the draws."""
        if not (math.isfinite(compute) and compute > 0):
            raise ValueError(f"compute={compute} FLOPs must be positive and finite")
        lo, hi = self.compute_range
        decades = max(0.0, math.log10(compute / hi), math.log10(lo / compute))

        def estimate(law: PowerLaw) -> Estimate:
            ci = law.interval(compute)
            return Estimate(float(law(compute)),
                            None if ci is None else (float(ci[0]), float(ci[1])))

        laws = {name: law for name in LAWS if (law := self.law(name)) is not None}
        notes = () if self.source == "paper" else tuple(
            f"no interval on {LAW_LABELS[name]}: the runs cannot support one (see the fit's "
            "warnings)" for name, law in laws.items() if law.draws is None)
        return Prediction(
            compute=float(compute),
            n_opt=estimate(self.n_opt),
            d_opt=estimate(self.d_opt),
            loss=estimate(self.loss),
            fid=None if self.fid is None else estimate(self.fid),
            extrapolation_decades=decades,
            convention=self.convention,
            notes=notes,
        )

    def loss_run_interval(self, compute: float) -> tuple[float, float] | None:
        """95% interval of the loss one run at N_opt(compute) would measure (FLOPs): the loss
        law's draws there with one run's seed noise on each (`bootstrap.one_run`); None without
        draws or a noise estimate."""
        return self._run_interval(self.loss.values(compute))

    def approach3_run_interval(self, params: float, tokens: float) -> tuple[float, float] | None:
        """95% interval of the loss one run of `params` parameters trained on `tokens` tokens
        would measure, by Approach 3's L(N, D): its draws there with one run's seed noise; None
        without draws, with a parameter on a bound, or without a noise estimate."""
        p = self.approach3
        return None if p is None else self._run_interval(p.loss_draws(params, tokens))

    def vertex_run_interval(self, compute: float, params: Sequence[float],
                            tokens: Sequence[float]) -> tuple[float, float, float] | None:
        """Where the vertex of a parabola in log10 N through three runs of `params` parameters
        trained on `tokens` tokens at `compute` FLOPs would fall if the N_opt law holds:
        (lo, hi, share of draws with no minimum between the sizes), lo and hi in parameters.

        Three runs' vertex is off the optimum by their seed noise and by the window's own
        bias, both large next to a law's interval (0.07-0.11 decades sd for sizes x0.5, x1, x2
        at 0.5-2% noise on the benchmark surfaces). Draw k: the N_opt law's draw at `compute`,
        moved by how far the vertex of the three runs' losses on Approach 3's draw k, with one
        run's seed noise on each (`bootstrap.one_run`), lies from that curve's own minimum along
        the same isoFLOP line. None without the law's or Approach 3's draws or a noise estimate.
        """
        p, law = self.approach3, self.n_opt.values(compute)
        if p is None or p.draws is None or p.at_bound or law is None or self.run_noise is None:
            return None
        x = np.log10(np.asarray(params, dtype=float))
        log_d = np.log10(np.asarray(tokens, dtype=float))
        if x.size != 3 or np.unique(x).size != 3:
            raise ValueError(f"three distinct sizes needed, got {list(params)}")
        k = min(law.shape[0], p.draws.shape[0])
        E, A, B, alpha, beta = (p.draws[:k, i, None] for i in range(5))

        def loss(xs: np.ndarray, ds: np.ndarray) -> np.ndarray:  # [k, len(xs)]
            return E + A / 10 ** (alpha * xs) + B / 10 ** (beta * ds)

        vertex = vertices(10 ** x, one_run(loss(x, log_d), *self.run_noise))
        # each curve's minimum along the line, on a grid 0.001 decades fine over 3 decades
        grid = np.linspace(x.mean() - 1.5, x.mean() + 1.5, 3001)
        line = np.polyfit(x, log_d, 1)  # the runs' isoFLOP line, log10 D on log10 N
        minimum = grid[np.argmin(loss(grid, np.polyval(line, grid)), axis=1)]
        at = np.log10(law[:k]) + vertex - minimum
        if np.isnan(at).all():
            return None
        lo, hi = interval(at)
        return float(10 ** lo), float(10 ** hi), float(np.isnan(at).mean())

    def _run_interval(self, expected: np.ndarray | None) -> tuple[float, float] | None:
        if expected is None or self.run_noise is None:
            return None
        lo, hi = interval(one_run(np.asarray(expected, dtype=float).reshape(-1),
                                  *self.run_noise))
        return float(lo), float(hi)

    def agreement(self) -> dict[str, dict[str, Any]] | None:
        """Approach 2 and 3 exponents of N_opt (a) and D_opt (b) and their paired difference over
        the same bootstrap draws; consistent = the difference's 95% interval holds 0."""
        p = self.approach3
        if p is None or not p.ci or not self.paired:
            return None
        out = {}
        for name, law, value in (("a", self.n_opt, p.a), ("b", self.d_opt, p.b)):
            d = self.paired.get(name)
            if law.exponent_ci is None or p.ci.get(name) is None or d is None:
                continue  # an interval that cannot be estimated cannot be compared
            if not all(math.isfinite(x) for x in d):
                continue
            lo2, hi2 = law.exponent_ci
            lo3, hi3 = p.ci[name]
            out[name] = {"approach2": [law.exponent, lo2, hi2], "approach3": [value, lo3, hi3],
                         "difference": list(d), "consistent": bool(d[1] <= 0 <= d[2])}
        return out or None

    # ---- plain text -------------------------------------------------------------------------

    def table(self) -> str:
        """The laws as a table: form, coefficient, exponent, 95% intervals, budgets used."""
        used = sum(not b.refused for b in self.budgets)
        head = (f"Compute-optimal laws; C in FLOPs (multiply-add = 2 FLOPs), convention "
                f"{self.convention}" + (": C = 6 N D" if self.convention == "6ND" else ""))
        if self.source == "paper":
            head += "\nSource: the paper (Liang et al., ICLR 2026), quoted without intervals"
        else:
            draws = self.options.draws if self.options else 0
            head += (f"\nApproach 2: isoFLOP parabolas in log10 N, {used} of {len(self.budgets)}"
                     f" budgets used, laws by least squares through their vertices; 95% "
                     f"intervals from {draws} parametric bootstrap draws (noise from residuals)")
        rows = [("law", "form", "coefficient", "95% interval", "exponent", "95% interval",
                 "budgets")]
        missing = "-" if self.source == "paper" else NOT_ESTIMABLE
        for name in LAWS:
            law = self.law(name)
            if law is None:
                continue
            rows.append((LAW_LABELS[name], "k * C^e", _num(law.coefficient, ".4g"),
                         _ci(law.coefficient_ci, ".3g", missing), _num(law.exponent, ".4f"),
                         _ci(law.exponent_ci, ".4f", missing), str(law.budgets or "-")))
        lines = [head, text_columns(rows)]
        if self.weighted:
            parts = [f"{LAW_LABELS[k].split()[0]} exponent {w.exponent:.4f} "
                     f"{_ci(w.exponent_ci, '.4f', NOT_ESTIMABLE)}"
                     for k, w in self.weighted.items()]
            lines.append("Weighted variant (each budget by 1 / sd^2 of its optimum): "
                         + ", ".join(parts))
        s = self.loss_saturating
        if s is not None:
            ci = {k: _ci(s.ci.get(k), fmt, NOT_ESTIMABLE)
                  for k, fmt in (("E", ".4g"), ("A", ".4g"), ("alpha", ".4f"))}
            lines.append(f"Saturating loss: L = E + A * C^-alpha, E {s.E:.4g} {ci['E']}, "
                         f"A {s.A:.4g} {ci['A']}, alpha {s.alpha:.4f} {ci['alpha']} "
                         f"({s.budgets} budgets)")
        p = self.approach3
        h = self.approach3_huber
        if p is not None:
            lines.append(f"Approach 3: L(N, D) = E + A/N^alpha + B/D^beta by variable projection "
                         f"(least squares on log loss, E, A, B by nonnegative least squares), "
                         f"{p.points} runs"
                         + ("; beside it the Huber fit (delta 1e-3 on log loss, Besiroglu et "
                            "al. 2024)" if h is not None else ""))
            prow = [("parameter", "value", "95% interval") + (("Huber",) if h else ())]
            for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
                prow.append((name, f"{getattr(p, name):.4g}",
                             _ci(p.ci.get(name), ".4g", NOT_ESTIMABLE if p.ci else "-"))
                            + ((f"{getattr(h, name):.4g}",) if h else ()))
            lines.append(text_columns(prow))
            if p.at_bound:
                lines.append(f"  {', '.join(p.at_bound)} ended on a bound: do not trust this fit")
            if h is not None and h.at_bound:
                lines.append(f"  Huber: {', '.join(h.at_bound)} ended on a bound: do not trust "
                             "that fit")
        agree = self.agreement()
        if agree:
            for name, label in (("a", "N_opt exponent a"), ("b", "D_opt exponent b")):
                if name not in agree:
                    continue
                v2, v3 = agree[name]["approach2"], agree[name]["approach3"]
                d = agree[name]["difference"]
                verdict = "consistent" if agree[name]["consistent"] else "DISAGREE"
                lines.append(f"{label}: Approach 2 {v2[0]:.4f} [{v2[1]:.4f}, {v2[2]:.4f}], "
                             f"Approach 3 {v3[0]:.4f} [{v3[1]:.4f}, {v3[2]:.4f}], paired "
                             f"difference {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]: {verdict}")
        if self.budgets:
            brow = [("budget (FLOPs)", "points", "N_opt", "95% interval", "D_opt", "loss_opt",
                     "centred")]
            for b in self.budgets:
                if b.refused:
                    brow.append((f"{b.compute:.3g}", str(b.points), "refused", "-", "-", "-",
                                 "no"))
                else:
                    brow.append((f"{b.compute:.3g}", str(b.points), f"{b.n_opt:.4g}",
                                 _ci(b.n_opt_ci, ".3g", NOT_ESTIMABLE), f"{b.d_opt:.4g}",
                                 f"{b.loss_opt:.4g}",
                                 "yes" if b.centred else "no"))
            lines.append(text_columns(brow))
        if self.warnings:
            lines.append("Warnings:")
            lines.extend(f"- {w}" for w in self.warnings)
        return "\n".join(lines)

    # ---- JSON -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON schema (module docstring) as plain Python values."""
        def law(x: PowerLaw | None) -> dict | None:
            if x is None:
                return None
            return {"coefficient": x.coefficient, "exponent": x.exponent,
                    "exponent_ci": x.exponent_ci, "coefficient_ci": x.coefficient_ci,
                    "budgets": x.budgets, "scatter": x.scatter}

        s, p, h = self.loss_saturating, self.approach3, self.approach3_huber
        out = {
            "approach2": {
                **{name: law(self.law(name)) for name in LAWS},
                "loss_saturating": None if s is None else {
                    "E": s.E, "A": s.A, "alpha": s.alpha, "ci": s.ci, "budgets": s.budgets,
                    "at_bound": list(s.at_bound)},
                "budgets": [_budget_dict(b) for b in self.budgets],
                "weighted": None if not self.weighted else {
                    k: law(w) for k, w in self.weighted.items()},
            },
            "approach3": None if p is None else {
                "E": p.E, "A": p.A, "B": p.B, "alpha": p.alpha, "beta": p.beta, "a": p.a,
                "b": p.b, "ci": p.ci, "points": p.points, "at_bound": list(p.at_bound)},
            "approach3_huber": None if h is None else {
                "E": h.E, "A": h.A, "B": h.B, "alpha": h.alpha, "beta": h.beta, "a": h.a,
                "b": h.b, "points": h.points, "at_bound": list(h.at_bound)},
            "agreement": self.agreement(),
            "convention": self.convention,
            "flops_per_multiply_add": 2,
            "schema": SCHEMA,
            "source": self.source,
            "compute_range": list(self.compute_range),
            "warnings": list(self.warnings),
            "options": None if self.options is None else asdict(self.options),
            "run_noise": None if self.run_noise is None else {
                "sigma": self.run_noise[0],
                "dof": self.run_noise[1] if math.isfinite(self.run_noise[1]) else None},
            "draws": {**{name: None if (x := self.law(name)) is None or x.draws is None
                         else x.draws.tolist() for name in LAWS},
                      "approach3": None if p is None or p.draws is None
                      else rounded(p.draws).tolist()},
        }
        return clean_json(out)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> LawFit:
        """Rebuild a LawFit from `to_json()` text or `to_dict()` output."""
        if isinstance(data, str):
            data = json.loads(data)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"laws JSON has schema {data.get('schema')!r}, expected {SCHEMA!r}")
        a2, draws = data["approach2"], data.get("draws") or {}

        def law(name: str) -> PowerLaw | None:
            d = a2.get(name)
            if d is None:
                return None
            raw = draws.get(name)
            # JSON stores a NaN (a fit the optima could not support) as null: back to NaN.
            return PowerLaw(_float(d["coefficient"]), _float(d["exponent"]),
                            _float_pair(d["coefficient_ci"]), _float_pair(d["exponent_ci"]),
                            d.get("budgets", 0),
                            None if raw is None else np.asarray(raw, dtype=float),
                            d.get("scatter", 1.0))

        s, p, h = a2.get("loss_saturating"), data.get("approach3"), data.get("approach3_huber")
        options = data.get("options")
        agree = data.get("agreement") or {}
        weighted = a2.get("weighted")
        return cls(
            n_opt=law("n_opt"), d_opt=law("d_opt"), loss=law("loss"), fid=law("fid"),
            compute_range=_tuple(data["compute_range"]),
            budgets=tuple(_budget_from(b) for b in a2.get("budgets", [])),
            approach3=None if p is None else ParametricFit(
                E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"],
                ci={k: _tuple(v) for k, v in p["ci"].items()}, points=p.get("points", 0),
                draws=None if draws.get("approach3") is None
                else np.asarray(draws["approach3"], dtype=float),
                at_bound=tuple(p.get("at_bound", ()))),
            loss_saturating=None if s is None else SaturatingLaw(
                E=s["E"], A=s["A"], alpha=s["alpha"],
                ci={k: _tuple(v) for k, v in s["ci"].items()}, budgets=s.get("budgets", 0),
                at_bound=tuple(s.get("at_bound", ()))),
            convention=data["convention"],
            warnings=tuple(data.get("warnings", ())),
            source=data.get("source", "fit"),
            options=None if options is None else FitOptions(**options),
            approach3_huber=None if h is None else ParametricFit(
                E=h["E"], A=h["A"], B=h["B"], alpha=h["alpha"], beta=h["beta"], ci={},
                points=h.get("points", 0), at_bound=tuple(h.get("at_bound", ()))),
            weighted=None if not weighted else {
                k: PowerLaw(_float(w["coefficient"]), _float(w["exponent"]),
                            _float_pair(w["coefficient_ci"]), _float_pair(w["exponent_ci"]),
                            w.get("budgets", 0), None, w.get("scatter", 1.0))
                for k, w in weighted.items()},
            paired={k: tuple(v["difference"]) for k, v in agree.items()
                    if "difference" in v} or None,
            run_noise=None if (r := data.get("run_noise")) is None else (
                float(r["sigma"]), math.inf if r["dof"] is None else float(r["dof"])),
        )


def _budget_dict(b: BudgetFit) -> dict[str, Any]:
    return {
        "compute": b.compute, "n_opt": b.n_opt, "n_opt_ci": b.n_opt_ci, "d_opt": b.d_opt,
        "loss_opt": b.loss_opt, "points": b.points, "centred": b.centred,
        "status": "refused" if b.refused else "optimum", "log10_n_opt_ci": b.log10_n_ci,
        "d_opt_ci": b.d_opt_ci, "loss_opt_ci": b.loss_opt_ci, "fid_opt": b.fid_opt,
        "fid_opt_ci": b.fid_opt_ci, "edge_fraction": b.edge_fraction,
        "suggested_sizes": list(b.suggested_sizes), "message": b.message,
        "params": list(b.params), "losses": list(b.losses), "fids": list(b.fids),
        "parabola": b.parabola,
    }


def _budget_from(d: dict[str, Any]) -> BudgetFit:
    return BudgetFit(
        compute=d["compute"], params=tuple(d["params"]), losses=tuple(d["losses"]),
        fids=tuple(d["fids"]), parabola=_tuple(d["parabola"]), centred=d["centred"],
        n_opt=d["n_opt"], n_opt_ci=_tuple(d["n_opt_ci"]), d_opt=d["d_opt"],
        d_opt_ci=_tuple(d["d_opt_ci"]), loss_opt=d["loss_opt"],
        loss_opt_ci=_tuple(d["loss_opt_ci"]), fid_opt=d["fid_opt"],
        fid_opt_ci=_tuple(d["fid_opt_ci"]), edge_fraction=d["edge_fraction"],
        suggested_sizes=tuple(d["suggested_sizes"]), message=d["message"],
    )


def _float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _float_pair(x: Any) -> tuple[float, float] | None:
    return None if x is None else (_float(x[0]), _float(x[1]))


def _tuple(x: Any) -> tuple | None:
    return None if x is None else tuple(x)


def clean_json(x: Any) -> Any:
    """JSON-safe: tuples to lists, numpy scalars to floats, NaN to None."""
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean_json(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _num(value: float | None, fmt: str) -> str:
    """A fitted number, or NOT_ESTIMABLE where the fit gave none (NaN, stored as null)."""
    return NOT_ESTIMABLE if value is None or not math.isfinite(value) else f"{value:{fmt}}"


def _ci(ci: tuple[float, float] | None, fmt: str = ".4g", missing: str = "-") -> str:
    if ci is None or not all(v is not None and math.isfinite(v) for v in ci):
        return missing
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def text_columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
