"""A diverging trial for the fault-matrix tests: the training loss turns NaN from a given step.

No production code reads this. `install(target, step)` wraps the training loop's step function
(`scaling.train._train_step`) so that, in the trial run whose name is `STUDY-RUNID-TRIALKEY`
for `target = "STUDY/TRIALKEY"`, every step from `step` on returns a NaN loss; the loop's own
divergence handling (stop, report `diverged`, exclusion from the fit) then runs for real. On a
cluster, `sitecustomize.py` beside this file calls it in every process of a node started with
`NAN_LOSS_ENV` set and this folder on PYTHONPATH. A `target` of `"*"` matches any run (for a loop
driven without Ray).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

NAN_LOSS_ENV = "DIT_TEST_NAN_LOSS"  # "STUDY/TRIALKEY@STEP"


def _run_name() -> str | None:
    """`STUDY-RUNID-TRIALKEY`: the Ray Train run's name in a Train worker; in a trial that trains
    in its own Tune actor, the same from its experiment and trial folder (`TRIALKEY-TRIALID`)."""
    try:
        import ray.train

        return ray.train.get_context().get_experiment_name()
    except Exception:  # not inside a Ray Train worker
        pass
    try:
        from ray import tune

        with warnings.catch_warnings():  # outside a trial Tune warns, then returns None
            warnings.simplefilter("ignore")
            parts = Path(tune.get_context().get_trial_dir()).parts
    except Exception:  # not inside a Tune trial either
        return None
    # Tune stages a trial's folder as EXPERIMENT/driver_artifacts/TRIAL, and a reused actor's
    # as EXPERIMENT/working_dirs/TRIAL
    experiment = parts[-3] if parts[-2] in ("driver_artifacts", "working_dirs") else parts[-2]
    return f"{experiment}-{parts[-1].rsplit('-', 1)[0]}"


def matches(target: str, run_name: str | None) -> bool:
    if target == "*":
        return True
    study, _, trial_key = target.partition("/")
    return bool(run_name) and run_name.startswith(f"{study}-") and run_name.endswith(
        f"-{trial_key}")


def install(module, target: str, step: int) -> None:
    """Wrap `module._train_step` (module: `scaling.train`) to diverge at `step` for `target`."""
    original = module._train_step

    @functools.wraps(original)
    def diverging_step(*args, **kwargs):
        loss = original(*args, **kwargs)
        done = kwargs.get("step", args[6] if len(args) > 6 else 0)
        if done + 1 >= step and matches(target, _run_name()):
            return loss * float("nan")
        return loss

    module._train_step = diverging_step


def install_from_env() -> None:
    """Patch `scaling.train` as soon as it is imported, when `NAN_LOSS_ENV` is set."""
    value = os.environ.get(NAN_LOSS_ENV, "")
    target, _, step = value.rpartition("@")
    if not target or not step.isdigit():
        return
    import importlib.abc
    import sys

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_module=None):
            if name != "scaling.train":
                return None
            sys.meta_path.remove(self)
            try:
                import importlib.util

                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                install(module, target, int(step))

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, Finder())
