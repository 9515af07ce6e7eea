"""The cluster definitions under clusters/: launcher YAMLs against Ray's own schema, KubeRay and
MLflow manifests checked for structure (token auth, TLS, MLflow's deny-by-default permissions,
NetworkPolicies, secrets only through Secret references), the launchers' secret fetches run
against fake cloud CLIs to show they fail closed, the image's build context, and the VM MLflow
server started for real and attacked: plain HTTP, an unverified certificate, another user's
study."""

import configparser
import http.client
import json
import os
import re
import shlex
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTERS = ROOT / "clusters"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")
MLFLOW_SCRIPT = CLUSTERS / "mlflow" / "start-mlflow-server.sh"
LAUNCHERS = {"aws.yaml": ("aws", ["dit-scaling/ray-auth-token", "dit-scaling/mlflow-username",
                                  "dit-scaling/mlflow-password"]),
             "gcp.yaml": ("gcloud", ["dit-scaling-ray-auth-token", "dit-scaling-mlflow-username",
                                     "dit-scaling-mlflow-password"])}
RAY_HEAD_PORTS = {6379, 8265, 10001}


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_secrets_from_secret_refs(container: dict) -> None:
    for name, entry in env_of(container).items():
        if SECRET_NAME.search(name):
            assert "value" not in entry, f"{name} is written in clear text"
            assert entry["valueFrom"]["secretKeyRef"]["name"], name


def pod_labels(template: dict, cluster_labels: dict[str, str]) -> dict[str, str]:
    """The labels a pod of this template carries: its own and those KubeRay adds."""
    return {**template.get("metadata", {}).get("labels", {}), **cluster_labels}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions are not used here
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def policies_for(policies: list[dict], labels: dict[str, str]) -> list[dict]:
    return [p for p in policies if selects(p["spec"]["podSelector"], labels)]


def assert_peer_is_narrow(peer: dict) -> None:
    """A `from` entry that names who it admits: no ipBlock, no empty (match-all) selector."""
    assert "ipBlock" not in peer, peer
    assert peer, "an empty peer admits everyone"
    for key in ("podSelector", "namespaceSelector"):
        if key in peer:
            assert peer[key].get("matchLabels"), f"{key} {{}} admits every pod/namespace"
    if "namespaceSelector" not in peer:
        assert peer["podSelector"]["matchLabels"], peer


def admitted_ports(rule: dict) -> set[int] | None:
    """The ports an ingress rule opens; None for every port."""
    if not rule.get("ports"):
        return None
    return {p["port"] for p in rule["ports"]}


def assert_ingress_only_from(policy: dict, cluster_pods: dict[str, str],
                             outside: set[int]) -> None:
    """Ingress is on and admits, on every port, only pods with the `cluster_pods` labels; anyone
    else it names only on `outside`."""
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    for rule in spec["ingress"]:
        assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits all"
        for peer in rule["from"]:
            assert_peer_is_narrow(peer)
        own = all(set(p) == {"podSelector"} and selects(p["podSelector"], cluster_pods)
                  and set(p["podSelector"]["matchLabels"]) <= set(cluster_pods)
                  for p in rule["from"])
        if not own:
            ports = admitted_ports(rule)
            assert ports is not None and ports <= outside, (policy["metadata"]["name"], rule)


# -------------------------------------------------------------------------------------------------
# Ray cluster launcher (AWS, GCP)


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_yaml_matches_rays_schema_with_token_auth(name):
    config = yaml.safe_load((CLUSTERS / name).read_text())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"]
               if c.startswith(("RAY_", "ray start")))
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0
    gpus = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpus and all(t["max_workers"] >= 1 for t in gpus)
    # node types keep the global fetch: none overrides it with its own (or none)
    assert not any("initialization_commands" in t for t in config["available_node_types"].values())


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_secret_fetch_is_written_to_fail_closed(name):
    config = yaml.safe_load((CLUSTERS / name).read_text())
    (fetch,) = config["initialization_commands"]
    subprocess.run(["bash", "-n", "-c", fetch], check=True)
    lines = [ln.strip() for ln in fetch.splitlines() if ln.strip()]
    assert lines[:2] == ["set -euo pipefail", "umask 077"]
    assert "mktemp" in fetch and "mv -f" in fetch and "chmod 600" in fetch
    assert re.search(r'"" \| None\)', fetch), "an empty secret must be refused"
    for secret in LAUNCHERS[name][1]:
        assert f"secret {secret})" in fetch
    # where the fetch writes is what the container mounts, read-only, for the ssh user's home
    home = f"/home/{config['auth']['ssh_user']}"
    opts = config["docker"]["run_options"]
    assert f"--volume {home}/.ray:/home/ray/.ray:ro" in opts
    assert f"--volume {home}/.mlflow:/home/ray/.mlflow:ro" in opts
    assert "--env RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token" in opts
    assert not any("MLFLOW_TRACKING_PASSWORD" in o or "MLFLOW_TRACKING_USERNAME" in o
                   for o in opts)
    # the repository synced to the nodes leaves local state and secrets behind
    excluded = set(config["rsync_exclude"])
    for pattern in ("**/.venv", "**/dit-scaling-runs", "**/.git", "**/*.db", "**/auth_token*",
                    "**/.mlflow", "**/credentials"):
        assert pattern in excluded, pattern


FAKE_AWS = """#!/usr/bin/env bash
# aws secretsmanager get-secret-value --secret-id ID --query SecretString --output text
while [ $# -gt 0 ]; do [ "$1" = --secret-id ] && id="$2"; shift; done
f="$FAKE_SECRETS/${id//\\//__}"
[ -f "$f" ] || { echo "ResourceNotFoundException: $id" >&2; exit 254; }
cat "$f"; echo
"""
FAKE_GCLOUD = """#!/usr/bin/env bash
# gcloud secrets versions access latest --secret=ID  (prints the payload as it is)
for a in "$@"; do case "$a" in --secret=*) id="${a#--secret=}" ;; esac; done
f="$FAKE_SECRETS/$id"
[ -f "$f" ] || { echo "NOT_FOUND: $id" >&2; exit 1; }
cat "$f"
"""


def run_fetch(name: str, tmp_path: Path, secrets: dict[str, str | None]):
    """Run the launcher's initialization command as `ray up` would on a node, with a fake cloud
    CLI that serves `secrets` (None: the secret does not exist or cannot be read)."""
    config = yaml.safe_load((CLUSTERS / name).read_text())
    cli, _ = LAUNCHERS[name]
    fake_bin, store, home = tmp_path / "bin", tmp_path / "secrets", tmp_path / "home"
    for d in (fake_bin, store, home):
        d.mkdir(exist_ok=True)
    (fake_bin / cli).write_text(FAKE_AWS if cli == "aws" else FAKE_GCLOUD)
    (fake_bin / cli).chmod(0o755)
    for f in store.iterdir():
        f.unlink()
    for secret, value in secrets.items():
        if value is not None:
            (store / secret.replace("/", "__")).write_text(value)
    command = config["initialization_commands"][0]
    # it writes under $HOME only (never run one that writes to this machine's /home)
    assert "/home/" not in command, "the fetch must write under $HOME"
    env = {"HOME": str(home), "PATH": f"{fake_bin}:/usr/bin:/bin", "FAKE_SECRETS": str(store)}
    done = subprocess.run(["bash", "-c", command], env=env,
                          capture_output=True, text=True, timeout=60)
    return done, home


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_secret_fetch_fails_closed_and_writes_0600_files(name, tmp_path, monkeypatch):
    token_id, user_id, password_id = LAUNCHERS[name][1]
    good = {token_id: "a" * 64, user_id: "study-bot", password_id: "p%ss w0rd;#=x"}
    done, home = run_fetch(name, tmp_path, good)
    assert done.returncode == 0, done.stderr
    token, creds = home / ".ray" / "auth_token", home / ".mlflow" / "credentials"
    for d in (token.parent, creds.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert sorted(p.name for p in d.iterdir()) == [token.name if d == token.parent
                                                        else creds.name]  # no temp file left
    for f in (token, creds):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert token.read_text().strip() == "a" * 64
    # MLflow reads the file itself, % and all
    from mlflow.utils.credentials import read_mlflow_creds

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tuple(read_mlflow_creds()) == ("study-bot", "p%ss w0rd;#=x")
    assert good[password_id] not in done.stdout + done.stderr

    # each way a fetch can go wrong stops the setup and leaves the last good files as they were
    before = {f: f.read_bytes() for f in (token, creds)}
    bad_values = [None, "", "\n", "two\nlines"] + (["None"] if name == "aws.yaml" else [])
    for secret in (token_id, user_id, password_id):
        for bad in bad_values:
            done, _ = run_fetch(name, tmp_path, {**good, secret: bad})
            assert done.returncode != 0, (secret, bad)
            assert secret in done.stderr, done.stderr
            assert {f: f.read_bytes() for f in (token, creds)} == before, (secret, bad)
            assert sorted(p.name for p in token.parent.iterdir()) == ["auth_token"]
            assert sorted(p.name for p in creds.parent.iterdir()) == ["credentials"]
    # a first boot whose fetch fails writes nothing at all (no empty token file)
    (tmp_path / "fresh").mkdir()
    done, home = run_fetch(name, tmp_path / "fresh", {**good, token_id: None})
    assert done.returncode != 0 and not (home / ".ray" / "auth_token").exists()
    assert not (home / ".mlflow" / "credentials").exists()


# -------------------------------------------------------------------------------------------------
# KubeRay


def kuberay_pods(cluster_spec: dict, cluster_labels: dict[str, str]) -> dict[str, tuple]:
    head = cluster_spec["headGroupSpec"]["template"]
    pods = {"head": (head, pod_labels(head, {**cluster_labels, "ray.io/node-type": "head"}))}
    for g in cluster_spec["workerGroupSpecs"]:
        pods[g["groupName"]] = (g["template"], pod_labels(
            g["template"], {**cluster_labels, "ray.io/node-type": "worker"}))
    return pods


def assert_ray_pods_use_mlflow_safely(pods: dict[str, tuple]) -> None:
    """Every Ray pod: secrets only from Secrets, MLflow over HTTPS with a CA file that is mounted,
    and the label the MLflow NetworkPolicy admits."""
    (mlflow_policy,) = [p for p in by_kind(load_all(CLUSTERS / "mlflow" / "mlflow-server.yaml"),
                                           "NetworkPolicy")
                        if p["metadata"]["name"] == "dit-scaling-mlflow"]
    admitted = [peer["podSelector"] for rule in mlflow_policy["spec"]["ingress"]
                for peer in rule["from"]]
    for name, (template, labels) in pods.items():
        assert any(selects(s, labels) for s in admitted), f"{name} cannot reach MLflow"
        mounts = {}
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for c in containers(template):
            assert_secrets_from_secret_refs(c)
            env = env_of(c)
            assert env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"]
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert "MLFLOW_TRACKING_INSECURE_TLS" not in env
            if "MLFLOW_TRACKING_URI" in env:
                assert env["MLFLOW_TRACKING_URI"]["value"].startswith("https://")
            ca = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]["value"]
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            (vol,) = [v for p, v in mounts.items() if ca.startswith(p + "/")]
            assert "configMap" in volumes[vol] or "secret" in volumes[vol]
        assert template["spec"].get("automountServiceAccountToken") is False, name


def assert_head_policy(policies: list[dict], pods: dict[str, tuple], outside: set[int]) -> None:
    own = {k: v for k, v in pods["head"][1].items() if k != "ray.io/node-type"}
    own.pop("dit-scaling.io/mlflow-client", None)
    for name, (_, labels) in pods.items():
        chosen = policies_for(policies, labels)
        assert chosen, f"no NetworkPolicy selects the {name} pods"
        for policy in chosen:
            assert_ingress_only_from(policy, own, outside)
    # the workers reach the head on every port (GCS 6379 among them)
    worker_labels = next(lbl for n, (_, lbl) in pods.items() if n != "head")
    head_rules = [r for p in policies_for(policies, pods["head"][1]) for r in p["spec"]["ingress"]]
    assert any(admitted_ports(r) is None and any(selects(peer["podSelector"], worker_labels)
                                                 for peer in r["from"] if "podSelector" in peer)
               for r in head_rules)
    # somebody outside the cluster may submit (the job API), and only there
    assert any(admitted_ports(r) and 8265 in admitted_ports(r) for r in head_rules)


def test_kuberay_raycluster_token_auth_secrets_and_network_policies():
    docs = load_all(CLUSTERS / "kuberay" / "raycluster.yaml")
    (cluster,) = by_kind(docs, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "dit-scaling-ray-token"}
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pods = kuberay_pods(spec, {"ray.io/cluster": cluster["metadata"]["name"]})
    assert_ray_pods_use_mlflow_safely(pods)
    policies = by_kind(docs, "NetworkPolicy")
    # the dashboard listens on the pod's address: then a policy must fence the head
    assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") != "127.0.0.1"
    assert_head_policy(policies, pods, outside={8265, 10001})
    worker = containers(spec["workerGroupSpecs"][0]["template"])[0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"]


def test_kuberay_rayjob_runs_the_study_with_token_auth_and_network_policies():
    docs = load_all(CLUSTERS / "kuberay" / "rayjob.yaml")
    (job,) = by_kind(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("python -m search.cli run ")
    assert not SECRET_NAME.search(job["spec"]["entrypoint"].upper().replace("-", "_"))
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert not [k for k in runtime_env.get("env_vars", {}) if SECRET_NAME.search(k)
                or k.startswith("MLFLOW_TRACKING_")]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    # the generated RayCluster's name is unknown: its pods are told apart by the study label
    pods = kuberay_pods(cluster, {"ray.io/cluster": "dit-scaling-study-x7k2p"})
    assert all(lbl.get("dit-scaling.io/study") == job["metadata"]["name"]
               for _, lbl in pods.values())
    assert_ray_pods_use_mlflow_safely(pods)
    policies = by_kind(docs, "NetworkPolicy")
    for _, labels in pods.values():
        for policy in policies_for(policies, labels):
            assert "ray.io/cluster" not in policy["spec"]["podSelector"]["matchLabels"]
    pods = {n: (t, {k: v for k, v in lbl.items() if k != "ray.io/cluster"})
            for n, (t, lbl) in pods.items()}
    assert_head_policy(policies, pods, outside={8265})
    # the submitter Job KubeRay starts (named after the RayJob) reaches the job API
    submitter = {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    head_rules = [r for p in policies_for(policies, pods["head"][1]) for r in p["spec"]["ingress"]]
    assert any(8265 in (admitted_ports(r) or set()) and any(
        selects(peer.get("podSelector", {}), submitter) and "namespaceSelector" not in peer
        for peer in r["from"]) for r in head_rules)


# -------------------------------------------------------------------------------------------------
# MLflow server: Kubernetes and VM


def auth_ini(text: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser()
    ini.read_string(text)
    return ini


def test_mlflow_server_definition_tls_permissions_and_network_policy():
    docs = load_all(CLUSTERS / "mlflow" / "mlflow-server.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]
    (server,) = containers(pod)
    args = dict(a.removeprefix("--").split("=", 1) for a in server["args"])
    assert args["app-name"] == "basic-auth" and args["workers"] == "1"
    assert args["backend-store-uri"].startswith("postgresql")
    assert args["artifacts-destination"].startswith("s3://")
    assert args["allowed-hosts"]
    # TLS: uvicorn gets a certificate and key from a Secret volume; no plain-HTTP listener
    assert not ({"gunicorn-opts", "waitress-opts", "dev"} & set(args))
    words = shlex.split(args["uvicorn-opts"])
    tls = dict(zip(words[::2], words[1::2], strict=True))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    for opt in ("--ssl-certfile", "--ssl-keyfile"):
        path = tls[opt]
        (mount,) = [m for p, m in mounts.items() if path.startswith(p + "/")]
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "dit-scaling-mlflow-tls"
        assert secret["defaultMode"] & 0o007 == 0, "the key must not be world-readable"
    assert server["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True and context["fsGroup"] == context["runAsGroup"]
    env = env_of(server)
    for name in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]
    assert_secrets_from_secret_refs(server)
    # deny by default; the auth database named in the file the server is pointed at
    (config_map,) = by_kind(docs, "ConfigMap")
    (auth_mount,) = [p for p in mounts if env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith(p)]
    assert volumes[mounts[auth_mount]["name"]]["configMap"]["name"] == \
        config_map["metadata"]["name"]
    ini = auth_ini(config_map["data"]["basic_auth.ini"])["mlflow"]
    assert ini["default_permission"] == "NO_PERMISSIONS"
    assert ini["database_uri"].startswith("postgresql") and "admin_password" not in ini
    assert ini.getboolean("grant_default_workspace_access") is False
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    # only the Ray pods reach the server: a NetworkPolicy on its pods, narrow peers, its port only
    labels = pod["metadata"]["labels"]
    policies = policies_for(by_kind(docs, "NetworkPolicy"), labels)
    assert policies, "no NetworkPolicy selects the MLflow pods"
    for policy in policies:
        assert_ingress_only_from(policy, {"__none__": "x"}, outside={5000})
        for rule in policy["spec"]["ingress"]:
            assert all("namespaceSelector" not in p for p in rule["from"])
    admitted = [peer["podSelector"]["matchLabels"] for p in policies
                for r in p["spec"]["ingress"] for peer in r["from"]]
    assert {"dit-scaling.io/mlflow-client": "true"} in admitted
    # and only the server reaches its PostgreSQL
    (pg_policy,) = policies_for(by_kind(docs, "NetworkPolicy"), {"app": "dit-scaling-postgres"})
    assert [peer["podSelector"]["matchLabels"] for r in pg_policy["spec"]["ingress"]
            for peer in r["from"]] == [labels]


def script_auth_ini() -> configparser.ConfigParser:
    text = MLFLOW_SCRIPT.read_text()
    body = re.search(r"<<INI\n(.*?)\nINI\n", text, re.S).group(1)
    return auth_ini(body)


def test_vm_mlflow_script_serves_tls_only_with_deny_by_default():
    subprocess.run(["bash", "-n", str(MLFLOW_SCRIPT)], check=True)
    text = MLFLOW_SCRIPT.read_text()
    assert "set -euo pipefail" in text and "umask 077" in text
    assert script_auth_ini()["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    server = text[text.index("exec mlflow server"):]
    assert "--app-name basic-auth" in server and "--allowed-hosts" in server
    assert '--uvicorn-opts "$tls"' in server
    assert re.search(r'tls="--ssl-certfile .*MLFLOW_TLS_CERT.* --ssl-keyfile .*MLFLOW_TLS_KEY',
                     text)
    assert not re.search(r"--(gunicorn|waitress)-opts|--dev\b", server)
    for required in ("MLFLOW_TLS_CERT", "MLFLOW_TLS_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert re.search(r'\$\{' + required + r':\?', text), required


def vm_env(tmp_path: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env.update(PATH=f"{Path(os.sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 32, PGPASSWORD="not-used-here",
               PG_HOST="127.0.0.1", ARTIFACTS=str(tmp_path / "artifacts"),
               MLFLOW_HOST="localhost", MLFLOW_BIND="127.0.0.1")
    env.update(extra)
    return env


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def test_vm_mlflow_script_refuses_to_start_without_tls_or_with_a_readable_key(tmp_path):
    cert, key = make_cert(tmp_path)
    for missing in ("MLFLOW_TLS_CERT", "MLFLOW_TLS_KEY"):
        env = vm_env(tmp_path, MLFLOW_TLS_CERT=str(cert), MLFLOW_TLS_KEY=str(key))
        del env[missing]
        done = subprocess.run([str(MLFLOW_SCRIPT)], env=env, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode != 0 and missing in done.stderr
    key.chmod(0o644)
    done = subprocess.run([str(MLFLOW_SCRIPT)], env=vm_env(
        tmp_path, MLFLOW_TLS_CERT=str(cert), MLFLOW_TLS_KEY=str(key)),
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "readable by other users" in done.stderr


@pytest.mark.slow
def test_vm_mlflow_server_refuses_plain_http_and_hides_other_users_studies(tmp_path, monkeypatch):
    """The VM script started for real (PostgreSQL, TLS, basic-auth), then attacked."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from tests.services import Postgres, free_port, stop_group, wait_until

    cert, key = make_cert(tmp_path)
    pg = Postgres()
    proc = None
    try:
        pg.start()
        pg.create_database("mlflow")
        pg.create_database("mlflow_auth")
        port = free_port()
        admin_password = "admin-" + os.urandom(9).hex()
        env = vm_env(tmp_path, PGPASSWORD=pg.password, PG_PORT=str(pg.port), PG_USER=pg.user,
                     MLFLOW_PORT=str(port), MLFLOW_TLS_CERT=str(cert), MLFLOW_TLS_KEY=str(key),
                     MLFLOW_AUTH_ADMIN_PASSWORD=admin_password)
        log = open(tmp_path / "server.log", "wb")
        proc = subprocess.Popen([str(MLFLOW_SCRIPT)], env=env, stdout=log, stderr=log,
                                start_new_session=True)
        url = f"https://localhost:{port}"
        trusted = ssl.create_default_context(cafile=str(cert))

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(tmp_path / 'server.log').read_text()}")
            with urllib.request.urlopen(f"{url}/health", context=trusted, timeout=3) as r:
                return r.status == 200

        wait_until(up, 180, "MLflow over TLS")
        # plain HTTP on the same port gets no answer: basic-auth passwords never cross in clear
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
        # a client that does not trust the certificate refuses it
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"{url}/health", timeout=5)

        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
        monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS", raising=False)

        def as_user(name: str, password: str) -> None:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

        as_user("admin", admin_password)
        admin = get_app_client("basic-auth", tracking_uri=url)
        passwords = {u: f"{u}-" + os.urandom(9).hex() for u in ("alice", "bob")}
        for user, password in passwords.items():
            admin.create_user(username=user, password=password)
        client = MlflowClient(tracking_uri=url)

        as_user("alice", passwords["alice"])
        exp = client.create_experiment("alice-study")
        run = client.create_run(exp).info.run_id
        client.log_metric(run, "loss", 0.5)

        as_user("bob", passwords["bob"])
        assert "alice-study" not in [e.name for e in client.search_experiments()]
        for read in (lambda: client.get_experiment(exp), lambda: client.get_run(run),
                     lambda: client.get_experiment_by_name("alice-study")):
            with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
                read()
        with pytest.raises(MlflowException):  # the name is taken, and not his to use
            client.create_experiment("alice-study")

        # the owner grants READ on that one experiment, as clusters/README.md shows
        as_user("alice", passwords["alice"])
        get_app_client("basic-auth", tracking_uri=url).grant_user_permission(
            "bob", "experiment", exp, "READ")
        as_user("bob", passwords["bob"])
        assert client.get_run(run).data.metrics == {"loss": 0.5}
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
            client.log_metric(run, "loss", 0.1)
        with pytest.raises(MlflowException):
            get_app_client("basic-auth", tracking_uri=url).grant_user_permission(
                "bob", "experiment", exp, "MANAGE")
    finally:
        stop_group(proc, grace=3.0)
        pg.stop()


# -------------------------------------------------------------------------------------------------
# The image and every file


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """The root .dockerignore as (exclude, pattern) rules, Docker's syntax: the last rule that
    matches a path or one of its parents decides; `**` spans folders, `*` does not."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(rx)))
    return rules


def in_build_context(path: str, rules) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for exclude, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = exclude
    return not excluded


def test_image_build_context_leaves_out_local_state_and_secrets():
    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    assert "docker build -f clusters/Dockerfile" in dockerfile and dockerfile.rstrip().endswith(
        "WORKDIR /home/ray")  # built from the root, so the root's .dockerignore applies
    rules = dockerignore_rules()
    for path in ("dit-scaling-runs/mlflow.db", "dit-scaling-runs/studies/demo/runs.parquet",
                 "mlflow.db", "search/mlflow.db", "scaling/cache.sqlite", ".venv/bin/python",
                 ".git/config", "search/__pycache__/cli.cpython-311.pyc",
                 "dit_scaling.egg-info/PKG-INFO", "auth_token", "search/auth_token",
                 ".ray/auth_token", ".mlflow/credentials", "credentials", "mlruns/0/meta.yaml",
                 "tls.key", "clusters/mlflow/server.pem", ".env", "tests/test_clusters.py",
                 "benchmarks/submit_overhead.py", "clusters/aws.yaml", ".ci/run"):
        assert not in_build_context(path, rules), path
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith(("COPY", "ADD")):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    assert sources and "." not in sources and "./" not in sources
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for src in sources:
        assert in_build_context(src, rules), src
        inside = [p for p in tracked if p == src or p.startswith(src.rstrip("/") + "/")]
        assert inside and all(in_build_context(p, rules) for p in inside), src
    needed = [p for p in tracked if p.startswith(("scaling/", "search/"))
              or p in ("pyproject.toml", "README.md", "constraints.txt")]
    assert all(in_build_context(p, rules) for p in needed)


def test_no_definition_carries_a_secret_in_clear_text():
    credentials_in_uri = re.compile(r"://[^/\s:@'\"]+:[^@\s/'\"]+@")
    literal = re.compile(r"(password|token|secret)[\w-]*\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{12,}",
                         re.IGNORECASE)
    files = [p for p in CLUSTERS.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for path in files:
        text = path.read_text()
        assert not credentials_in_uri.search(text), path
        for m in literal.finditer(text):
            # references to where a secret lives are fine; values are not
            assert re.search(r"secret|path|from|\$|ref|:\?", m.group(0), re.IGNORECASE), (path, m)
    for path in CLUSTERS.rglob("*.yaml"):
        for doc in load_all(path):
            assert doc.get("kind") != "Secret", f"{path} defines a Secret: create it out of band"


def test_shell_launchers_parse_and_force_token_auth():
    for script in (CLUSTERS / "local" / "start-local-cluster.sh", MLFLOW_SCRIPT):
        subprocess.run(["bash", "-n", str(script)], check=True)
    local = (CLUSTERS / "local" / "start-local-cluster.sh").read_text()
    assert "RAY_AUTH_MODE=token" in local and "--dashboard-host 127.0.0.1" in local
    assert "umask 077" in local and "set -euo pipefail" in local


def test_readme_starts_every_definition_and_says_where_each_secret_lives():
    readme = (CLUSTERS / "README.md").read_text()
    for name in ("aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                 "mlflow/mlflow-server.yaml", "mlflow/start-mlflow-server.sh",
                 "local/start-local-cluster.sh", "Dockerfile"):
        assert f"clusters/{name}" in readme, name
    sections = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", readme, re.M | re.S))
    threat = sections["Threat model"]
    for secret in ("Ray token", "MLflow login", "Flask secret key", "admin password",
                   "TLS key", "PostgreSQL password"):
        assert secret in threat, secret
    creds = sections["Credentials on the cluster"]
    for kind in ("Local", "AWS", "GCP", "KubeRay"):
        assert f"**{kind}" in creds, kind
    grants = sections["Who can read a study"]
    assert "NO_PERMISSIONS" in grants and "grant_user_permission" in grants
    assert "/api/3.0/mlflow/users/permissions/grant" in grants
