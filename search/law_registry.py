"""Every fitted law as a version of the registered MLflow model `dit-scaling-<study>`.

A version is the pyfunc model of `search.law_pyfunc` (the law's `laws.json` as its artifact, the
`scaling` package as its code), logged under the study run that fitted it, and tagged with what
a team needs to cite it: how many trials it used (their run ids in `trials.json` beside it), the
dataset's content hash, the fit options, the package version and the git commit when there is
one. `laws --versions` lists them; `predict --law models:/dit-scaling-NAME/3` (or `@alias`)
answers from one, and so does `mlflow.pyfunc.load_model` in a user's notebook.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import scaling
from scaling.laws import LawFit
from search.errors import TrackingError

MODEL_PREFIX = "dit-scaling-"
MODEL_PATH = "law_model"  # under the study run's artifacts
LAW_VERSION_TAG = "dit.law_version"  # on the study run: the version its latest fit registered
LAW_TRIALS_TAG = "dit.law_trials"
PIP_REQUIREMENTS = ["mlflow", "numpy", "scipy", "pandas"]


def model_name(study: str) -> str:
    return f"{MODEL_PREFIX}{study}"


def provenance(fit: LawFit, trial_run_ids: list[str], dataset_hash: str | None) -> dict[str, str]:
    """The model version's tags (strings, each well under MLflow's tag length limit)."""
    tags = {"trials": str(len(trial_run_ids)), "fit_options": json.dumps(
        fit.to_dict().get("options") or {}, sort_keys=True)[:4000],
        "package_version": _package_version()}
    if dataset_hash:
        tags["dataset_hash"] = dataset_hash
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def register_law(tracking, study: str, run_id: str, laws_path: Path,
                 tags: dict[str, str], trial_run_ids: list[str]) -> int:
    """Log the law as a pyfunc model under `run_id` and register it as a new version of
    `dit-scaling-<study>`; returns the version number (also tagged on the study run)."""
    import mlflow.pyfunc

    client = tracking.client
    with tempfile.TemporaryDirectory(prefix="dit-law-") as tmp:
        model_dir = Path(tmp) / MODEL_PATH
        code = Path(tmp) / "code"
        shutil.copytree(Path(scaling.__file__).parent, code / "scaling",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with warnings.catch_warnings():  # advice on type hints and input examples: the
            warnings.simplefilter("ignore", UserWarning)  # signature below is explicit
            mlflow.pyfunc.save_model(str(model_dir),
                                     python_model=str(Path(__file__).parent / "law_pyfunc.py"),
                                     artifacts={"laws": str(laws_path)},
                                     code_paths=[str(code / "scaling")],
                                     pip_requirements=PIP_REQUIREMENTS, signature=_signature())
        (model_dir / "trials.json").write_text(json.dumps(sorted(trial_run_ids)))
        client.log_artifacts(run_id, str(model_dir), MODEL_PATH)
    name = model_name(study)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name, description=f"Compute-optimal laws of study "
                                                         f"{study} (dit-scaling)")
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_PATH}"
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    tracking.set_tags(run_id, {LAW_VERSION_TAG: str(version.version),
                               LAW_TRIALS_TAG: tags.get("trials", "")})
    return int(version.version)


@dataclass(frozen=True)
class LawVersion:
    version: int
    run_id: str
    created_ms: int
    aliases: tuple[str, ...]
    tags: dict[str, str]


def law_versions(tracking, study: str) -> list[LawVersion]:
    """The registered versions of the study's law, newest first."""
    name = model_name(study)
    found = tracking.client.search_model_versions(f"name = '{name}'")
    if not found:
        raise TrackingError(f"study {study!r} has no registered law ({name}) in MLflow at "
                            f"{tracking.uri}")
    return sorted((LawVersion(int(v.version), v.run_id, int(v.creation_timestamp or 0),
                              tuple(getattr(v, "aliases", None) or ()), dict(v.tags or {}))
                   for v in found), key=lambda v: -v.version)


def law_from_model(tracking, uri: str) -> tuple[LawFit, str]:
    """The law of a registered version, `models:/NAME/VERSION` or `models:/NAME@ALIAS`, and a
    line naming it (read from its run's artifacts, without loading the pyfunc)."""
    ref = uri.removeprefix("models:/")
    name, sep, alias = ref.partition("@")
    client = tracking.client
    try:
        if sep:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.rpartition("/")
            if not name or not number.isdigit():
                raise ValueError
            version = client.get_model_version(name, number)
    except ValueError:
        raise TrackingError(f"--law {uri}: give models:/NAME/VERSION or models:/NAME@ALIAS") \
            from None
    except Exception as err:
        raise TrackingError(f"--law {uri}: no such registered law in MLflow at {tracking.uri} "
                            f"({str(err).splitlines()[0][:200]})") from None
    with tempfile.TemporaryDirectory() as tmp:
        text = tracking.download_text(version.run_id, f"{MODEL_PATH}/artifacts/laws.json",
                                      Path(tmp))
    trials = (version.tags or {}).get("trials", "?")
    return LawFit.from_json(text), f"{name} version {version.version} (from {trials} trials)"


def _signature():
    """Input: `budget` (FLOPs); output: each law's value and 95% bounds (NaN-free doubles, or
    missing where the study has no such law, e.g. FID)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("double", "budget")]
    for name in ("n_opt", "d_opt", "loss", "fid"):
        outputs += [ColSpec("double", f"{name}{end}", required=name != "fid")
                    for end in ("", "_lo", "_hi")]
    outputs.append(ColSpec("double", "extrapolation_decades"))
    return ModelSignature(inputs=Schema([ColSpec("double", "budget")]), outputs=Schema(outputs))


def _package_version() -> str:
    try:
        return metadata.version("dit-scaling")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None
