"""Figures of a `LawFit` as PNG files (matplotlib's Agg canvas; no pyplot, no display needed).

- `isoflop_figure`: loss against N (log x) for every budget, the fitted parabolas, and each optimum
  with its 95% interval; refused budgets are drawn with hollow markers and no optimum.
- `power_law_figure`: N_opt, D_opt, loss and (when fitted) FID against C (log-log), the budgets'
  optima with their intervals, the fitted law and its 95% band over the fitted range and one decade
  beyond.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from scaling.laws.result import LawFit

DPI = 120


def isoflop_figure(fit: LawFit, path: str | Path) -> Path:
    """Loss vs parameters per budget with parabolas and optima; writes a PNG, returns its path."""
    if not fit.budgets:
        raise ValueError("isoflop_figure: this LawFit has no budgets (a quoted law has no runs)")
    fig = Figure(figsize=(7, 5), dpi=DPI)
    ax = fig.add_subplot()
    logs = np.log10([b.compute for b in fit.budgets])
    span = max(float(logs.max() - logs.min()), 1e-9)
    cmap = colormaps["viridis"]
    for b, lc in zip(fit.budgets, logs, strict=True):
        color = cmap(0.9 * (lc - logs.min()) / span)
        label = f"{b.compute:.2g} FLOPs" + (" (refused)" if b.refused else "")
        ax.scatter(b.params, b.losses, color=color, s=18, label=label,
                   facecolors="none" if b.refused else color)
        if b.parabola is not None:
            x = np.linspace(np.log10(min(b.params)) - 0.1, np.log10(max(b.params)) + 0.1, 100)
            c0, c1, c2 = b.parabola
            ax.plot(10**x, c0 + c1 * x + c2 * x**2, color=color, lw=1,
                    ls=":" if b.refused else "-")
        if not b.refused:
            lo, hi = b.n_opt_ci
            ax.errorbar([b.n_opt], [b.loss_opt], xerr=[[b.n_opt - lo], [hi - b.n_opt]],
                        color=color, marker="D", ms=6, mec="black", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")
    ax.set_title(f"isoFLOP profiles (convention {fit.convention}, multiply-add = 2 FLOPs)\n"
                 "diamonds: optima with 95% intervals", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def power_law_figure(fit: LawFit, path: str | Path) -> Path:
    """N_opt, D_opt, loss and FID vs compute with fitted laws and 95% bands; writes a PNG."""
    panels = [("n_opt", "N_opt (parameters)", "n_opt", "n_opt_ci"),
              ("d_opt", "D_opt (tokens)", "d_opt", "d_opt_ci"),
              ("loss", "loss at optimum", "loss_opt", "loss_opt_ci")]
    if fit.fid is not None:
        panels.append(("fid", "FID at optimum", "fid_opt", "fid_opt_ci"))
    rows = (len(panels) + 1) // 2
    fig = Figure(figsize=(10, 4 * rows), dpi=DPI)
    lo, hi = fit.compute_range
    grid = np.geomspace(lo / 3, hi * 10, 100)
    used = [b for b in fit.budgets if not b.refused]
    for i, (name, label, value, ci_name) in enumerate(panels):
        ax = fig.add_subplot(rows, 2, i + 1)
        law = fit.law(name)
        band = law.interval(grid)
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="tab:blue", alpha=0.2,
                            label="95% band")
        ax.plot(grid, law(grid), color="tab:blue",
                label=f"{law.coefficient:.3g} C^{law.exponent:.4f}")
        points = [(b.compute, getattr(b, value), getattr(b, ci_name)) for b in used
                  if getattr(b, value) is not None]
        if points:
            c, y, ci = zip(*points, strict=True)
            y = np.array(y)
            err = None
            if all(e is not None for e in ci):
                err = np.abs(np.array(ci).T - y)
            ax.errorbar(c, y, yerr=err, fmt="o", color="black", ms=4, capsize=3,
                        label="budget optima")
        ax.axvspan(lo, hi, color="grey", alpha=0.08)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"compute C (FLOPs, {fit.convention})")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Compute-optimal laws (multiply-add = 2 FLOPs; shaded: fitted budgets)",
                 fontsize=10)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
