"""Design of isoFLOP experiments: what one more trial at (budget, size) tells about the target.

Units: x = ln N (N in parameters), c = ln C (C in FLOPs); losses are dimensionless; a trial at a
budget costs that budget's FLOPs.

Model. Near its minimum a budget's losses follow a parabola in x, loss = c0 + c1 u + c2 u^2 with
u = x - x* (x* its vertex), with independent errors of sd sigma (relative noise x loss). For the
design X (rows 1, u, u^2 of the sizes tried or issued), least squares gives Cov(c) =
sigma^2 (X'X)^-1, and by the delta method the vertex has variance
v = sigma^2 [(X'X)^-1]_11 / (4 c2^2). It depends on where the sizes are, not on the losses still
to come, so trials issued but not yet back count as evidence already placed: several slots are
filled at once without placing two trials alike.

Target. The standard Approach 2 law is the least-squares line of ln N_opt on ln C through the
budgets' vertices: its slope a = sum h_i x*_i with h_i = (c_i - mean c) / S_cc, and ln N_opt at a
target budget C_t = sum h_i x*_i with h_i = 1/k + (c_t - mean c)(c_i - mean c) / S_cc. So
Var(target) = sum h_i^2 v_i.

Window bias. The isoFLOP curve is not a parabola: for L = E + A/N^alpha + B/D^beta it is, up to
scale, beta e^(-alpha u) + alpha e^(beta u) in u = ln N - ln N_opt, and a parabola fitted to it on
a wide or off-centre window puts its vertex off the minimum even without noise (arXiv
2603.22339). The shift for a given design is computed exactly on that curve, with the exponents
the study's own trials give (the allocator's `curve_shape`; SHAPE, the most asymmetric built-in
surface's, until it has enough): b_i, in ln N. The shift grows with beta - alpha, so an assumed
shape that overstates the asymmetry moves designs to balance shifts that are not there. Designs
of one shape at every budget shift every vertex alike, which leaves the exponent alone; what the
criterion counts is the rest:

    expected squared error = sum h_i^2 v_i + (KAPPA sum h_i b_i)^2

The shifts are reckoned about each budget's minimum, and a fitted vertex already carries its own
window's shift: the minimum it implies is the vertex less that shift (`debiased_vertex`). Reckoned
about the fitted vertices instead, a budget whose window reaches far out on one side looks
balanced against the others while its vertex sits off by a different amount.

Candidate sizes stay within `window(noise)` of the centre (MAX_WINDOW at 0.5% noise, wider as the
noise grows), or as far as the design already reaches on the other side, so that a size placed far
out can be mirrored.

Choice: the candidate (budget, size) that most reduces that expected squared error per FLOP it
trains (with run reuse, a branch trains only its cooldown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KAPPA = 1.0  # weight of the window-bias term (0: variance only)
SHAPE = (0.25, 0.45)  # (alpha, beta) of the isoFLOP curve assumed for the window bias before a
# study's trials say more: the most asymmetric built-in surface's
MAX_WINDOW = math.log(16.0)  # candidates within this of the centre in ln N at WINDOW_NOISE ...
WIDEST_WINDOW = math.log(64.0)  # ... widening as sqrt(noise) up to this (the parabola's rise
WINDOW_NOISE = 0.005  # over the window keeps pace with the noise)
SPREAD = 1e-3  # weight of the budgets' own vertex variances beside the target's (tie-break)
Z95 = 1.959964


@dataclass(frozen=True)
class Parabola:
    """Least-squares parabola of one budget's losses in x = ln N (N in parameters).

    vertex: ln N at the parabola's minimum (NaN when it opens downward); curvature: c2 in loss per
    (ln N)^2; curvature_info: 1 / Var(c2) per unit sigma^2; loss_opt: loss at the vertex;
    lo, hi: the sampled ln N range; residual: sum of squared relative residuals, dof: runs - 3.
    """

    vertex: float
    curvature: float
    curvature_info: float
    loss_opt: float
    lo: float
    hi: float
    residual: float
    dof: int

    @property
    def inside(self) -> bool:
        """Convex with its minimum within the sampled sizes: an optimum, not an edge."""
        return self.curvature > 0 and self.lo <= self.vertex <= self.hi

    @property
    def centred(self) -> bool:
        """The vertex lies in the middle third of the sampled range."""
        third = (self.hi - self.lo) / 3
        return self.inside and self.lo + third <= self.vertex <= self.hi - third


def fit_parabola(log_n: np.ndarray, losses: np.ndarray) -> Parabola | None:
    """The parabola through one budget's runs (ln N, loss); None with fewer than 3 sizes."""
    x, y = np.asarray(log_n, dtype=float), np.asarray(losses, dtype=float)
    if np.unique(x).size < 3:
        return None
    xbar = float(x.mean())
    c0, c1, c2 = np.polynomial.polynomial.polyfit(x - xbar, y, 2)
    fitted = np.polynomial.polynomial.polyval(x - xbar, (c0, c1, c2))
    residual = float((np.log(y / np.maximum(fitted, 1e-300)) ** 2).sum())
    vertex = xbar - c1 / (2 * c2) if c2 > 0 else math.nan
    u = x - (vertex if c2 > 0 else xbar)
    info = moments(u)
    try:
        c2_info = 1.0 / float(np.linalg.inv(info)[2, 2])
    except np.linalg.LinAlgError:
        c2_info = 0.0
    loss_opt = c0 - c1**2 / (4 * c2) if c2 > 0 else float(y.min())
    return Parabola(float(vertex), float(c2), c2_info, float(loss_opt), float(x.min()),
                    float(x.max()), residual, int(x.size - 3))


def moments(u: np.ndarray) -> np.ndarray:
    """X'X of the quadratic design in u, [..., 3, 3] (u: [..., n])."""
    powers = np.asarray(u, dtype=float)[..., None, :] ** np.arange(5)[:, None]
    s = powers.sum(-1)
    return s[..., [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]


def vertex_terms(u: np.ndarray, extra: np.ndarray | None = None,
                 shape: tuple[float, float] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """[(X'X)^-1]_11 and the window bias (ln N) of a design in u = ln N - vertex, each also with
    one more size at every `extra` u: arrays [1 + len(extra)] (inf / 0 when singular). The bias
    is the vertex of the design's least-squares parabola through the isoFLOP curve of exponents
    `shape` = (alpha, beta) (see `bias_curve`) with its minimum at u = 0."""
    u = np.asarray(u, dtype=float)
    extra = np.zeros(0) if extra is None else np.asarray(extra, dtype=float)
    e = extra[:, None] ** np.arange(5)  # [k, 5]: 1, u, ..., u^4 of each added size
    base = (u[None, :] ** np.arange(5)[:, None]).sum(-1)  # power sums of the design
    sums = np.concatenate([base[None], base[None] + e])  # [1 + k, 5]
    f_u, f_e = bias_curve(u, shape), bias_curve(extra, shape)
    fb = (f_u[None, :] * u[None, :] ** np.arange(3)[:, None]).sum(-1)
    fs = np.concatenate([fb[None], fb[None] + f_e[:, None] * e[:, :3]])  # [1 + k, 3]
    m = sums[:, [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]
    det = np.linalg.det(m)
    ok = np.abs(det) > 1e-12 * np.maximum(1.0, np.abs(m).max((1, 2))) ** 3
    var = np.full(len(sums), math.inf)
    bias = np.zeros(len(sums))
    if ok.any():
        inv = np.linalg.inv(m[ok])
        var[ok] = inv[:, 1, 1]
        c = np.einsum("kij,kj->ki", inv, fs[ok])
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(c[:, 2] > 0, -c[:, 1] / (2 * c[:, 2]), 0.0)
        bias[ok] = np.clip(shift, -WIDEST_WINDOW, WIDEST_WINDOW)
    return var, bias


def bias_curve(u: np.ndarray, shape: tuple[float, float] = SHAPE) -> np.ndarray:
    """The isoFLOP curve of L = E + A/N^alpha + B/D^beta in u = ln N - ln N_opt, up to scale:
    beta e^(-alpha u) + alpha e^(beta u), minimal at u = 0 ((alpha, beta) = `shape`)."""
    alpha, beta = shape
    return beta * np.exp(-alpha * u) + alpha * np.exp(beta * u)


def debiased_vertex(log_n: np.ndarray, vertex: float, shape: tuple[float, float] = SHAPE,
                    steps: int = 20) -> float:
    """Where the minimum of the isoFLOP curve of `shape` (`bias_curve`) must lie (ln N) for a
    least-squares parabola over sizes `log_n` (ln N) to put its vertex at `vertex`: the fitted
    vertex less its own window bias, by fixed-point iteration (the bias changes slowly with the
    minimum's place, so a few steps settle it to 1e-4). When they do not (a curve far steeper
    than the window is wide), the vertex itself."""
    x = np.asarray(log_n, dtype=float)
    guess = float(vertex)
    for _ in range(steps):
        step = float(vertex) - float(vertex_terms(x - guess, shape=shape)[1][0]) - guess
        guess += step
        if abs(step) < 1e-4:
            return guess
    return float(vertex)


def window(noise: float) -> float:
    """Half-width (ln N) of the sizes a budget may add around its centre, at a relative loss
    noise `noise`: where a parabola rises a set number of noise sds, which grows as sqrt(noise)."""
    return float(np.clip(MAX_WINDOW * math.sqrt(noise / WINDOW_NOISE), MAX_WINDOW,
                         WIDEST_WINDOW))


def target_weights(log_c: np.ndarray, target: str, log_target: float | None = None
                   ) -> np.ndarray:
    """h_i with target = sum h_i x*_i for the least-squares line of ln N_opt on ln C: the slope
    (target "a") or the line's value at ln C = log_target (target "n_opt"). With one budget, or
    all budgets at one compute, the line has no slope: every budget weighs 1 / k."""
    c = np.asarray(log_c, dtype=float)
    k = c.size
    scc = float(((c - c.mean()) ** 2).sum())
    if k < 2 or scc <= 0:
        return np.full(k, 1.0 / max(k, 1))
    if target == "a":
        return (c - c.mean()) / scc
    return 1.0 / k + (log_target - c.mean()) * (c - c.mean()) / scc


@dataclass(frozen=True)
class BudgetDesign:
    """One budget as the criterion sees it: its FLOPs, its place in the line, the design so far
    (ln N of sizes finished, running or queued), its vertex (ln N), curvature c2 (loss per
    (ln N)^2), noise sd sigma (loss), the candidate sizes (ln N) it may still train and what
    each would train (FLOPs: less than the budget for a branch off a trunk, with run reuse), and
    the isoFLOP curve's (alpha, beta) its window bias is reckoned on."""

    compute: float
    weight: float  # h_i
    design: np.ndarray
    vertex: float
    curvature: float
    sigma: float
    candidates: np.ndarray
    costs: np.ndarray | None = None  # FLOPs each candidate trains (None: the budget's, each)
    shape: tuple[float, float] = SHAPE

    def variance(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertex variance (ln N squared) and window bias (ln N), now and with each candidate
        added."""
        var, bias = vertex_terms(self.design - self.vertex, self.candidates - self.vertex,
                                 self.shape)
        return var * (self.sigma / (2 * self.curvature)) ** 2, bias


@dataclass(frozen=True)
class Choice:
    """The best next trial: the budget's index in the designs, the candidate's index, the target's
    expected error (sd, ln units for "n_opt", absolute for "a") before and after, and the reduction
    of its expected squared error per FLOP."""

    budget: int
    candidate: int
    sd_before: float
    sd_after: float
    gain_per_flop: float
    candidates: int


def _error(designs, terms, kappa, swap: int | None) -> np.ndarray:
    """Expected squared error with the designs as they stand ([1]) or, for `swap` = i, with
    each of budget i's candidates added ([candidates])."""
    scale = float(np.mean([d.weight**2 for d in designs]))
    var = bias = spread = 0.0
    for i, (d, (v, m)) in enumerate(zip(designs, terms, strict=True)):
        k = slice(1, None) if i == swap else slice(0, 1)
        var = var + d.weight**2 * v[k]
        bias = bias + d.weight * m[k]
        spread = spread + v[k]
    return var + (kappa * bias) ** 2 + SPREAD * scale * spread


def expected_error(designs: list[BudgetDesign], kappa: float | None = None) -> float:
    """Expected squared error of the target under the designs as they stand."""
    kappa = KAPPA if kappa is None else kappa
    return float(_error(designs, [d.variance() for d in designs], kappa, None)[0])


def choose(designs: list[BudgetDesign], kappa: float | None = None) -> Choice | None:
    """The candidate that most reduces the target's expected squared error per FLOP; None when
    no budget has a candidate or none reduces it."""
    if not designs:
        return None
    kappa = KAPPA if kappa is None else kappa
    terms = [d.variance() for d in designs]
    before = float(_error(designs, terms, kappa, None)[0])
    best: Choice | None = None
    count = sum(d.candidates.size for d in designs)
    for i, d in enumerate(designs):
        if not d.candidates.size:
            continue
        after = _error(designs, terms, kappa, i)
        with np.errstate(invalid="ignore"):
            gain = (before - after) / (d.compute if d.costs is None else d.costs)
        gain = np.where(np.isfinite(gain), gain, -np.inf)
        j = int(np.argmax(gain))
        if gain[j] > 0 and (best is None or gain[j] > best.gain_per_flop):
            best = Choice(i, j, math.sqrt(before), math.sqrt(max(float(after[j]), 0.0)),
                          float(gain[j]), count)
    return best


def target_sd(designs: list[BudgetDesign]) -> float:
    """sd of the target from the vertex variances alone (no bias term), as its interval reads."""
    return math.sqrt(sum(d.weight**2 * d.variance()[0][0] for d in designs))


def shrink_curvatures(fits: list[Parabola], sigma_rel: float) -> list[float]:
    """Each budget's curvature c2, pulled toward the pooled relative curvature c2 / loss_opt as
    far as its own estimate is noisy (sd of c2: sigma / sqrt(curvature_info)); the relative
    curvature is assumed to vary by about half its value from budget to budget."""
    rel = np.array([f.curvature / f.loss_opt for f in fits])
    prec = np.array([f.curvature_info / sigma_rel**2 for f in fits])  # of the relative curvature
    if not fits:
        return []
    pooled = float((prec * rel).sum() / prec.sum()) if prec.sum() > 0 else float(np.median(rel))
    pooled = max(pooled, float(np.max(rel)) * 0.1, 1e-12)
    tau = 1 / (0.5 * pooled) ** 2
    out = (prec * rel + tau * pooled) / (prec + tau)
    return [float(max(r, 0.1 * pooled) * f.loss_opt) for r, f in zip(out, fits, strict=True)]
