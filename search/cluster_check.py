"""Can every node of this Ray cluster reach the study's MLflow server with its own credentials?

Run as a short Ray job by `submit` before the study itself (`python -m search.cluster_check URI`):
one task pinned to each alive node looks for MLflow credentials where the cluster definitions
put them (environment or `~/.mlflow/credentials`), refuses a credentials file others can read,
and makes one authenticated MLflow call. It prints one `RESULT_PREFIX` line of JSON holding, per
node, where the credentials came from (never their values) and what MLflow answered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULT_PREFIX = "dit-cluster-check: "


def node_check(tracking_uri: str) -> dict[str, str | None]:
    """This node's credential source and MLflow's answer ("ok" or the first line of the error)."""
    from search.credentials import (
        CREDENTIALS_FILE,
        InsecureSecretError,
        check_private_file,
        mlflow_credential_source,
    )
    from search.tracking import Tracking

    source = mlflow_credential_source()
    file = Path(CREDENTIALS_FILE).expanduser()
    try:
        if file.is_file():
            check_private_file(file, "MLflow credentials file")
        Tracking(tracking_uri).check_access()
        answer = "ok"
    except InsecureSecretError as err:
        answer = str(err)
    except Exception as err:  # what MLflow said is the finding: report it, do not crash
        text = str(err).strip()
        answer = text.splitlines()[0] if text else type(err).__name__
    return {"source": source, "answer": answer}


def check_nodes(tracking_uri: str) -> dict[str, dict[str, str | None]]:
    """`node_check` on every alive node of the connected cluster, keyed by node id."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(node_check)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = {node: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote(tracking_uri) for node in nodes}
    return {node: ray.get(ref) for node, ref in refs.items()}


def parse_result(logs: str) -> dict[str, dict[str, str | None]] | None:
    """The per-node result printed by `main`, found in a job's logs (None if absent)."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def main(argv: list[str] | None = None) -> int:
    import ray

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m search.cluster_check TRACKING_URI", file=sys.stderr)
        return 2
    ray.init(logging_level="ERROR", log_to_driver=False)
    result = check_nodes(argv[0])
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0 if all(r["answer"] == "ok" for r in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
