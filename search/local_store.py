"""Read-only answers from a local SQLite MLflow store, without importing MLflow.

Importing MLflow and opening its SQLAlchemy store costs a query about 2 s before it asks anything;
the questions `laws`, `status`, `predict` and `compare` ask (a study's runs, their tags, params and
latest metrics, one artifact file) are a few indexed SELECTs on the store's own tables. The file is
opened read-only (`mode=ro`), so a query can never create or change a store. When the file's tables
are not the ones read here (another MLflow schema) or an artifact is not on the local file system,
`open_reader` gives None and the caller asks MLflow instead.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from search.errors import TrackingError
from search.records import (
    KIND,
    PARENT,
    STATUS,
    STUDY_RUN,
    TRIAL_KEY,
    TrialRecord,
    latest_study_run,
)
from search.store import sqlite_path

# The columns read, per table; a store without any of them is left to MLflow.
COLUMNS = {
    "experiments": {"experiment_id", "name", "lifecycle_stage"},
    "runs": {"run_uuid", "name", "status", "start_time", "lifecycle_stage", "artifact_uri",
             "experiment_id"},
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "latest_metrics": {"key", "value", "is_nan", "run_uuid"},
}


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_time: int
    artifact_uri: str


@dataclass(frozen=True)
class RunData:
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class StoredRun:
    """A run as `MlflowClient.get_run` gives it, for the fields the queries read."""

    info: RunInfo
    data: RunData


class LocalStore:
    """The read-only side of `search.tracking.Tracking` on a SQLite file."""

    def __init__(self, uri: str, conn: sqlite3.Connection):
        self.uri = uri
        self._db = conn

    def experiment_id(self, study: str) -> str:
        row = self._db.execute(
            "SELECT experiment_id FROM experiments WHERE name = ? ORDER BY lifecycle_stage = "
            "'active' DESC LIMIT 1", (study,)).fetchone()
        if row is None:
            raise TrackingError(f"no study named {study!r} in MLflow at {self.uri}")
        return str(row[0])

    def study_runs(self, study: str) -> list[StoredRun]:
        return self._runs(self.experiment_id(study), KIND, "study")

    def latest_study_run(self, study: str, with_laws: bool = False) -> StoredRun:
        return latest_study_run(self.study_runs(study), study, self.uri, with_laws)

    def trial_records(self, study_run_id: str, experiment_id: str) -> list[TrialRecord]:
        # tagged with the study run (branches nest under their trunk's run), or, in stores
        # written before that tag, its children
        runs = {r.info.run_id: r for tag in (STUDY_RUN, PARENT)
                for r in self._runs(experiment_id, tag, study_run_id)}
        return [TrialRecord(r.info.run_id, r.data.tags.get(TRIAL_KEY, r.info.run_name),
                            r.data.tags.get(STATUS, r.info.status.lower()), r.data.params,
                            r.data.metrics)
                for r in runs.values() if r.data.tags.get(KIND) == "trial"]

    def download_text(self, run_id: str, name: str, dst: Path | None = None) -> str:
        """The text of one artifact of the run, read where it lies (`dst` is not needed)."""
        row = self._db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?",
                               (run_id,)).fetchone()
        folder = local_artifacts(row[0]) if row else None
        if folder is None:  # an artifact store elsewhere (s3://, a server's): MLflow reads it
            from search.tracking import Tracking

            return Tracking(self.uri).download_text(run_id, name, dst or Path("."))
        return (folder / name).read_text()

    def _runs(self, experiment_id: str, tag: str, value: str) -> list[StoredRun]:
        """The experiment's active runs carrying `tag` = `value`, newest first."""
        rows = self._db.execute(
            "SELECT r.run_uuid, r.experiment_id, r.name, r.status, r.start_time, r.artifact_uri "
            "FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ? "
            "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active' "
            "ORDER BY r.start_time DESC, r.run_uuid", (tag, value, experiment_id)).fetchall()
        infos = [RunInfo(str(a), str(b), c or "", d, e or 0, f or "") for a, b, c, d, e, f in rows]
        return [StoredRun(i, self._data(i.run_id)) for i in infos]

    def _data(self, run_id: str) -> RunData:
        def pairs(table: str) -> dict[str, str]:
            return dict(self._db.execute(f"SELECT key, value FROM {table} WHERE run_uuid = ?",
                                         (run_id,)).fetchall())

        metrics = {k: math.nan if nan else float(v) for k, v, nan in self._db.execute(
            "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,))}
        return RunData(pairs("tags"), pairs("params"), metrics)


def local_artifacts(artifact_uri: str) -> Path | None:
    """The folder of a `file://` (or plain path) artifact URI; None for any remote store."""
    if artifact_uri.startswith("file:"):
        return Path(unquote(urlsplit(artifact_uri).path))
    if "://" not in artifact_uri and ":" not in artifact_uri.split("/", 1)[0]:
        return Path(artifact_uri)
    return None


def open_reader(uri: str) -> LocalStore | None:
    """A reader of the SQLite store at `uri` (which `search.store.check_store` has accepted), or
    None when its tables are not the ones this module reads."""
    path = sqlite_path(uri)
    if path is None:
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables & {"experiments", "alembic_version"}:
            conn.close()  # MLflow would make it a store: a query must not
            raise TrackingError(f"MLflow store {uri}: {path} is a SQLite file without MLflow's "
                                "tables; nothing is tracked there")
        for table, wanted in COLUMNS.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if not wanted <= have:
                conn.close()
                return None
    except sqlite3.Error as err:
        raise TrackingError(f"MLflow store {uri} cannot be read: {err}") from None
    return LocalStore(uri, conn)
