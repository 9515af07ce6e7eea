"""Trust in a study's stored state: what `resume` and `refine` may load, and from where.

Resuming a study unpickles Tune's experiment state (Tune's own format) and continues in the
storage and against the tracking server its spec names, so whoever can change those can run code
as the person who resumes, or send their MLflow credentials elsewhere. The spec and the Tune
experiment path live in MLflow tags, which anyone allowed to edit the experiment can rewrite. So
when a study is created the driver signs them: an HMAC-SHA256 over the study run id, the resolved
spec and the experiment path, with a key private to the user (or cluster head) that runs studies,
`$XDG_CONFIG_HOME/dit-scaling/study.key` (default `~/.config/dit-scaling/study.key`, created mode
0600 at first use; refused if others can read it), as Jupyter signs the notebooks it trusts.
`trusted_state` checks the signature, that the experiment lies inside the spec's own storage and
that the spec's tracking server is the one being resumed from, before anything is loaded; each
refusal is one line. Storage itself must be writable by the study's owners only (see
clusters/README.md): a file replaced there is not covered by the signature, which is why
checkpoints are also loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from search.credentials import InsecureSecretError, check_private_file

SIGNATURE_TAG = "dit.state_signature"


class UntrustedStateError(RuntimeError):
    """A study's stored state fails a trust check; nothing of it has been loaded."""


def key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "dit-scaling" / "study.key"


def _key() -> bytes:
    """The signing key, created (0600, in a 0700 folder) if there is none yet."""
    path = key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another command created it meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    try:
        check_private_file(path, "study signing key")
    except InsecureSecretError as err:
        raise UntrustedStateError(str(err)) from None
    key = path.read_text().strip()
    if len(key) < 32:
        raise UntrustedStateError(f"study signing key {path} is too short: delete it to make "
                                  "a new one (studies signed with it can then not be resumed)")
    return key.encode()


def signature(run_id: str, spec_json: str, experiment: str) -> str:
    message = json.dumps([run_id, spec_json, experiment]).encode()
    return hmac.new(_key(), message, hashlib.sha256).hexdigest()


def inside(path: str, root: str) -> bool:
    """True when `path` lies strictly inside `root` (local paths or URIs), with no `..` parts."""
    if "://" in path or "://" in root:
        p, r = urlsplit(path), urlsplit(root)
        if (p.scheme, p.netloc) != (r.scheme, r.netloc):
            return False
        path_parts, root_parts = PurePosixPath(p.path).parts, PurePosixPath(r.path).parts
    else:
        path_parts, root_parts = Path(path).parts, Path(root).parts
    if ".." in path_parts:
        return False
    return len(path_parts) > len(root_parts) and path_parts[:len(root_parts)] == root_parts


def same_store(a: str, b: str) -> bool:
    """True when two tracking URIs name the same store (SQLite paths resolved)."""
    def norm(uri: str) -> str:
        if uri.startswith("sqlite:///"):
            return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
        return uri.rstrip("/")
    return norm(a) == norm(b)


def trusted_state(study: str, run_id: str, tags: dict[str, str], spec_tag: str,
                  experiment_tag: str, tracking_uri: str) -> tuple[str, str]:
    """The signed spec JSON and experiment path of a study run, after every check passed.

    `tracking_uri` is the store the study run was read from; the spec must log there."""
    spec_json, experiment = tags.get(spec_tag), tags.get(experiment_tag)
    where = f"study {study!r}: study run {run_id}"
    if not spec_json or not experiment:
        raise UntrustedStateError(f"{where} has no {spec_tag} / {experiment_tag} tags, so there "
                                  "is no state to resume")
    given = tags.get(SIGNATURE_TAG)
    if not given:
        raise UntrustedStateError(f"{where} carries no {SIGNATURE_TAG}: its state was not "
                                  "signed when it was created, so it is not loaded")
    if not hmac.compare_digest(given, signature(run_id, spec_json, experiment)):
        raise UntrustedStateError(
            f"{where}: its spec or Tune experiment path in MLflow changed since the study was "
            f"created (or it was created with another key than {key_path()}); nothing loaded")
    spec = json.loads(spec_json)
    storage = (spec.get("storage") or {}).get("path")
    if not storage or not inside(experiment, storage):
        raise UntrustedStateError(f"{where}: its Tune experiment {experiment} is not inside "
                                  f"the study's storage {storage}; nothing loaded")
    uri = (spec.get("tracking") or {}).get("uri")
    if uri and not same_store(uri, tracking_uri):
        raise UntrustedStateError(f"{where}: its spec logs to another tracking server than "
                                  f"{tracking_uri}; nothing loaded")
    return spec_json, experiment
