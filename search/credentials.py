"""Where secrets come from, and how they are kept out of everything printed or stored.

Secrets handled by the service: the Ray cluster token, MLflow credentials (basic-auth user and
password, or a bearer token) and the key that signs a study's stored state (`search.trust`).
None of them is ever put in a job's `runtime_env`, entrypoint or metadata, in an MLflow tag or
param, or in a printed line. A submitted study reads MLflow credentials on the cluster itself:
from the environment the cluster definition gives its nodes (`MLFLOW_TRACKING_USERNAME` /
`MLFLOW_TRACKING_PASSWORD` / `MLFLOW_TRACKING_TOKEN`, e.g. from a Kubernetes Secret), or from
MLflow's own credentials file `~/.mlflow/credentials` (section `[mlflow]`), which MLflow itself
reads. A file that holds a secret must be private to its owner (no group or other permission
bits), as ssh insists of its keys.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit

CREDENTIALS_FILE = "~/.mlflow/credentials"  # MLflow's own: mlflow.utils.credentials
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
HOWTO = ("see clusters/README.md, 'Credentials on the cluster': the cluster definition gives "
         "every node MLFLOW_TRACKING_USERNAME/PASSWORD (or MLFLOW_TRACKING_TOKEN) from a secret, "
         f"or a {CREDENTIALS_FILE} file of mode 0600")


class InsecureSecretError(PermissionError):
    """A secret would be exposed: a file others can read, or a secret sent in clear."""


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the `user:password@` of every URI in it replaced by `***@`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def has_embedded_credentials(uri: str | None) -> bool:
    """True when `uri` carries `user:password@` (or `user@`) in its authority."""
    if not uri or "://" not in uri:
        return False
    parts = urlsplit(uri)
    return parts.username is not None or parts.password is not None


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that its group or other users can read or write (`chmod 600`)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureSecretError(
            f"{what} {path} is readable or writable by other users (mode "
            f"{stat.S_IMODE(mode):04o}): run `chmod 600 {path}`")


def is_loopback(url: str) -> bool:
    """True when `url` names this machine (127.0.0.0/8, ::1 or localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secret_transport(url: str, what: str) -> None:
    """Refuse to send `what` to `url` over plain HTTP unless it stays on this machine (an SSH
    tunnel or `kubectl port-forward` to 127.0.0.1 is how Ray's guidance reaches a remote head)."""
    if url.startswith("http://") and not is_loopback(url):
        raise InsecureSecretError(
            f"{url}: {what} would cross the network in clear over http://; use an https:// "
            "address, or a tunnel to 127.0.0.1 (ssh -L 8265:localhost:8265 HEAD, or kubectl "
            "port-forward)")


def mlflow_credential_source() -> str | None:
    """Where MLflow would take credentials from in this process (names, never values)."""
    found = [k for k in CREDENTIAL_ENV if os.environ.get(k)]
    if found:
        return "environment (" + ", ".join(found) + ")"
    file = Path(CREDENTIALS_FILE).expanduser()
    if file.is_file():
        return f"file {file}"
    return None
