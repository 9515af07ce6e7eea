"""Bootstrap draws: points resampled within each budget (`resample`, the allocator's quick fits),
the shared random numbers of the parametric bootstrap that `fit_laws` reports (`NoiseDraws`), and
one new run's loss about draws of its expected loss (`one_run`).

`resample`: one draw is a vector of counts (how often each run appears) and a vector of losses
(the observed ones, times exp(sigma * normal) when noise is asked for, as Porian et al. 2024 add
seed noise; sigma may differ per run, so that only budgets with few sizes get it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (2.5, 97.5)  # 95% intervals


@dataclass(frozen=True)
class Resamples:
    """counts[k, i]: copies of run i in draw k; losses[k, i]: its loss in draw k."""

    counts: np.ndarray
    losses: np.ndarray

    @property
    def draws(self) -> int:
        return self.counts.shape[0]


def resample(
    groups: Sequence[np.ndarray],
    params: np.ndarray,
    losses: np.ndarray,
    draws: int,
    rng: np.random.Generator,
    noise_sigma: float | np.ndarray = 0.0,
    min_sizes: int = 3,
) -> Resamples:
    """Resample runs with replacement within each group of run indices.

    A draw that leaves a group with fewer than `min_sizes` distinct sizes (fewer if the group has
    fewer) cannot fit a parabola, so that group is drawn again for it. noise_sigma: relative sd of
    the noise on each loss, one value or one per run ([n]).
    """
    counts = np.zeros((draws, params.size), dtype=np.int64)
    for members in groups:
        n = members.size
        _, size_of = np.unique(params[members], return_inverse=True)
        need = min(min_sizes, size_of.max() + 1)
        block = rng.multinomial(n, np.full(n, 1 / n), size=draws)
        for _ in range(200):
            distinct = np.zeros((draws, size_of.max() + 1), bool)
            for j in range(n):
                distinct[:, size_of[j]] |= block[:, j] > 0
            short = distinct.sum(1) < need
            if not short.any():
                break
            block[short] = rng.multinomial(n, np.full(n, 1 / n), size=int(short.sum()))
        else:
            block[short] = 1  # vanishingly rare: keep every run once
        counts[:, members] = block
    noisy = np.broadcast_to(losses, counts.shape).copy()
    sigma = np.broadcast_to(np.asarray(noise_sigma, dtype=float), (params.size,))
    if (sigma > 0).any():
        noisy *= np.exp(sigma * rng.standard_normal(noisy.shape))
    return Resamples(counts, noisy)


def interval(draws: np.ndarray, axis: int = 0) -> np.ndarray:
    """95% percentile interval of the draws along `axis`, ignoring NaN: [lo, hi] first."""
    return np.nanpercentile(draws, PERCENTILES, axis=axis)


def spreads(draws: np.ndarray, centre: float | np.ndarray = 0.0, axis: int = 0) -> np.ndarray:
    """Whether the draws vary at all along `axis`: by more than 1e-9 x max(|centre|, 1).

    Draws that do not vary carry no information on uncertainty (a budget of three sizes resampled
    without noise gives the same three runs every time); their percentile interval would have zero
    width, so callers report no interval instead."""
    scale = 1e-9 * np.maximum(np.abs(np.asarray(centre, dtype=float)), 1.0)
    return np.nanmax(draws, axis=axis) - np.nanmin(draws, axis=axis) > scale


CHUNK_CELLS = 4_000_000  # draws x runs held at once by `NoiseDraws.chunks` (16 MB of float32)


@dataclass(frozen=True)
class NoiseDraws:
    """Shared random numbers of the parametric bootstrap (`fit_laws`), generated in chunks.

    Draw k perturbs run i's loss by exp(sigma * scale(k, dof) * z[k, i]): z standard normal, and
    scale(k, dof) = sqrt(dof / chi2_dof) with chi2_dof the `quantiles[k]` quantile of a
    chi-square with `dof` degrees of freedom. Scaling each draw by an estimated sigma's own
    sampling spread makes the draws Student-t: with few residual degrees of freedom, a Gaussian
    with the estimated sigma would cover too little. The same z and quantile serve every
    approach, so the difference of two estimates over the same draws is a paired difference.
    Memory: one chunk of at most CHUNK_CELLS draws x runs at a time, never draws x runs.
    """

    draws: int
    runs: int
    seed: int

    @property
    def chunk(self) -> int:
        """Draws per chunk."""
        return max(1, min(self.draws, CHUNK_CELLS // max(self.runs, 1)))

    @property
    def quantiles(self) -> np.ndarray:
        """[draws] uniform quantiles of the per-draw noise scale."""
        return np.random.default_rng([self.seed, 0]).uniform(size=self.draws)

    def scale(self, dof: float) -> np.ndarray:
        """[draws] noise scale factors for a sigma estimated with `dof` degrees of freedom
        (inf: sigma known, every factor 1)."""
        if not np.isfinite(dof):
            return np.ones(self.draws)
        # chi2's quantile through scipy.special: the same numbers as scipy.stats.chi2.ppf, without
        # the ~0.5 s import of scipy.stats that a query would wait on
        from scipy.special import gammaincinv

        q = np.clip(self.quantiles, 1e-9, 1 - 1e-9)
        return np.sqrt(dof / (2 * gammaincinv(dof / 2, q)))

    def chunks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(draw slice, z [chunk, runs]) for consecutive chunks; the same every call."""
        for i, start in enumerate(range(0, self.draws, self.chunk)):
            stop = min(start + self.chunk, self.draws)
            rng = np.random.default_rng([self.seed, 1, i])
            # float32: half the memory and time of float64, and noise needs no more digits.
            yield slice(start, stop), rng.standard_normal((stop - start, self.runs),
                                                          dtype=np.float32)


RUN_SEED = 20_261_208  # fixed, so that a law's interval for one run is the same on every query


def one_run(expected: np.ndarray, sigma: float, dof: float) -> np.ndarray:
    """Draws of one new run's loss: each draw of its expected loss [K] times exp(sigma * t), t a
    Student-t with `dof` degrees of freedom (normal when inf: sigma known), independent of the
    draws. A single run carries the seed noise the fit measured in the runs' residuals on top of
    the law's uncertainty, so an interval meant to hold one measured run needs both."""
    rng = np.random.default_rng(RUN_SEED)
    t = rng.standard_normal(expected.shape) if not np.isfinite(dof) else \
        rng.standard_t(dof, expected.shape)
    return expected * np.exp(sigma * t)
