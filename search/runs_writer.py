"""The runs table kept current while a study runs: a Ray Tune callback (so it lives apart from
`search.results`, which the query commands load without Ray)."""

from __future__ import annotations

import errno
from pathlib import Path

from ray.tune import Callback

from scaling.runs_table import RunPoint, read_runs, write_runs
from search.results import RUNS_FILE, study_dir
from search.spec import StudySpec


class RunsTableWriter(Callback):
    """Writes the runs table again each time a trial finishes, so `dit-scaling fit` can run offline
    while the study is still going: OUTPUT/studies/NAME/runs.parquet on the driver's machine and a
    copy beside the Tune experiment in the study's storage (a local path or any pyarrow.fs URI,
    e.g. s3://). Rows already in the local file (trials finished before a restart) are kept.
    Diverged and failed trials are not fit points and are left out.
    """

    def __init__(self, spec: StudySpec, experiment_path: str):
        self.metric = spec.metric
        self.local = study_dir(spec) / RUNS_FILE
        self.remote = f"{experiment_path.rstrip('/')}/{RUNS_FILE}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        r, c = trial.last_result or {}, trial.config
        value = r.get(self.metric)
        if r.get("diverged") or value is None or not (value > 0):
            return
        budget, fid = float(c["budget"]), r.get("fid")
        point = RunPoint(compute=budget, params=float(c["params"]), loss=float(value),
                         tokens=float(r["tokens"]) if r.get("tokens") else None, budget=budget,
                         trial=c["trial_key"], status="finished",
                         fid=float(fid) if fid is not None and fid > 0 else None)
        rows = {p.trial: p for p in (read_runs(self.local, min_sizes=0)
                                     if self.local.exists() else [])}
        rows[point.trial] = point
        points = sorted(rows.values(), key=lambda p: (p.group, p.params))
        try:
            write_runs(points, self.local)
            _copy_to_storage(self.local, self.remote)
        except OSError as err:
            from search.trial import StorageFullError, storage_full

            if storage_full(err):
                raise StorageFullError(errno.ENOSPC, f"storage is full writing {RUNS_FILE}: "
                                                     f"{err}") from err
            raise


def _copy_to_storage(local: Path, uri: str) -> None:
    """Copy a local file to a path or pyarrow.fs URI (s3://, gs://, file://...)."""
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(local.read_bytes())
