"""The sections of a study spec ([model], [data], [trainer], [eval], [resources], [allocator],
[tracking], [storage]) and the value types they share, as frozen pydantic models; the study as a
whole, its cross-section rules and its loading are `search.spec`. FLOPs count a multiply-add as 2
FLOPs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

DEFAULT_OUTPUT = "dit-scaling-runs"
# A study name is an MLflow experiment and a folder name under OUTPUT/studies and the artifact
# root: no separators, no leading dot (so never `..`).
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class SpecError(ValueError):
    """A study spec that cannot run; the message names every bad field."""


def study_name(name: str) -> str:
    """`name` if it can name a study (as `StudySpec.name` must), else SpecError saying why."""
    if not re.fullmatch(STUDY_NAME, name):
        raise SpecError(f"{name!r} is not a study name: 1 to 100 letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit")
    return name


def _not_text(what: str):
    """Numbers must be numbers: pydantic would otherwise read the string "1e11" as 1e11."""
    def check(value: Any) -> Any:
        if isinstance(value, str | bool):
            raise ValueError(f"is not a number of {what} (write it without quotes)")
        return value

    return BeforeValidator(check)


def _positive(what: str):
    def check(value: float) -> float:
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"is not a positive number of {what}")
        return value

    return AfterValidator(check)


Flops = Annotated[float, _not_text("FLOPs"), _positive("FLOPs")]
Params = Annotated[float, _not_text("parameters"), _positive("parameters")]


def _absolute(value: str | None) -> str | None:
    """A local path made absolute where the spec is read, so Ray workers (which run in other
    directories) agree on it; URIs (`s3://...`) are left as they are."""
    if value is None or "://" in value:
        return value
    return str(Path(value).expanduser().resolve())


def _absolute_if_local(value: str | None) -> str | None:
    """Like `_absolute`, for fields that may also hold a hub name: only when the path exists."""
    return _absolute(value) if value and Path(value).expanduser().exists() else value


LocalPath = Annotated[str, AfterValidator(_absolute)]
OptionalLocalPath = Annotated[str | None, AfterValidator(_absolute)]
PathOrName = Annotated[str | None, AfterValidator(_absolute_if_local)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """The model family and which sizes each budget trains (N = total DiT parameters)."""

    conditioning: Literal["in_context", "cross_attention"] = "in_context"
    patch_size: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    sizes: list[Params] | None = None  # explicit sizes for every budget, in parameters
    sizes_per_budget: int = Field(4, ge=1)  # else k sizes spaced in log N around the heuristic
    size_spacing: float = Field(2.0, gt=1.0)  # ratio between neighbouring sizes
    tokens_per_param: float = Field(20.0, gt=0)  # heuristic centre D = r N, so N = sqrt(C / 6r)
    min_params: Params = 3e4
    max_params: Params = 2e9
    # blocks of every size; None: the ladder's rule, depth ~ cbrt(N / 49K), so width ~ 64 x depth
    depth: int | None = Field(None, ge=1)
    # trials per (budget, size) of the fixed grid, with training seeds seed, seed + 1, ...: each is
    # a point of its isoFLOP curve, so the fits average over the seed-to-seed spread
    seeds_per_size: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _range(self) -> ModelSpec:
        if self.min_params >= self.max_params:
            raise ValueError(f"min_params={self.min_params:g} must be below max_params="
                             f"{self.max_params:g}")
        return self


class DataSpec(_Frozen):
    """Where the training shards come from: the built-in generator or a prepared dataset."""

    source: Literal["builtin", "path"] = "builtin"
    path: OptionalLocalPath = None  # builtin: where to write it (default OUTPUT/data); or dataset
    image_size: int = Field(32, ge=8)
    train_samples: int = Field(16384, ge=64)
    val_samples: int = Field(1024, ge=16)
    ood_samples: int = Field(512, ge=0)
    samples_per_shard: int = Field(2048, ge=16)
    # builtin: the encoder that writes the caption features; path: what the prepared dataset
    # must have been made with (checked against its dataset.json), None: whatever it was.
    text_encoder: str | None = None
    autoencoder: str | None = None  # path only: the diffusers AutoencoderKL of its latents

    @model_validator(mode="after")
    def _path_needed(self) -> DataSpec:
        if self.source == "path" and not self.path:
            raise ValueError("source = 'path' needs data.path, the directory holding dataset.json")
        if self.source == "builtin" and self.autoencoder:
            raise ValueError("data.autoencoder applies to prepared datasets (source = 'path'); "
                             "the built-in dataset is pixels")
        return self


class LRRuleSpec(_Frozen):
    """LR and warmup by width w: lr = trainer.lr * (ref_width / w) ** lr_exponent and
    warmup = trainer.warmup_steps * (w / ref_width) ** warmup_exponent (`scaling.hparams`)."""

    ref_width: int = Field(64, ge=1)
    lr_exponent: float = Field(0.0, ge=-4, le=4)  # 0: the same LR for every size
    warmup_exponent: float = Field(0.0, ge=-4, le=4)


class LRSweepSpec(_Frozen):
    """Sweep the LR at a few sizes first and fit the rule on them (`search.lr_sweep`)."""

    factors: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0], min_length=3)  # x the rule's LR
    sizes: list[Params] | None = Field(None, min_length=1)  # default: grid's min, mid, max
    budget: Flops | None = None  # FLOPs per sweep trial; default: the smallest study budget


class TrainerSpec(_Frozen):
    """Optimisation settings shared by every trial of the study.

    kind = "simulated" trains nothing: each trial's losses come from the parametric surface
    L(N, D) = E + A / N^alpha + B / D^beta named by `surface` (scaling/surface.py), with seeded
    multiplicative noise of relative size `noise`, reported at `reports` points over its steps.
    Its simulated GPU time is its FLOPs / (GPUs x resources.gpu_peak_flops x resources.mfu);
    `time_scale` > 0 makes the trial hold its resources for that time x time_scale of wall time
    (so a scheduling test sees trials of realistic relative lengths); 0: no waiting at all.
    """

    kind: Literal["real", "simulated"] = "real"
    surface: Literal["paper", "chinchilla", "asymmetric"] = "paper"  # simulated trials only
    noise: float = Field(0.005, ge=0, le=0.2)  # relative sd of simulated losses (seed spread)
    reports: int = Field(10, ge=1, le=1000)  # simulated reports per trial, evenly over its steps
    time_scale: float = Field(0.0, ge=0)  # wall seconds per simulated trial second; 0: none
    batch_size: int = Field(64, ge=1)  # global batch in samples
    micro_batch: int | None = Field(None, ge=1)  # samples per forward/backward on one worker
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast, fp32 weights and optimizer
    compile: bool = False  # torch.compile every block (pays off for long GPU trials)
    peak_flops: float | None = Field(None, gt=0)  # FLOP/s of one device, for MFU; None: detect
    data_workers: int = Field(0, ge=0)  # DataLoader processes per worker; 0: in-process
    lr: float = Field(1e-3, gt=0)  # peak LR at lr_rule.ref_width
    warmup_steps: int = Field(20, ge=0)  # at lr_rule.ref_width
    lr_rule: LRRuleSpec = LRRuleSpec()
    lr_sweep: LRSweepSpec | None = None
    schedule: Literal["constant", "cosine", "constant_cooldown"] = "constant_cooldown"
    cooldown_fraction: float = Field(0.2, ge=0, le=1)
    # "cooldown": each size trains once, as its longest run (the trunk), and every shorter run of
    # that size branches off it at its own cooldown start, training only its cooldown
    reuse: Literal["off", "cooldown"] = "off"
    # simulated branches only: their losses' relative offset against their from-scratch runs
    cooldown_gap: float = Field(0.0, ge=-0.5, le=0.5)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    ema_alpha: float = Field(0.9, ge=0, lt=1)
    report_every: int = Field(10, ge=1)  # steps between reports (metrics to MLflow)
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints; 0: only at the end
    val_samples: int = Field(512, ge=0)  # held-out samples for the final validation loss
    caption_dropout: float = Field(0.0, ge=0, lt=1)  # samples trained without caption (for CFG)


class EvalSpec(_Frozen):
    """End-of-trial evaluation beyond the validation loss: the OOD split's loss and FID."""

    ood: bool = True  # loss on the dataset's `ood` split, when it has one
    ood_samples: int = Field(512, ge=16)
    fid: bool = False
    fid_extractor: Literal["inception", "clip-vit-l-14"] = "inception"
    fid_extractor_path: PathOrName = None  # TorchScript file (inception) or CLIP directory/name
    fid_samples: int = Field(256, ge=16)  # generated images per trial
    fid_reference_samples: int = Field(1024, ge=16)  # real val images (statistics cached)
    sampler_steps: int = Field(20, ge=1)  # Euler steps of the probability-flow ODE
    cfg_scale: float = Field(1.5, ge=0)  # classifier-free guidance; 1 = none
    fid_batch_size: int = Field(64, ge=1)


class GpuTier(_Frozen):
    """Trials of models up to `max_params` parameters get `gpus` GPUs (no bound: the rest)."""

    max_params: Params | None = None
    gpus: int = Field(ge=1)


class ResourcesSpec(_Frozen):
    """What one trial asks of the cluster; concurrency follows from it and the cluster.

    `gpus_per_trial` is the rule by model size for simulated trials, smallest tier first, e.g.
    [{max_params = 5e7, gpus = 1}, {max_params = 3e8, gpus = 4}, {gpus = 8}]; `simulated_gpus`
    declares that many (fake) GPUs on the embedded Ray cluster, so such a study can be scheduled
    on one machine. GPU throughput (`gpu_peak_flops` x `mfu`, FLOPs per second per GPU; default
    an H100 SXM's dense bf16 peak at 40% MFU) turns trial FLOPs into GPU-hours for plans and
    simulated trials.
    """

    workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: int = Field(0, ge=0)  # 0: as many as the cluster fits
    max_failures: int = Field(1, ge=0)  # worker-group restarts from the last checkpoint
    gpus_per_trial: list[GpuTier] | None = None  # simulated trials: GPUs by model size
    simulated_gpus: int = Field(0, ge=0)  # fake GPUs declared by the embedded Ray cluster
    gpu_peak_flops: Annotated[float, _positive("FLOPs per second")] = 989e12
    mfu: float = Field(0.4, gt=0, le=1)  # model FLOPs utilisation
    fsdp_min_params: Params | None = None  # N from which multi-worker trials shard (FSDP2)

    @model_validator(mode="after")
    def _tiers(self) -> ResourcesSpec:
        tiers = self.gpus_per_trial
        if tiers is None:
            return self
        if not tiers:
            raise ValueError("gpus_per_trial is empty; give at least one {gpus = k} tier")
        bounds = [t.max_params for t in tiers]
        if any(b is None for b in bounds[:-1]):
            raise ValueError("gpus_per_trial: only the last tier may leave out max_params")
        given = [b for b in bounds if b is not None]
        if given != sorted(given) or len(set(given)) != len(given):
            raise ValueError(f"gpus_per_trial: max_params {_value(given)} must increase from "
                             "tier to tier")
        return self

    def gpus_for(self, params: float) -> int:
        """GPUs one simulated trial of `params` parameters asks for (0 without a rule)."""
        for tier in self.gpus_per_trial or ():
            if tier.max_params is None or params <= tier.max_params:
                return tier.gpus
        return 0


class AllocatorSpec(_Frozen):
    """Which trials run: the plain grid of [model] (`fixed`) or the adaptive allocator.

    The adaptive allocator starts each budget with `initial_sizes` sizes spaced x`spacing` in N
    around a prior N_opt (`prior`: "none" = the 6ND heuristic with model.tokens_per_param,
    "paper", "study:NAME" = a fitted study in MLflow, "explicit" = prior_coefficient *
    C^prior_exponent), refines each budget until its N_opt 95% interval is within +-`tolerance`
    (relative) or `max_trials_per_budget` is reached, and honours `max_trials` and `max_flops`
    (FLOPs, sum of trial budgets) over the study; 0 means no cap. With `exponent_tolerance` > 0
    the study also stops once the N_opt exponent's 95% interval is within +- that (absolute).
    Budgets open in `order` of compute: "ascending" (later budgets start on the law fitted so far;
    best with few trial slots) or "descending" (the costliest budgets, whose rounds set the
    makespan, start first; best on a large cluster). With `speculate` (default), a trial slot that
    would idle once every budget is open runs the next size of the costliest budget still refining,
    decided on the results it has while the rest of its round runs (shorter makespan, a few trials
    placed on less information); off, each budget waits for its whole round.
    The fixed grid is centred on the same prior when one other than "none" is given.
    Each next (budget, size) is the one that most reduces the expected variance of `target` per
    FLOP: "a" (default), the N_opt exponent, or "n_opt", N_opt at `target_budget` FLOPs (the
    budget being sized); with "n_opt" the study stops once N_opt(target_budget) is known to
    +-`tolerance` (relative), and budgets are no longer stopped one by one.
    """

    kind: Literal["fixed", "adaptive"] = "fixed"
    order: Literal["ascending", "descending"] = "ascending"
    initial_sizes: int = Field(3, ge=3, le=15)
    spacing: float = Field(2.0, gt=1.0, le=10.0)
    tolerance: float = Field(0.15, gt=0, lt=1)
    max_trials_per_budget: int = Field(12, ge=3)
    max_trials: int = Field(0, ge=0)
    max_flops: float = Field(0.0, ge=0)
    exponent_tolerance: float = Field(0.0, ge=0, lt=1)
    speculate: bool = True
    prior: str = Field("none", pattern=r"^(none|paper|explicit|study:[A-Za-z0-9][A-Za-z0-9_.-]*)$")
    prior_coefficient: Annotated[float, _positive("parameters per FLOP^exponent")] | None = None
    prior_exponent: float | None = Field(None, gt=0, lt=1.5)
    target: Literal["a", "n_opt"] = "a"
    target_budget: Flops | None = None

    @model_validator(mode="after")
    def _explicit(self) -> AllocatorSpec:
        if (self.target == "n_opt") != (self.target_budget is not None):
            raise ValueError("target = 'n_opt' needs target_budget (FLOPs) and target_budget is "
                             f"only read with target = 'n_opt' (target is {self.target!r})")
        explicit = (self.prior_coefficient, self.prior_exponent)
        if self.prior == "explicit" and None in explicit:
            raise ValueError("prior = 'explicit' needs prior_coefficient and prior_exponent "
                             "(N_opt = coefficient * C^exponent, C in FLOPs)")
        if self.prior != "explicit" and explicit != (None, None):
            raise ValueError(f"prior_coefficient/prior_exponent are only read with prior = "
                             f"'explicit' (prior is {self.prior!r})")
        return self


class TrackingSpec(_Frozen):
    uri: str | None = None  # default: sqlite:///OUTPUT/mlflow.db
    artifact_root: str | None = None  # default: OUTPUT/artifacts


class StorageSpec(_Frozen):
    path: OptionalLocalPath = None  # Ray Tune/Train storage; default OUTPUT/ray


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return repr(value)
