"""The errors a command reports as one line and exit code 2, and how a library's error becomes one.

Nothing here imports a heavy library: a command only learns of the error types of the modules it
has already loaded, so `laws` and `predict` stay free of Ray and torch even when they fail.
"""

from __future__ import annotations

import sys


class TrackingError(RuntimeError):
    """MLflow could not answer a query the service needs; the message names the server and study."""


class UsageError(ValueError):
    """A command line that cannot be carried out as given; the message says what to add."""


# Errors that mean bad input or an unusable store, by the module that defines them.
_USER_ERRORS = {
    "search.errors": ("TrackingError", "UsageError"),
    "search.spec": ("SpecError",),
    "scaling.runs_table": ("RunsTableError",),
    "scaling.builtin_data": ("DatasetConflict",),
    "scaling.laws.fit": ("LawFitError",),
    "search.driver": ("ClusterError",),
    "search.study.backend": ("ClusterError",),
    "search.grid": ("GridError",),
    "search.jobs": ("JobError",),
    "search.trust": ("UntrustedStateError",),
    "search.credentials": ("InsecureSecretError",),
}
# Libraries whose errors, when one escapes a command, are about the store or the server the
# command was pointed at (a wrong URI, a corrupt file, a refused write), not about the service.
_STORE_LIBRARIES = ("mlflow.", "sqlalchemy.", "sqlite3", "requests.", "urllib3.", "alembic.")


# A study that stopped on purpose (Ctrl-C, SIGTERM, full storage): one line, exit code 3.
_STOPPED = {"search.study.execute": ("StudyStopped",), "search.driver": ("StudyStopped",)}


def _loaded(table: dict[str, tuple[str, ...]]) -> tuple[type, ...]:
    found: list[type] = []
    for module, names in table.items():
        loaded = sys.modules.get(module)
        found.extend(getattr(loaded, n) for n in names if loaded and hasattr(loaded, n))
    return tuple(found)


def user_errors() -> tuple[type, ...]:
    """The user-error classes of every module loaded so far."""
    return _loaded(_USER_ERRORS)


def stopped_errors() -> tuple[type, ...]:
    """The classes of a deliberate stop, of the modules loaded so far."""
    return _loaded(_STOPPED)


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an error's message (its type name when it has none)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(err).__name__


def store_error_line(err: BaseException) -> str | None:
    """One line for an error raised by MLflow, SQLAlchemy or an HTTP client (itself or as the
    explicit cause of the error); None for any other error, which stays a traceback."""
    chain: BaseException | None = err
    while chain is not None:
        module = type(chain).__module__ + "."
        if module.startswith(_STORE_LIBRARIES):
            text = first_line(err)
            # SQLAlchemy prefixes the DB-API class: "(sqlite3.OperationalError) attempt to ..."
            if text.startswith("(") and ") " in text:
                text = text.split(") ", 1)[1]
            return f"MLflow: {text}"
        chain = chain.__cause__
    return None
