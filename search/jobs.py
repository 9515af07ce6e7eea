"""Ray Jobs: submit a study to a cluster, where its driver runs on the head node, and follow it.

`submit` checks everything it can before any compute, each failure one line naming what is wrong:
the spec, the cluster address, the Ray token, the MLflow server and its credentials. Then it ships
the spec (as the job's `working_dir`) and this package (`py_modules`, so the cluster runs the
client's code) through `JobSubmissionClient`.

Secrets: the Ray token is read from `RAY_AUTH_TOKEN` or the file named by `RAY_AUTH_TOKEN_PATH`
(which must be private to its owner) and sent as an `Authorization: Bearer` header (Ray's client
sends its own only when `RAY_AUTH_MODE=token` is set in the client process), only over https or
to a loopback address. MLflow credentials never travel with the job: Ray keeps a job's
`runtime_env`, entrypoint and metadata in its job table, shows them through the job API and writes
them to its logs. The driver on the cluster reads them where the cluster definition put them
(`search.credentials`), and `submit` first runs a short check job (`search.cluster_check`) that
every node sees credentials MLflow accepts, saying how to provide them if not.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from search.credentials import (
    HOWTO,
    InsecureSecretError,
    check_private_file,
    check_secret_transport,
    has_embedded_credentials,
    redact,
)
from search.spec import SpecError, StudySpec, load_spec

SPEC_NAME = "study.toml"
PACKAGES = ("scaling", "search")


class JobError(RuntimeError):
    """The cluster or a job cannot be used as asked; the message names the address and cause."""


@dataclass(frozen=True)
class Submission:
    submission_id: str
    study: str
    tracking_uri: str
    address: str


def ray_token() -> tuple[str | None, str]:
    """The cluster token and where it came from (RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path}: no such token file")
        try:
            check_private_file(file, "Ray token file")
        except InsecureSecretError as err:
            raise JobError(f"RAY_AUTH_TOKEN_PATH: {err}") from None
        token = file.read_text().strip()
        if not token:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path}: the token file is empty")
        return token, f"RAY_AUTH_TOKEN_PATH={path}"
    return None, "no token (RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset)"


def job_client(address: str):
    """A `JobSubmissionClient` for the cluster at `address` whose token has been accepted."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise JobError(f"cluster address {address!r}: give the head node's dashboard URL, e.g. "
                       "http://HEAD:8265")
    token, source = ray_token()
    if token:
        try:
            check_secret_transport(address, "the Ray token")
        except InsecureSecretError as err:
            raise JobError(str(err)) from None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        client = JobSubmissionClient(address, headers=headers)
        client.list_jobs()  # an authenticated call: the version check alone is not
    except AuthenticationError as err:
        # HTTP 401: no token sent; a client with none may still be refused with 403 when its
        # Ray library attaches a default token of its own
        if token is None or str(err).startswith("Authentication required"):
            raise JobError(f"the Ray cluster at {address} requires a token ({source}): set "
                           "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH") from None
        raise JobError(f"the Ray cluster at {address} rejected the token from {source} "
                       "(HTTP 403): use that cluster's token") from None
    except ConnectionError:
        raise JobError(f"cannot reach a Ray cluster at {address}: no dashboard answers there "
                       "(check the address and that the head node runs)") from None
    except Exception as err:
        raise JobError(f"the Ray cluster at {address} cannot take jobs: {_first_line(err)}") \
            from None
    return client


def portability_problems(raw: dict) -> list[str]:
    """Settings that would point at the head node's scratch space instead of shared storage.

    `raw` is the spec as written (the TOML table): the loaded spec has relative paths made
    absolute on this machine already, which says nothing about the cluster's nodes."""
    problems = []
    output_dir = raw.get("output_dir", "dit-scaling-runs")
    if not Path(output_dir).expanduser().is_absolute():
        problems.append(f"output_dir {output_dir!r} is relative; give an absolute path on "
                        "storage every node shares (or --output-dir)")
    for name, value in (("data.path", raw.get("data", {}).get("path")),
                        ("storage.path", raw.get("storage", {}).get("path")),
                        ("tracking.artifact_root", raw.get("tracking", {}).get("artifact_root"))):
        if value and "://" not in value and not Path(value).expanduser().is_absolute():
            problems.append(f"{name} {value!r} is relative; give an absolute path or a URI")
    return problems


def study_tracking_uri(spec: StudySpec) -> str:
    """Where the submitted study logs: the spec's server, else the client's MLFLOW_TRACKING_URI."""
    uri = spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise JobError("a submitted study needs an MLflow tracking server that you and the "
                       "cluster both reach: set [tracking] uri in the spec or MLFLOW_TRACKING_URI")
    if has_embedded_credentials(uri):
        raise JobError("the MLflow tracking URI carries credentials (user:password@): a job's "
                       "entrypoint and metadata are readable through the Ray job API; give the "
                       f"URI without them and put the credentials on the cluster ({HOWTO})")
    return uri


def _runtime_env(workdir: Path | None, env: dict[str, str]) -> dict:
    root = Path(__file__).resolve().parent.parent
    runtime_env = {"py_modules": [str(root / p) for p in PACKAGES],
                   "env_vars": env,
                   "excludes": ["__pycache__", "*.pyc"]}
    if workdir is not None:
        runtime_env["working_dir"] = str(workdir)
    return runtime_env


def _job_env(tracking_uri: str) -> dict[str, str]:
    """What a job's environment carries: where to log, never a credential (see the module
    docstring); the cluster's own environment provides those."""
    return {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}


def check_cluster_credentials(client, address: str, tracking_uri: str,
                              timeout: float = 300.0) -> None:
    """Run `search.cluster_check` as a job and refuse, naming each node at fault, unless every
    alive node reaches MLflow at `tracking_uri` with credentials of its own."""
    from search.cluster_check import parse_result

    submission_id = f"dit-check-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    client.submit_job(entrypoint=f"python -m search.cluster_check {shlex.quote(tracking_uri)}",
                      submission_id=submission_id,
                      runtime_env=_runtime_env(None, _job_env(tracking_uri)),
                      metadata={"dit.check": "credentials", "dit.tracking_uri": tracking_uri})
    deadline = time.monotonic() + timeout
    while not (info := client.get_job_info(submission_id)).status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            raise JobError(f"the Ray cluster at {address} did not run the credentials check "
                           f"job {submission_id} within {timeout:.0f} s (is it short of CPUs "
                           "for a job driver?)")
        time.sleep(1.0)
    result = parse_result(client.get_job_logs(submission_id))
    if result is None:
        raise JobError(f"the credentials check job {submission_id} on {address} ended "
                       f"{info.status.value} without a result: {_first_line(info.message or '')}")
    bad = {node: r for node, r in result.items() if r["answer"] != "ok"}
    if bad:
        node, r = next(iter(bad.items()))
        where = r["source"] or "no credentials found"
        raise JobError(f"{len(bad)} of {len(result)} nodes of the Ray cluster at {address} "
                       f"cannot use MLflow at {tracking_uri}: node {node[:12]} ({where}): "
                       f"{r['answer']}; {HOWTO}")


def submit_study(spec_path: str | Path, address: str, output_dir: str | None = None) -> Submission:
    """Submit a study; every check that needs no compute runs first."""
    from search.tracking import Tracking

    spec = load_spec(spec_path)
    if output_dir:
        spec = spec.model_copy(update={"output_dir": output_dir})
    with open(spec_path, "rb") as f:
        raw = tomllib.load(f)
    if output_dir:
        raw["output_dir"] = output_dir
    problems = portability_problems(raw)
    if problems:
        raise SpecError(f"{spec_path}: cannot run on a cluster as written\n  "
                        + "\n  ".join(problems))
    uri = study_tracking_uri(spec)
    client = job_client(address)
    Tracking(uri).check_access()
    check_cluster_credentials(client, address, uri)
    submission_id = f"dit-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="dit-submit-") as tmp:
        shutil.copyfile(spec_path, Path(tmp) / SPEC_NAME)
        entrypoint = f"python -m search.cli run {SPEC_NAME}"
        if output_dir:
            entrypoint += f" --output-dir {shlex.quote(output_dir)}"
        if not spec.tracking.uri:
            entrypoint += f" --tracking-uri {shlex.quote(uri)}"
        client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                          runtime_env=_runtime_env(Path(tmp), _job_env(uri)),
                          metadata={"dit.study": spec.name, "dit.tracking_uri": uri})
    return Submission(submission_id, spec.name, uri, address)


def submit_resume(study: str, tracking_uri: str, address: str) -> Submission:
    """Submit `dit-scaling resume --study NAME` as a job, after the same checks as `submit`."""
    from search.tracking import Tracking

    if has_embedded_credentials(tracking_uri):
        raise JobError("the MLflow tracking URI carries credentials (user:password@): give it "
                       f"without them and put the credentials on the cluster ({HOWTO})")
    client = job_client(address)
    tracking = Tracking(tracking_uri)
    tracking.check_access()
    tracking.latest_study_run(study)  # the study must exist before anything runs
    check_cluster_credentials(client, address, tracking_uri)
    submission_id = f"dit-{study}-resume-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    client.submit_job(entrypoint=f"python -m search.cli resume --study {shlex.quote(study)}",
                      submission_id=submission_id,
                      runtime_env=_runtime_env(None, _job_env(tracking_uri)),
                      metadata={"dit.study": study, "dit.tracking_uri": tracking_uri})
    return Submission(submission_id, study, tracking_uri, address)


def job_info(address: str, submission_id: str):
    client = job_client(address)
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            raise JobError(f"no job {submission_id!r} on the Ray cluster at {address}") from None
        raise


def status_lines(info) -> list[str]:
    """A job's state for people; runtime_env (which holds credentials) is never shown."""
    meta = info.metadata or {}
    lines = [f"job {info.submission_id}: {info.status.value}"]
    if meta.get("dit.study"):
        lines.append(f"study: {meta['dit.study']} "
                     f"(MLflow {redact(meta.get('dit.tracking_uri') or '?')})")
    if info.start_time:
        end = info.end_time / 1000 if info.end_time else time.time()
        lines.append(f"running time: {end - info.start_time / 1000:.0f} s")
    if info.message:
        lines.append(f"message: {info.message.strip().splitlines()[-1]}")
    lines.append(f"entrypoint: {info.entrypoint}")
    return lines


def job_logs(address: str, submission_id: str) -> str:
    job_info(address, submission_id)
    return job_client(address).get_job_logs(submission_id)


def stop_job(address: str, submission_id: str) -> bool:
    """Ask the cluster to stop a job; False if it had already ended."""
    job_info(address, submission_id)
    return job_client(address).stop_job(submission_id)


def wait_for_job(address: str, submission_id: str, timeout: float, poll: float = 2.0):
    """Block until the job ends (or `timeout` s pass); returns its final JobInfo."""
    client = job_client(address)
    deadline = time.monotonic() + timeout
    while True:
        info = client.get_job_info(submission_id)
        if info.status.is_terminal() or time.monotonic() > deadline:
            return info
        time.sleep(poll)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
