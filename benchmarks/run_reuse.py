"""Run reuse (trunks and cooldown branches) against training every isoFLOP point from scratch.

Two parts, printed in one run.

Real (CPU, built-in data at 16 px, no Ray: `scaling.train` itself): 2 sizes x 3 budgets with the
constant-then-cooldown schedule. Each size's run at the largest budget is its trunk and saves a
checkpoint at the smaller budgets' cooldown starts; each smaller budget's point is a branch that
restores it and trains its cooldown. Every (size, budget) also trains from scratch with seeds 0,
1, 2. Per point it prints the branch's validation loss, seed 0's from scratch, their relative gap
and the seed-to-seed spread (sd over the 3 seeds, relative). Goal: every branch within the spread.

Simulated (the paper's six budgets 1e17..6e18 FLOPs, C = 6ND with a multiply-add = 2 FLOPs, the
paper surface, 0.5% noise, the true N_opt law as prior, seeds as common random numbers): per
fixed design, the RMSE of the fitted N_opt exponent a about the truth (not the reported
interval), the grid's FLOPs from scratch and with reuse (a branch trains only its cooldown, 20%
of its steps). A branch on the simulated surface reports what its from-scratch run would (the
real part measures that gap). Designs: the centred grids 5 and 9 sizes x sqrt2, x2, x4 per budget
(what `run` trains), shared ladders, the same sizes at every budget, spanning every budget's
window (x2 and x sqrt2 apart), and the adaptive allocator with search/studies/paper.toml's
settings, which designs differently with reuse (a size with a trunk costs only its cooldown);
and, printed beside the last line, a shared ladder at 11 budgets over the same span (branches
make budgets between the paper's cheap). Designs are compared at
equal error: a design's cost of reaching a given RMSE is FLOPs x RMSE^2 (error falls as
1 / sqrt(compute) when a design is repeated), so the last line is the best reuse design's
FLOPs x RMSE^2 over the best from-scratch design's, on the paper's budgets:
`reuse/no-reuse FLOPs at equal RMSE: R` (goal <= 0.4).

    python benchmarks/run_reuse.py               # both parts, ~80 s on 2 cores
    python benchmarks/run_reuse.py --seeds 5 --skip-real

Measured here (2 cores, 20 seeds): every branch ends at exactly its from-scratch validation loss
(gap 0.0 against a seed spread of 0.5-1.0%), and `reuse/no-reuse FLOPs at equal RMSE: 0.97`, so
the goal (0.4) is not met. The best design from scratch is the centred 5 x4 grid (RMSE 0.013 on
5.5e19 FLOPs, FLOPs x RMSE^2 8.9e15), and with reuse the same grid (8.7e15): its sizes rarely
repeat across budgets, so it saves 3%. Designs whose sizes repeat save more but err more: the
shared x2 ladder (8 sizes at every budget) saves 36% at RMSE 0.026 (3.7e16), the allocator 18%
(RMSE 0.026 on 7.0e19 trained with reuse against 0.021 on 9.0e19 without; 4.8e16 and 3.9e16; an
RMSE over 20 seeds is known to about +-16%: over 60 seeds the allocator without reuse reads 0.023,
as it did before it reckoned window biases on its trials' curve shape). (Grids
centred on the 6ND heuristic instead of the prior made the centred grids look 3-20x worse and
gave 0.64 here before.) On the paper's budgets no design can reach 0.4: trials at the largest
budget (6e18) are trained whole, and a design needs at least three of them for a parabola there;
for the FLOPs it trains with reuse to be 0.4 of those from scratch, those trials must be under a
quarter of its FLOPs (largest x 1 + 0.2 x rest <= 0.4 x (largest + rest)), while the allocator
spends 56% of its FLOPs there from scratch and 65% with reuse (medians over 20 seeds). Even a
size trained at every budget spends (6e18 + 0.2 x 5e18) / 1.26e19 = 0.56 of its from-scratch
FLOPs. Eleven budgets over the same span save 53%, but give no smaller error than six (RMSE
0.026 both).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from scaling.builtin_data import write_builtin_dataset
from scaling.flops import plan_trial
from scaling.model import DiTConfig, ModelShape
from scaling.reuse import plan_reuse
from scaling.surface import PAPER_BUDGETS, SURFACES
from scaling.train import TrainConfig, train
from search.allocator import Prior
from search.branches import grid_cost, reuse_plan
from search.plan import simulate_study, simulated_template
from search.spec import StudySpec, load_spec, parse_spec
from search.study.proposers import grid_trials

REAL_BUDGETS = (1e10, 3e10, 1e11)
REAL_WIDTHS = (24, 40)  # depth 1, one head: ~26K and ~51K parameters on this data
GRIDS = [(k, s) for k in (5, 9) for s in (math.sqrt(2), 2.0, 4.0)]
PAPER_SPEC = Path(__file__).resolve().parent.parent / "search" / "studies" / "paper.toml"


# -- real ------------------------------------------------------------------------------------
def real_part(out: Path) -> list[tuple[str, float]]:
    info = write_builtin_dataset(out / "data", image_size=16, train_samples=2048,
                                 val_samples=256, ood_samples=64, samples_per_shard=512)
    base = TrainConfig(
        model=DiTConfig(ModelShape(1, 16, 1), image_size=16, in_channels=info.channels,
                        text_dim=info.text_dim, text_len=info.text_len, patch_size=4),
        steps=1, batch_size=16, train_urls=tuple(info.urls("train")),
        val_urls=tuple(info.urls("val")), lr=2e-3, warmup_steps=10,
        schedule="constant_cooldown", cooldown_fraction=0.2, report_every=50, val_samples=256,
        threads=1)
    print(f"real: built-in data {info.root}, budgets "
          f"{', '.join(f'{c:.0e}' for c in REAL_BUDGETS)} FLOPs, depth 1, widths {REAL_WIDTHS}")
    head = f"{'point':<18} {'branch':>8} {'scratch':>8} {'gap':>8} {'seed sd':>8}  within"
    print(head)
    gaps = []
    for width in REAL_WIDTHS:
        model = replace(base.model, shape=ModelShape(1, width, 1))
        cfgs = {c: replace(base, model=model,
                           steps=plan_trial(model, c, base.batch_size).steps)
                for c in REAL_BUDGETS}
        reuse = plan_reuse((str(c), width, cfg.lr_schedule()) for c, cfg in cfgs.items())
        trunk_key = str(max(REAL_BUDGETS))
        points = reuse.branch_points(trunk_key)
        keep = Path(tempfile.mkdtemp(dir=out))

        def report(metrics, checkpoint_dir, keep=keep, points=points):
            if checkpoint_dir is not None and int(metrics["step"]) in points:
                shutil.copytree(checkpoint_dir, keep / f"step{int(metrics['step'])}")

        trunk_cfg = replace(cfgs[max(REAL_BUDGETS)], branch_points=points)
        trunk = train(trunk_cfg, report)["val_loss"]
        for c, cfg in cfgs.items():
            scratch = [trunk if (c == max(REAL_BUDGETS)) and seed == 0 else
                       train(replace(cfg, seed=seed), lambda m, d: None)["val_loss"]
                       for seed in range(3)]
            b = reuse.branch_of(str(c))
            if b is None:
                continue
            branch = train(cfg, lambda m, d: None, resume_from=keep / f"step{b.step}")["val_loss"]
            gap = branch / scratch[0] - 1
            sd = statistics.stdev(scratch) / statistics.mean(scratch)
            gaps.append((f"w{width} C={c:.0e}", abs(gap) / sd))
            print(f"{f'w{width} C={c:.0e}':<18} {branch:8.4f} {scratch[0]:8.4f} {gap:+8.1e} "
                  f"{sd:8.1%}  {'yes' if abs(gap) <= sd else 'NO'}", flush=True)
    return gaps


# -- simulated -------------------------------------------------------------------------------
DENSE_BUDGETS = [float(f"{c:.2g}") for c in np.geomspace(PAPER_BUDGETS[0], PAPER_BUDGETS[-1], 11)]


def sim_spec(model: dict, seed: int, prior: Prior,
             budgets: list[float] = PAPER_BUDGETS) -> StudySpec:
    """A fixed-grid study centred on `prior` (with the default prior "none" a grid is centred on
    the 6ND heuristic whatever prior the simulation is given)."""
    return parse_spec({"name": "reuse", "seed": seed, "budgets": list(budgets),
                       "trainer": {"kind": "simulated", "surface": "paper", "noise": 0.005,
                                   "batch_size": 256},
                       "model": {"min_params": 1e5, "max_params": 2e10, **model},
                       "allocator": {"kind": "fixed", "prior": "explicit",
                                     "prior_coefficient": prior.coefficient,
                                     "prior_exponent": prior.exponent}})


def shared_sizes(prior: Prior, spacing: float, half_window: float = 4.0) -> list[float]:
    """One ladder for every budget: from the smallest budget's N_opt / half_window to the
    largest's x half_window, `spacing` apart."""
    lo = prior(PAPER_BUDGETS[0]) / half_window
    hi = prior(PAPER_BUDGETS[-1]) * half_window
    count = math.floor(math.log(hi / lo) / math.log(spacing)) + 1
    return [lo * spacing**i for i in range(count)]


def simulated_part(seeds: int, draws: int) -> float:
    surface = SURFACES["paper"]
    truth = surface.exponents().a
    c0 = PAPER_BUDGETS[0]
    prior = Prior(surface.optimum(c0).n_opt / c0**truth, truth, "the surface's own law")
    designs = [(f"centred {k} x{s:.3g}", {"sizes_per_budget": k, "size_spacing": s})
               for k, s in GRIDS]
    designs += [(f"shared x{s:.3g} ({len(shared_sizes(prior, s))} sizes)",
                 {"sizes": shared_sizes(prior, s)}) for s in (2.0, math.sqrt(2))]
    designs = [(name, model, PAPER_BUDGETS) for name, model in designs]
    # reuse makes budgets between the paper's cheap (a branch trains 20% of its steps)
    designs += [(f"shared x2, {len(DENSE_BUDGETS)} budgets", {"sizes": shared_sizes(prior, 2.0)},
                 DENSE_BUDGETS)]
    print(f"\nsimulated: paper surface (a = {truth:.4f}), budgets "
          f"{', '.join(f'{c:.0e}' for c in PAPER_BUDGETS)}, 0.5% noise, {seeds} seeds")
    print(f"{'design':<26} {'RMSE a':>7} {'fitted':>7} {'FLOPs':>9} {'with reuse':>10} "
          f"{'saved':>6} {'F x RMSE^2':>10} {'reuse':>9}")
    scratch_best = reuse_best = any_budgets = math.inf
    for name, model, budgets in designs:
        base = sim_spec(model, 0, prior, budgets)
        template = simulated_template(base)
        trials = grid_trials(base, template, prior)
        reusing = base.model_copy(update={"trainer": base.trainer.model_copy(
            update={"reuse": "cooldown"})})
        cost = grid_cost(base, template, trials, reuse_plan(reusing, template, trials))
        estimates = []
        for seed in range(seeds):
            # Only Approach 2's estimate of a is read, which Approach 3 does not change; without
            # it a fit costs a fifth.
            sim = simulate_study(base.model_copy(update={"seed": seed}), template, prior,
                                 "fixed", surface, draws=draws, approach3=False)
            e = sim.exponent("n_opt")
            estimates.append(e[0] if e else math.nan)
        a = np.array(estimates)
        ok = np.isfinite(a)
        rmse = float(np.sqrt(np.mean((a[ok] - truth) ** 2))) if ok.any() else math.nan
        whole = ok.all()  # a design that gave no law on some seeds is not a usable design
        f_scratch, f_reuse = cost.points * rmse**2, cost.trained * rmse**2
        if whole and budgets is PAPER_BUDGETS:
            scratch_best, reuse_best = min(scratch_best, f_scratch), min(reuse_best, f_reuse)
        elif whole:
            any_budgets = min(any_budgets, f_reuse)
        print(f"{name:<26} {rmse:7.4f} {int(ok.sum()):>4}/{seeds:<2} {cost.points:9.3g} "
              f"{cost.trained:10.3g} {cost.saving:6.0%} {f_scratch:10.3g} {f_reuse:9.3g}",
              flush=True)
    # The adaptive allocator (paper.toml's settings) chooses its own design, with and without
    # reuse (with it, a size that has a trunk at a larger budget costs only its cooldown).
    for reuse in ("off", "cooldown"):
        spec = load_spec(PAPER_SPEC)
        spec = spec.model_copy(update={"trainer": spec.trainer.model_copy(update={
            "surface": "paper", "noise": 0.005, "reuse": reuse})})
        template = simulated_template(spec)
        estimates, points, trained = [], [], []
        for seed in range(seeds):
            sim = simulate_study(spec.model_copy(update={"seed": seed}), template, prior,
                                 "adaptive", surface, draws=draws, approach3=False)
            e = sim.exponent("n_opt")
            estimates.append(e[0] if e else math.nan)
            points.append(sim.point_flops)
            trained.append(sim.flops)
        a = np.array(estimates)
        ok = np.isfinite(a)
        rmse = float(np.sqrt(np.mean((a[ok] - truth) ** 2))) if ok.any() else math.nan
        spent = statistics.mean(trained)
        value = spent * rmse**2
        if ok.all():
            if reuse == "off":
                scratch_best = min(scratch_best, value)
            else:
                reuse_best = min(reuse_best, value)
        name = "allocator" + (", reuse" if reuse == "cooldown" else "")
        print(f"{name:<26} {rmse:7.4f} {int(ok.sum()):>4}/{seeds:<2} "
              f"{statistics.mean(points):9.3g} {spent:10.3g} "
              f"{1 - spent / statistics.mean(points):6.0%} "
              f"{value if reuse == 'off' else math.nan:10.3g} "
              f"{value if reuse == 'cooldown' else math.nan:9.3g}", flush=True)
    print(f"with budgets between the paper's as well: reuse/no-reuse FLOPs at equal RMSE "
          f"{min(reuse_best, any_budgets) / scratch_best:.2f}")
    return reuse_best / scratch_best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--draws", type=int, default=100,
                    help="bootstrap draws per fit (intervals only; the RMSE does not use them)")
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.time()
    if not args.skip_real:
        with tempfile.TemporaryDirectory() as tmp:
            gaps = real_part(Path(tmp))
        worst = max(gaps, key=lambda g: g[1])
        print(f"real: every branch within the seed spread: "
              f"{'yes' if worst[1] <= 1 else 'NO'} (largest |gap| / sd {worst[1]:.2g}, "
              f"{worst[0]}); {time.time() - t0:.0f} s")
    ratio = simulated_part(args.seeds, args.draws)
    print(f"\n{time.time() - t0:.0f} s in all")
    print(f"reuse/no-reuse FLOPs at equal RMSE: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
