"""What the command modules share: where a command's store is by default, how a query opens
it, and how a result is printed."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from search.spec import DEFAULT_OUTPUT

RUNS_SUFFIXES = (".csv", ".parquet", ".pq")


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded default's SQLite file under ./dit-scaling-runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{Path(DEFAULT_OUTPUT).resolve() / 'mlflow.db'}")


def default_artifact_root(uri: str) -> str | None:
    """Beside a SQLite store, its `artifacts` folder (else MLflow writes to ./mlruns of whatever
    directory the command ran in); for a server, None: the server decides."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


def query_store(args, write: bool = False):
    """The store of a query (read-only: it must exist, and a server gets short HTTP retries) or of
    `fit --log-to-mlflow` (`write`), checked before MLflow opens it."""
    from search.store import limit_http_retries, open_tracking

    if not write:
        limit_http_retries()
    root = getattr(args, "artifact_root", None) or default_artifact_root(args.tracking_uri)
    return open_tracking(args.tracking_uri, root, write=write)


def positive_flops(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of FLOPs")
    return value


def emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=1) if args.json else text)
