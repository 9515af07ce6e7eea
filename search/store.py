"""The MLflow store a command names, checked before MLflow opens it.

Left to itself, MLflow answers a wrong location slowly or by writing: a SQLite path that is a
directory costs about two minutes of engine retries, a server on a closed port about four minutes of
HTTP retries, and a read-only query on a mistyped SQLite path creates its directories and an empty
store. `check_store` answers each of these in one line (a `TrackingError` naming the URI) from the
file system or one short request, and `open_tracking` opens the store only once it has passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from search.errors import TrackingError

SQLITE_MAGIC = b"SQLite format 3\x00"
SERVER_SCHEMES = ("http", "https")
FILE_SCHEMES = ("", "file")
# Stores MLflow opens itself (SQLAlchemy databases, Databricks); checked by MLflow alone.
OTHER_SCHEMES = ("postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")
PROBE_TIMEOUT_S = 5.0  # one probe request, retried once: an unreachable server fails in ~11 s
# For commands that only ask: MLflow's defaults (7 retries, 120 s each) would hold a query for
# minutes on a server that stops answering after the probe.
QUERY_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SUPPORTED = "sqlite:///PATH.db, http(s)://HOST:PORT, postgresql://..., mysql://..."


def uri_scheme(uri: str) -> str:
    """The URI's scheme without a driver suffix (`postgresql+psycopg2` -> `postgresql`); '' for a
    plain path."""
    if "://" not in uri and not uri.startswith("file:"):
        return ""
    return urlsplit(uri).scheme.split("+", 1)[0].lower()


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///PATH` URI (None for an in-memory database)."""
    raw = uri.removeprefix("sqlite://").split("?", 1)[0]
    raw = raw[1:] if raw.startswith("/") else raw  # sqlite:///rel.db or sqlite:////abs.db
    if not raw or raw == ":memory:":
        return None
    return Path(raw).expanduser()


def check_store(uri: str, write: bool = False, create: bool | None = None) -> None:
    """Refuse, in one line naming `uri`, a store this command cannot use: an unknown scheme, a
    SQLite path that is a directory, not a SQLite file, missing (unless the command may `create`
    it; by default one that writes may) or read-only (when it writes), a directory (MLflow's
    retired file store) or an unreachable server."""
    create = write if create is None else create
    scheme = uri_scheme(uri)
    if not uri.strip():
        raise TrackingError(f"the MLflow tracking URI is empty; give one of {SUPPORTED}")
    if scheme == "sqlite":
        _check_sqlite(uri, write, create)
    elif scheme in SERVER_SCHEMES:
        probe_server(uri)
    elif scheme in FILE_SCHEMES:
        _check_file_store(uri, create)
    elif scheme not in OTHER_SCHEMES and scheme not in _plugin_schemes():
        raise TrackingError(f"MLflow tracking URI {uri}: unknown scheme {scheme!r}; give one of "
                            f"{SUPPORTED}")


def open_tracking(uri: str, artifact_root: str | None = None, *, write: bool = False,
                  create: bool | None = None):
    """The `Tracking` of a store that passed `check_store`; for reading a local SQLite file, a
    `search.local_store.LocalStore` (the same queries, without loading MLflow) where it can."""
    check_store(uri, write, create)
    if not write and uri_scheme(uri) == "sqlite":
        from search.local_store import open_reader

        reader = open_reader(uri)
        if reader is not None:
            return reader
    from search.tracking import Tracking

    return Tracking(uri, artifact_root)


def limit_http_retries() -> None:
    """Short MLflow HTTP retries for this process, unless the environment already sets them."""
    for name, value in QUERY_HTTP_ENV.items():
        os.environ.setdefault(name, value)


def _check_sqlite(uri: str, write: bool, create: bool) -> None:
    path = sqlite_path(uri)
    if path is None:
        return
    if path.is_dir():
        raise TrackingError(f"MLflow store {uri}: {path} is a directory, not a SQLite file "
                            f"(e.g. sqlite:///{path.resolve() / 'mlflow.db'})")
    if not path.exists():
        if not create:
            raise TrackingError(f"MLflow store {uri}: no such file {path}; nothing is tracked "
                                "there (check --tracking-uri or $MLFLOW_TRACKING_URI)")
        _check_creatable(uri, path)
        return
    if not path.is_file():
        raise TrackingError(f"MLflow store {uri}: {path} is not a regular file")
    try:
        with path.open("r+b" if write else "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except PermissionError:
        what = "read-only: this command writes to it" if write else "not readable"
        raise TrackingError(f"MLflow store {uri}: {path} is {what}") from None
    except OSError as err:
        raise TrackingError(f"MLflow store {uri}: {path} cannot be opened: {err}") from None
    if not head and not write:
        raise TrackingError(f"MLflow store {uri}: {path} is empty; nothing is tracked there")
    if head and head != SQLITE_MAGIC:
        raise TrackingError(f"MLflow store {uri}: {path} is not a SQLite database (corrupt, "
                            "or another kind of file)")
    if write and not os.access(path.parent, os.W_OK):
        raise TrackingError(f"MLflow store {uri}: its directory {path.parent} is read-only "
                            "(SQLite writes its journal beside the file)")


def _check_creatable(uri: str, path: Path) -> None:
    """A new SQLite file can be made at `path`: its nearest existing ancestor is a writable
    directory (MLflow creates the missing ones)."""
    parent = path.parent.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TrackingError(f"MLflow store {uri}: {parent} is a file, so {path} cannot be created")
    if not os.access(parent, os.W_OK):
        raise TrackingError(f"MLflow store {uri}: {parent} is read-only, so {path} cannot be "
                            "created")


def _check_file_store(uri: str, create: bool) -> None:
    path = Path(urlsplit(uri).path if uri.startswith("file:") else uri).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            sqlite = f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        hint = f": give it as sqlite:///{path.resolve()}" if sqlite else ""
        raise TrackingError(f"MLflow tracking URI {uri} is a file, not a store URI{hint}")
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        what = "a directory" if path.is_dir() else "a plain path"
        raise TrackingError(f"MLflow tracking URI {uri} is {what}: MLflow's file store is retired;"
                            f" give a SQLite file (sqlite:///{path.resolve() / 'mlflow.db'}) or a "
                            "server URL")
    if not path.exists() and not create:
        raise TrackingError(f"MLflow store {uri}: no such directory; nothing is tracked there")


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register (entry points), beyond the built-in ones."""
    from importlib.metadata import entry_points

    return {e.name for e in entry_points(group="mlflow.tracking_store")}


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Ask a tracking server once (one retry) whether it answers and accepts the credentials in
    MLFLOW_TRACKING_USERNAME/PASSWORD, without MLflow's minutes of retries."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET",
                                max_retries=1, backoff_factor=1, timeout=timeout,
                                params={"max_results": 1})
    except Exception as err:
        raise TrackingError(f"MLflow tracking server {uri} is unreachable: "
                            f"{_reason(err)}") from None
    user = creds.username or "(none)"
    if response.status_code == 401:
        hint = ("wrong MLFLOW_TRACKING_PASSWORD" if creds.username else
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        raise TrackingError(f"MLflow tracking server {uri} refused the credentials of "
                            f"user {user} (HTTP 401): {hint}")
    if response.status_code == 403:
        raise TrackingError(f"MLflow tracking server {uri}: user {user} may not read "
                            "experiments (HTTP 403)")
    if response.status_code != 200:
        raise TrackingError(f"MLflow tracking server {uri} answered HTTP "
                            f"{response.status_code}: {response.text[:200]}")


def _reason(err: Exception) -> str:
    """The useful end of a connection error ("Connection refused"), not urllib3's whole story."""
    from search.errors import first_line

    text = first_line(err)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No route to host", "Network is unreachable"):
        if marker in str(err):
            return marker
    return text
