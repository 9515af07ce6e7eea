"""Real services on this machine for the cluster tests and the submit benchmark.

- `RayCluster`: a multi-node Ray started with `ray start --head` and `ray start --address`, token
  auth on, dashboard on 127.0.0.1, each node with its own `--temp-dir`, resources and process group
  (so one node can be killed whole, as a crashed machine would be). As a cluster definition does,
  it gives its nodes MLflow credentials of their own (`give_credentials`: a 0600
  `~/.mlflow/credentials` in the nodes' home, outside every Ray folder), so no job carries them;
  `tests/faults` is on the nodes' PYTHONPATH, for the fault injections a test asks of them.
- `Postgres`: a PostgreSQL server from Debian's `postgresql` binaries, in a fresh data directory,
  password-protected (scram-sha-256), on 127.0.0.1 only.
- `MlflowServer`: `mlflow server --workers 1 --app-name basic-auth` on 127.0.0.1 with a PostgreSQL
  backend store, `--artifacts-destination` and `--allowed-hosts`; secrets only in the environment
  (the database password reaches libpq as PGPASSWORD, never in a URI or file).

Every process is started in its own session and stopped by process group (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """Stop a process started with start_new_session=True and everything in its group."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            # the leader is gone; members may linger a moment
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_progressing(check, progress, what: str, idle: float = 300.0, poll: float = 0.5):
    """Wait until `check()` is truthy; fail only once `progress()` (any comparable reading:
    metric rows stored, log lines) has not changed for `idle` seconds, so a loaded machine that
    is slow but moving never fails the wait."""
    last, since = progress(), time.monotonic()
    while True:
        value = check()
        if value:
            return value
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > idle:
            raise TimeoutError(f"{what}: no progress for {idle:.0f} s (last reading {now})")
        time.sleep(poll)


def stored_metric_rows(store_uri: str):
    """A progress reading for `wait_progressing`: the metric rows an MLflow SQL store holds."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store_uri, poolclass=sqlalchemy.pool.NullPool)

    def rows() -> int:
        try:
            with engine.connect() as conn:
                return int(conn.execute(sqlalchemy.text("SELECT count(*) FROM metrics")).scalar())
        except sqlalchemy.exc.SQLAlchemyError:  # the store is being created or restarted
            return -1

    return rows


def wait_until(check, timeout: float, what: str, poll: float = 0.5, explain=None):
    """Wait until `check()` is truthy; on timeout, fail with `explain()` (what the services'
    own logs say) appended, so a failure in CI can be read from its output alone."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except RuntimeError:
            raise
        except Exception as err:  # not up yet
            last = err
        time.sleep(poll)
    detail = f"\n{explain()}" if explain is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last}){detail}")


def _http(url: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# -------------------------------------------------------------------------------------------------
# Ray


class RayCluster:
    """A Ray cluster of `ray start` nodes on this machine, token auth on, dashboard on 127.0.0.1."""

    def __init__(self, object_store_bytes: int = 80_000_000):
        # A short folder right under /tmp: Ray's socket paths must stay under 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="dit-ray-"))
        self.token = secrets.token_hex(32)
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.object_store = object_store_bytes
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}
        self.home = Path(tempfile.mkdtemp(prefix="dit-home-"))  # the nodes' HOME
        self.node_env: dict[str, str] = {"HOME": str(self.home)}

    @property
    def credentials_file(self) -> Path:
        return self.home / ".mlflow" / "credentials"

    def give_credentials(self, creds: dict[str, str]) -> None:
        """MLflow credentials for every node started from now on, in MLflow's own file."""
        self.credentials_file.parent.mkdir(mode=0o700, exist_ok=True)
        self.credentials_file.write_text(
            "[mlflow]\n" + "".join(f"{k.lower()} = {v}\n" for k, v in creds.items()))
        self.credentials_file.chmod(0o600)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a node (and so every job and worker on it) runs with: the project's
        Python first on PATH, token auth forced on, the token from a file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update(PATH=f"{BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
                   # a trial starts ~4 processes at once; one-CPU nodes would start them in turn
                   RAY_worker_maximum_startup_concurrency="4",
                   PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'faults'}")
        env.update(self.node_env)
        env.update(extra)
        return env

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        temp.mkdir(exist_ok=True)
        log = open(self.root / f"{name}.log", "ab")
        cmd = [str(BIN / "ray"), "start", "--block", "--temp-dir", str(temp),
               "--object-store-memory", str(self.object_store),
               "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", *args]
        self.nodes[name] = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log,
                                            start_new_session=True)

    def start_head(self, resources: dict[str, float], num_cpus: int = 0) -> None:
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host",
                             "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                             "--ray-client-server-port", str(free_port()),
                             "--num-cpus", str(num_cpus), "--resources", json.dumps(resources)])
        wait_until(lambda: self._running() and self.alive_nodes(), 90, "Ray head node",
                   explain=self.explain)
        self.node_ids["head"] = self.node_id("head")

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float] | None = None) -> None:
        self._start(name, ["--address", self.gcs_address, "--num-cpus", str(num_cpus),
                           "--resources", json.dumps({name: 1, **(resources or {})})])
        # known by its own resource: a node killed just before still counts as alive until the
        # head's health checks give up on it
        wait_until(lambda: self._running() and any(
            n.get("resources_total", {}).get(name) for n in self.alive_nodes()), 90,
                   f"Ray node {name}", explain=self.explain)
        self.node_ids[name] = self.node_id(name)

    def _running(self) -> bool:
        """True while every node's `ray start --block` runs; a node that exited (it stops when
        any of its Ray processes dies) fails the wait at once, with its logs."""
        exited = [name for name, proc in self.nodes.items() if proc.poll() is not None]
        if exited:
            raise RuntimeError(f"Ray node(s) {', '.join(exited)} exited\n{self.explain()}")
        return True

    def explain(self, lines: int = 25) -> str:
        """Each node's state and the tail of its `ray start` output and of its Ray logs."""
        out = []
        for name, proc in self.nodes.items():
            code = proc.poll()
            out.append(f"--- node {name}: " + ("running" if code is None else f"exited {code}"))
            logs = self.root / name / "session_latest" / "logs"
            for path in [self.root / f"{name}.log", *(logs / f for f in (
                    "gcs_server.out", "raylet.out", "dashboard.log", "dashboard_agent.log"))]:
                if path.is_file():
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    out.append(f"[{path.name}]\n" + "\n".join(tail))
        return "\n".join(out)

    def alive_nodes(self) -> list[dict]:
        status, body = _http(f"{self.address}/api/v0/nodes?detail=1",
                             {"Authorization": f"Bearer {self.token}"})
        if status != 200:
            return []
        nodes = json.loads(body)["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def node_id(self, name: str) -> str:
        """The Ray node id of one of our nodes, read from its raylet's command line."""
        pgid = self.nodes[name].pid
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.getpgid(int(pid)) != pgid:
                    continue
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except (OSError, ProcessLookupError):
                continue
            m = re.search(r"--node_id=([0-9a-f]+)", cmd)
            if m and "raylet" in cmd.split("\0")[0]:
                return m.group(1)
        raise LookupError(f"no raylet found for node {name}")

    def name_of(self, node_id: str) -> str:
        for name, known in self.node_ids.items():
            if known == node_id and name in self.nodes:
                return name
        raise LookupError(f"node {node_id} is not one of {sorted(self.nodes)}")

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of a node at once, as if the machine died."""
        proc = self.nodes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                stop_group(self.nodes.pop(name), grace=3.0)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path:
    """Debian's PostgreSQL server binaries (package `postgresql`), newest version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql: "
                                "install Debian's `postgresql` (.ci/run does)")
    return Path(found[-1]).parent


class Postgres:
    """A throwaway PostgreSQL server on 127.0.0.1 with a password-protected superuser."""

    def __init__(self):
        # Its own folder directly under /tmp: the `postgres` user cannot enter pytest's 0700 dirs.
        self.root = Path(tempfile.mkdtemp(prefix="dit-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.user = "postgres"
        self.bindir = postgres_bindir()

    def _as_owner(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        # PostgreSQL refuses to run as root: run its tools as the `postgres` system user.
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, **kw)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
        return done

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for p in (self.root, pwfile):
                os.chown(p, owner.pw_uid, owner.pw_gid)
        pwfile.chmod(0o600)
        self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                        "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"])
        pwfile.unlink()
        self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                        str(self.root / "postgres.log"), "-w", "-t", "60", "-o",
                        f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start"])

    def env(self) -> dict[str, str]:
        """What libpq (psql, psycopg2, SQLAlchemy) needs to log in; the password stays here."""
        return {"PGPASSWORD": self.password}

    def uri(self, database: str) -> str:
        # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                        self.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                        f'CREATE DATABASE "{name}"'], check=True, capture_output=True,
                       env={**os.environ, **self.env()})
        return self.uri(name)

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(RuntimeError):
                self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# MLflow


class MlflowServer:
    """`mlflow server --app-name basic-auth --workers 1` on 127.0.0.1, restartable on one port."""

    ADMIN = "admin"

    def __init__(self, root: Path, backend_uri: str, auth_db_uri: str,
                 env: dict[str, str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.backend_uri = backend_uri
        self.artifacts = self.root / "artifacts"
        self.admin_password = secrets.token_urlsafe(18)
        self.secret_key = secrets.token_hex(32)
        self.extra_env = env or {}
        self.config = self.root / "basic_auth.ini"
        self.config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = {auth_db_uri}\nadmin_username = {self.ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(self.extra_env, MLFLOW_AUTH_CONFIG_PATH=str(self.config),
                   MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY=self.secret_key)
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--app-name", "basic-auth", "--backend-store-uri",
             self.backend_uri, "--artifacts-destination", self.artifacts.as_uri(),
             "--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port}"],
            env=env, stdout=log, stderr=log, start_new_session=True)
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}); see "
                                   f"{self.root / 'server.log'}")
            return _http(f"{self.url}/health")[0] == 200

        wait_until(up, timeout, "MLflow server")

    def stop(self) -> None:
        stop_group(self.proc, grace=3.0)
        self.proc = None

    def admin_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.ADMIN,
                "MLFLOW_TRACKING_PASSWORD": self.admin_password}

    def create_user(self, name: str) -> dict[str, str]:
        """A non-admin user (it manages the experiments it creates); returns its client env."""
        import base64

        password = secrets.token_urlsafe(18)
        auth = base64.b64encode(f"{self.ADMIN}:{self.admin_password}".encode()).decode()
        req = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/users/create", method="POST",
            data=json.dumps({"username": name, "password": password}).encode(),
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        return {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}
