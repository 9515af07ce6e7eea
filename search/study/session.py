"""A study session: the resolved spec, its tracking store and study run, its dataset and model
family, created once for `run` and loaded once for `resume` and `refine`.

The resolved spec (every location absolute) is stored once, as the study run's `dit.spec` tag,
beside the Tune experiment path, both signed (`search.trust`) so that a later `resume` loads them
only as they were written. A study runs once at a time per store: a driver tags its study run with
`dit.driver` (host and pid) and keeps a heartbeat metric, and a second command on a study whose
driver is alive is refused with one line naming that study run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scaling.builtin_data import write_builtin_dataset
from scaling.dataset_info import DatasetInfo
from scaling.model import DiTConfig, ModelShape
from scaling.text import DEFAULT_TEXT_ENCODER
from search.credentials import has_embedded_credentials, redact
from search.errors import TrackingError
from search.preflight import dataset_problems
from search.spec import SpecError, StudySpec, spec_to_toml_dict
from search.store import sqlite_path, uri_scheme
from search.tracking import KIND, STATUS, Tracking
from search.trust import SIGNATURE_TAG, signature, trusted_state

SPEC_TAG = "dit.spec"  # the resolved spec as JSON: what `resume` needs to continue the study
EXPERIMENT_TAG = "dit.tune_experiment"  # the Tune experiment path (local path or URI)
PLANNED_TAG = "dit.planned_trials"
DRIVER_TAG = "dit.driver"  # host:pid of the driver running the study
HEARTBEAT = "driver_heartbeat"  # metric: unix seconds, logged every HEARTBEAT_S while it runs
HEARTBEAT_S = 10.0
STALE_S = 60.0  # a driver on another host is presumed gone after this long without a heartbeat


@dataclass
class StudySession:
    """Everything one execution of a study needs once its study run exists."""

    spec: StudySpec  # resolved: every location absolute
    tracking: Tracking
    study_run_id: str
    experiment: str  # the Tune experiment path in the study's storage
    info: DatasetInfo | None  # None for a simulated study, which trains nothing
    template: DiTConfig
    out: Callable[[str], None]
    planned: int | None = None
    kind: str = "study"  # or "validation": trials that check the law, not isoFLOP points

    @contextlib.contextmanager
    def driving(self) -> Iterator[None]:
        """Claim the study run for this process while the body runs (tag and heartbeat)."""
        self.tracking.set_tags(self.study_run_id, {DRIVER_TAG: _this_driver(), STATUS: "running"})
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(Exception):  # a tracking outage must not stop a study
                    self.tracking.log_metrics(self.study_run_id, {HEARTBEAT: time.time()})

        thread = threading.Thread(target=beat, name="dit-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()


# ---- spec and stored state ----------------------------------------------------------------

def resolved_spec(spec: StudySpec) -> StudySpec:
    """The spec with every location made absolute, so the study can be resumed from anywhere.

    It is stored with the study (MLflow tags and params), so a tracking URI carrying credentials
    is refused here rather than written there."""
    if has_embedded_credentials(spec.tracking_uri):
        raise SpecError(f"tracking.uri {redact(spec.tracking_uri)} carries credentials "
                        "(user:password@), which would be stored with the study: give them as "
                        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or in "
                        "~/.mlflow/credentials")
    data = spec.model_dump(mode="json")
    data["output_dir"] = str(spec.output_path)
    data["tracking"] = {"uri": spec.tracking_uri, "artifact_root": spec.artifact_root}
    data["storage"] = {"path": spec.storage_path}
    if spec.data.path and "://" not in spec.data.path:
        data["data"]["path"] = str(spec.data_path)
    return StudySpec.model_validate(data)


def experiment_path(spec: StudySpec, study_run_id: str) -> str:
    return f"{spec.storage_path.rstrip('/')}/{spec.name}-{study_run_id[:8]}"


def record_state(tracking: Tracking, run_id: str, spec_json: str, experiment: str,
                 extra: dict[str, str] | None = None) -> None:
    """Store what `resume` needs (the resolved spec, the Tune experiment path) with the
    signature `search.trust` checks before any of it is loaded again."""
    tracking.set_tags(run_id, {SPEC_TAG: spec_json, EXPERIMENT_TAG: experiment,
                               SIGNATURE_TAG: signature(run_id, spec_json, experiment),
                               **(extra or {})})


def load_study(tracking: Tracking, study: str) -> tuple[object, StudySpec, str]:
    """The latest study run of a study, the spec it ran with and its Tune experiment path, each
    checked by `search.trust.trusted_state` (from MLflow; nothing is loaded from storage)."""
    run = tracking.latest_study_run(study)
    spec_json, experiment = trusted_state(study, run.info.run_id, run.data.tags, SPEC_TAG,
                                          EXPERIMENT_TAG, tracking.uri)
    return run, StudySpec.model_validate_json(spec_json), experiment


# ---- data and model family ----------------------------------------------------------------

def prepare_data(spec: StudySpec, out: Callable[[str], None]) -> DatasetInfo:
    """The study's dataset: the built-in one written once under OUTPUT/data, or a prepared one
    (checked against the spec as `search.preflight` checks it)."""
    d = spec.data
    if d.source == "builtin":
        return write_builtin_dataset(spec.data_path, image_size=d.image_size,
                                     train_samples=d.train_samples, val_samples=d.val_samples,
                                     ood_samples=d.ood_samples,
                                     samples_per_shard=d.samples_per_shard, seed=spec.seed,
                                     encoder=d.text_encoder or DEFAULT_TEXT_ENCODER)
    if spec.data.path and "://" in spec.data.path:
        info = load_remote_dataset(spec.data.path)
    else:
        info = DatasetInfo.load(spec.data_path)
    problems = dataset_problems(spec, info)
    if problems:
        raise SpecError("the prepared dataset does not fit the spec: " + "; ".join(problems))
    return info


def load_remote_dataset(uri: str) -> DatasetInfo:
    """A dataset under a pyarrow.fs URI (s3://, gs://, file://...): its `dataset.json` is read
    through pyarrow.fs and every shard becomes an absolute URL, which the trial workers read
    through the pyarrow schemes registered in webdataset (`register_pyarrow_schemes`)."""
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    try:
        with filesystem.open_input_stream(f"{path.rstrip('/')}/dataset.json") as f:
            data = json.loads(f.read())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{uri.rstrip('/')}/dataset.json: cannot be read ({err})") from None
    for split in data.get("splits", {}).values():
        for shard in split.get("shards", []):
            if "://" not in shard["name"]:
                shard["name"] = f"{uri.rstrip('/')}/{shard['name']}"
    local = Path(tempfile.mkdtemp(prefix="dit-dataset-"))
    (local / "dataset.json").write_text(json.dumps(data))
    return DatasetInfo.load(local)


def model_template(spec: StudySpec, info: DatasetInfo) -> DiTConfig:
    """The model family for this study and dataset; each trial replaces the shape."""
    return DiTConfig(shape=ModelShape(1, 16, 1), conditioning=spec.model.conditioning,
                     image_size=info.image_size, in_channels=info.channels,
                     patch_size=spec.model.patch_size, text_dim=info.text_dim,
                     text_len=info.text_len, mlp_ratio=spec.model.mlp_ratio)


def study_template(spec: StudySpec, out: Callable[[str], None]) -> tuple[DatasetInfo | None,
                                                                        DiTConfig]:
    """The dataset (None for a simulated study) and the model family."""
    if spec.simulated:
        from search.plan import simulated_template

        return None, simulated_template(spec)
    info = prepare_data(spec, out)
    return info, model_template(spec, info)


# ---- one study at a time ------------------------------------------------------------------

def _this_driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def driver_alive(run) -> bool:
    """Whether the study run is being driven now: its driver's process is alive (same host) or
    its heartbeat is recent (another host)."""
    tags = run.data.tags
    if tags.get(STATUS) != "running" or DRIVER_TAG not in tags:
        return False
    host, _, pid = tags[DRIVER_TAG].rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    last = run.data.metrics.get(HEARTBEAT, run.info.start_time / 1000)
    return time.time() - last < STALE_S


def refuse_if_driven(tracking: Tracking, study: str, mine: str | None = None) -> None:
    """One line naming the study run, when another driver is running this study now. With
    `mine` (a study run just created), the earliest of several new study runs wins."""
    exp = tracking.client.get_experiment_by_name(study)
    if exp is None:
        return
    runs = tracking.client.search_runs([exp.experiment_id],
                                       f"tags.`{KIND}` = 'study' and tags.`{STATUS}` = 'running'",
                                       order_by=["attributes.start_time ASC"])
    for run in runs:
        if run.info.run_id == mine:
            return  # the others started after this one: they give way
        if driver_alive(run) or (mine and DRIVER_TAG not in run.data.tags
                                 and time.time() - run.info.start_time / 1000 < STALE_S):
            host = run.data.tags.get(DRIVER_TAG, "a driver starting now")
            raise TrackingError(f"study {study!r} is running now (study run {run.info.run_id}, "
                                f"driver {host}) in MLflow at {redact(tracking.uri)}: wait "
                                "for it, or stop it first")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise the commands that create or claim a study on one SQLite store: MLflow creates
    its tables on first use, and two processes doing so at once collide."""
    path = sqlite_path(uri) if uri_scheme(uri) == "sqlite" else None
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- sessions -----------------------------------------------------------------------------

def prepare_session(spec: StudySpec, out: Callable[[str], None]) -> StudySession:
    """Check the store (refused while another driver runs this study), the data and the model
    family; nothing is written to MLflow yet (`start_run` does that)."""
    spec = resolved_spec(spec)
    with store_lock(spec.tracking_uri):
        tracking = Tracking(spec.tracking_uri, spec.artifact_root)
        tracking.check_access()
        refuse_if_driven(tracking, spec.name)
    info, template = study_template(spec, out)
    return StudySession(spec, tracking, "", "", info, template, out)


def start_run(session: StudySession) -> None:
    """Create the study run with its signed state, unless another driver started this study
    meanwhile (then this one gives way, in one line)."""
    spec, tracking = session.spec, session.tracking
    with store_lock(spec.tracking_uri):
        refuse_if_driven(tracking, spec.name)
        run_id = tracking.start_study_run(spec.name, _flat_params(spec_to_toml_dict(spec)))
        tracking.set_tags(run_id, {DRIVER_TAG: _this_driver()})
    try:
        refuse_if_driven(tracking, spec.name, mine=run_id)
    except TrackingError:
        tracking.set_status(run_id, "killed")
        raise
    session.study_run_id, session.experiment = run_id, experiment_path(spec, run_id)
    record_state(tracking, run_id, spec.model_dump_json(exclude_none=True), session.experiment)


def set_planned(session: StudySession, planned: int | None) -> None:
    """Record how many trials the study plans (when its proposer knows), for `status`."""
    session.planned = planned
    if planned is not None:
        session.tracking.set_tags(session.study_run_id, {PLANNED_TAG: str(planned)})


def open_session(study: str, tracking_uri: str, out: Callable[[str], None]
                 ) -> tuple[StudySession, object]:
    """The latest study run of `study`, its trusted spec and experiment path, data and model
    family; refused while another driver runs it. Returns the session and the MLflow run."""
    tracking = Tracking(tracking_uri)
    tracking.check_access()
    run, spec, experiment = load_study(tracking, study)
    refuse_if_driven(tracking, study)
    info, template = study_template(spec, out)
    tracking = Tracking(spec.tracking_uri, spec.artifact_root)
    planned = run.data.tags.get(PLANNED_TAG)
    session = StudySession(spec, tracking, run.info.run_id, experiment, info, template, out,
                           int(planned) if planned and planned.isdigit() else None)
    return session, run


def _flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
