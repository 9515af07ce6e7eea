"""The cluster definitions under clusters/: launcher YAMLs against Ray's own schema, KubeRay and
MLflow manifests checked for structure, token auth everywhere, no secret in clear text."""

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTERS = Path(__file__).resolve().parent.parent / "clusters"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_secrets_from_secret_refs(container: dict) -> None:
    for name, entry in env_of(container).items():
        if SECRET_NAME.search(name):
            assert "value" not in entry, f"{name} is written in clear text"
            assert entry["valueFrom"]["secretKeyRef"]["name"], name


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
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
    # the token is fetched from the cloud's secret store at boot, not carried by the file
    assert "auth_token" in " ".join(config["initialization_commands"])


def test_kuberay_raycluster_has_token_auth_and_no_exposed_dashboard():
    (cluster,) = load_all(CLUSTERS / "kuberay" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        for c in containers(pod):
            assert_secrets_from_secret_refs(c)
    worker = containers(spec["workerGroupSpecs"][0]["template"])[0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"]


def test_kuberay_rayjob_runs_the_study_with_token_auth():
    (job,) = load_all(CLUSTERS / "kuberay" / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("python -m search.cli run ")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    for pod in [cluster["headGroupSpec"]["template"]] + [
            g["template"] for g in cluster["workerGroupSpecs"]]:
        for c in containers(pod):
            assert_secrets_from_secret_refs(c)
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def test_mlflow_server_definition():
    docs = {d["kind"]: d for d in load_all(CLUSTERS / "mlflow" / "mlflow-server.yaml")}
    (server,) = containers(docs["Deployment"]["spec"]["template"])
    args = dict(a.removeprefix("--").split("=", 1) for a in server["args"])
    assert args["app-name"] == "basic-auth" and args["workers"] == "1"
    assert args["backend-store-uri"].startswith("postgresql")
    assert args["artifacts-destination"].startswith("s3://")
    assert args["allowed-hosts"]
    env = env_of(server)
    for name in ("MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]
    assert_secrets_from_secret_refs(server)
    auth = docs["ConfigMap"]["data"]["basic_auth.ini"]
    assert "database_uri = postgresql" in auth and "admin_password" not in auth
    assert docs["Service"]["spec"]["type"] == "ClusterIP"


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


def test_shell_launchers_parse_and_force_token_auth():
    for script in (CLUSTERS / "local" / "start-local-cluster.sh",
                   CLUSTERS / "mlflow" / "start-mlflow-server.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    local = (CLUSTERS / "local" / "start-local-cluster.sh").read_text()
    assert "RAY_AUTH_MODE=token" in local and "--dashboard-host 127.0.0.1" in local
    mlflow = (CLUSTERS / "mlflow" / "start-mlflow-server.sh").read_text()
    assert "--app-name basic-auth" in mlflow and "--allowed-hosts" in mlflow


def test_every_definition_has_a_start_line_in_the_readme():
    readme = (CLUSTERS / "README.md").read_text()
    for name in ("aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                 "mlflow/mlflow-server.yaml", "mlflow/start-mlflow-server.sh",
                 "local/start-local-cluster.sh", "Dockerfile"):
        assert f"clusters/{name}" in readme, name
