"""The study spec: a TOML file validated into frozen pydantic models before any compute starts.

A bad spec fails with one line naming every problem (`; ` between them), each with the field, the
value and what is allowed: `budgets[2]: -1e12 is not a positive number of FLOPs`. Relative paths
are resolved against the directory the command runs in. FLOPs count a multiply-add as 2 FLOPs
throughout. `search.preflight` adds the checks that read the file system (a prepared dataset).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from scaling.laws.result import FitOptions
from search.spec_sections import (  # noqa: F401  (re-exported: the spec's public names)
    DEFAULT_OUTPUT,
    STUDY_NAME,
    AllocatorSpec,
    DataSpec,
    EvalSpec,
    Flops,
    GpuTier,
    LocalPath,
    LRRuleSpec,
    LRSweepSpec,
    ModelSpec,
    ResourcesSpec,
    SpecError,
    StorageSpec,
    TrackingSpec,
    TrainerSpec,
    _Frozen,
    _value,
    study_name,
)


class StudySpec(_Frozen):
    """One isoFLOP study: budgets x model sizes, trained, tracked and fitted."""

    name: str = Field(pattern=STUDY_NAME)
    seed: int = 0
    budgets: list[Flops] = Field(min_length=2)
    convention: Literal["6ND", "exact"] = "6ND"
    metric: Literal["loss_ema", "val_loss"] = "loss_ema"  # minimised per budget by the fit
    output_dir: LocalPath = Field(DEFAULT_OUTPUT, validate_default=True)
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    trainer: TrainerSpec = TrainerSpec()
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: StorageSpec = StorageSpec()
    allocator: AllocatorSpec = AllocatorSpec()

    @model_validator(mode="after")
    def _distinct_budgets(self) -> StudySpec:
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets {_value(self.budgets)} repeat a value; each budget is one "
                             "isoFLOP curve")
        if self.budgets != sorted(self.budgets):
            raise ValueError(f"budgets {_value(self.budgets)} must be given smallest first "
                             f"({_value(sorted(self.budgets))})")
        if self.data.source == "builtin" or self.simulated:
            size, patch = self.data.image_size, self.model.patch_size
            if size % patch:
                raise ValueError(f"data.image_size {size} is not divisible by model.patch_size "
                                 f"{patch}: the image must split into whole patches")
        if self.model.seeds_per_size > 1 and self.allocator.kind != "fixed":
            raise ValueError("model.seeds_per_size applies to the fixed grid; the adaptive "
                             "allocator trains each size once and places its next size by "
                             "what the fit needs")
        if self.metric == "val_loss" and self.trainer.val_samples == 0:
            raise ValueError("metric = 'val_loss' needs trainer.val_samples > 0")
        simulated, t = self.trainer.kind == "simulated", self.trainer
        if not simulated and (self.resources.gpus_per_trial or self.resources.simulated_gpus):
            raise ValueError("resources.gpus_per_trial and resources.simulated_gpus are for "
                             "trainer.kind = 'simulated'; real trials ask for workers x "
                             "gpus_per_worker")
        if simulated and self.trainer.lr_sweep is not None:
            raise ValueError("trainer.lr_sweep needs real training: a simulated trial's loss does "
                             "not depend on its learning rate; remove lr_sweep or set "
                             "trainer.kind = 'real'")
        if t.reuse == "cooldown":
            self._check_reuse()
        if t.cooldown_gap and not (self.simulated and t.reuse == "cooldown"):
            raise ValueError("trainer.cooldown_gap offsets simulated branches' losses: it needs "
                             "trainer.kind = 'simulated' and reuse = 'cooldown'")
        if self.allocator.kind == "adaptive" and self.model.sizes:
            raise ValueError("allocator.kind = 'adaptive' chooses the sizes itself; remove "
                             "model.sizes or use allocator.kind = 'fixed'")
        workers = self.resources.workers
        if t.batch_size % workers:
            raise ValueError(f"trainer.batch_size {t.batch_size} does not split evenly over "
                             f"resources.workers = {workers}")
        if t.micro_batch and (t.batch_size // workers) % t.micro_batch:
            raise ValueError(f"trainer.micro_batch {t.micro_batch} does not divide the "
                             f"{t.batch_size // workers} samples each worker takes per step "
                             f"(trainer.batch_size / resources.workers)")
        e = self.eval
        if e.fid and e.cfg_scale != 1 and self.trainer.caption_dropout == 0:
            raise ValueError(f"eval.cfg_scale = {e.cfg_scale:g} (classifier-free guidance) needs "
                             "trainer.caption_dropout > 0, or set cfg_scale = 1")
        if e.fid and self.data.source == "builtin" and e.fid_samples > self.data.val_samples:
            raise ValueError(f"eval.fid_samples = {e.fid_samples} exceeds data.val_samples = "
                             f"{self.data.val_samples}: FID takes one caption per sample")
        return self

    def _check_reuse(self) -> None:
        t = self.trainer
        if t.schedule != "constant_cooldown" or t.cooldown_fraction == 0:
            raise ValueError("trainer.reuse = 'cooldown' needs schedule = 'constant_cooldown' "
                             "with cooldown_fraction > 0: branches share the constant phase")
        if t.lr_sweep is not None:
            raise ValueError("trainer.reuse = 'cooldown' and trainer.lr_sweep cannot be combined: "
                             "the branches are planned from the LR rule before the sweep fits it")

    @property
    def simulated(self) -> bool:
        return self.trainer.kind == "simulated"

    def fit_options(self, **overrides: object) -> FitOptions:
        """The options the service fits this study's laws with: its FLOPs convention and seed,
        everything else the fit's defaults (Approach 3 included: it sets the noise, the window
        bias and the smooth curves Approach 2's intervals are drawn about). `overrides` for a
        caller that must differ, e.g. fewer bootstrap draws."""
        return FitOptions(**{"convention": self.convention, "seed": self.seed, **overrides})

    # Resolved locations (absolute), so Ray workers in other directories agree on them.
    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{self.output_path / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return self.tracking.artifact_root or str(self.output_path / "artifacts")

    @property
    def fid_cache(self) -> Path:
        """Where FID reference statistics are cached (shared by the study's trials)."""
        return self.output_path / "fid-stats"

    @property
    def storage_path(self) -> str:
        return self.storage.path or str(self.output_path / "ray")

    @property
    def data_path(self) -> Path:
        return Path(self.data.path).expanduser().resolve() if self.data.path else (
            self.output_path / "data")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "spec"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = _loc(tuple(p for p in e["loc"] if p not in ("function-after",)))
        if e["type"] == "missing":
            lines.append(f"{loc}: missing (required)")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field (check its spelling)")
        elif msg.startswith("is "):
            lines.append(f"{loc}: {_value(e['input'])} {msg}")
        elif loc == "spec":  # a rule across fields: its message names them
            lines.append(msg)
        elif e["type"] == "value_error":
            lines.append(f"{loc}: {msg}")
        else:
            lines.append(f"{loc}: {_value(e['input'])} is not allowed: {msg[0].lower()}{msg[1:]}")
    return f"{source}: invalid study spec: " + "; ".join(lines)


def parse_spec(data: dict, source: str = "spec") -> StudySpec:
    try:
        return StudySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec TOML file; raises SpecError naming every bad field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not a study spec file (TOML)") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (a study spec is UTF-8 TOML)") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot be read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML: {err}") from None
    return parse_spec(data, str(path))


def spec_to_toml_dict(spec: StudySpec) -> dict:
    """The spec as plain data (None fields dropped), for logging and for re-running it elsewhere."""
    return spec.model_dump(mode="json", exclude_none=True)
