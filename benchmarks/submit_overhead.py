"""What submitting through the service costs, on a local multi-node Ray cluster.

Starts (on this machine) a token-auth Ray head with trial slots plus two one-CPU worker nodes, a
PostgreSQL server and a basic-auth MLflow server, then:
1. submits a tiny real study with `dit-scaling submit` and measures seconds from the call to the
   first trial step (the earliest metric any trial logged to MLflow);
2. reads the service's per-trial start-up (Tune trial start to first reported step, median over
   the study's trials, logged by the driver as `trial_startup_s_median`) and where it went: each
   trial's `startup_setup_s` (trial function entry to training loop: its MLflow run) and
   `startup_train_s` (training loop to first report: model, data readers, the first step); the
   rest is Tune's (trial actor, the report's trip back);
3. on the same cluster, starts bare `TorchTrainer`s (same resources, a function that only records
   the time it starts) and measures fit() to that first line.
The service overhead per trial is (2) minus (3).

    PYTHONPATH=. python benchmarks/submit_overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scaling.builtin_data import write_builtin_dataset  # noqa: E402
from search.jobs import submit_study, wait_for_job  # noqa: E402
from search.tracking import TRIAL_KEY, Tracking  # noqa: E402
from tests.services import MlflowServer, Postgres, RayCluster  # noqa: E402

BARE_TRIALS = 3


def bare_trainer_starts(gcs_address: str, storage: Path) -> list[float]:
    """Seconds from TorchTrainer.fit() to the first line of its training function. Runs in a
    process started with the cluster's environment (token auth is read when Ray starts up)."""
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config: dict) -> None:
        Path(config["marker"]).write_text(repr(time.time()))
        ray.train.report({"step": 1})

    ray.init(address=gcs_address, log_to_driver=False)
    seconds = []
    try:
        for i in range(BARE_TRIALS):
            marker = storage / f"marker-{i}"
            trainer = TorchTrainer(
                loop, train_loop_config={"marker": str(marker)},
                scaling_config=ScalingConfig(num_workers=1,
                                             resources_per_worker={"CPU": 0.5}),
                run_config=RunConfig(name=f"bare-{i}", storage_path=str(storage)))
            t0 = time.time()
            trainer.fit()
            seconds.append(float(marker.read_text()) - t0)
    finally:
        ray.shutdown()
    return seconds


def bare_in_cluster_env(cluster: RayCluster, storage: Path) -> list[float]:
    done = subprocess.run([sys.executable, __file__, "--bare", cluster.gcs_address, str(storage)],
                          env=cluster.env(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"bare TorchTrainer run failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="dit-submit-bench-"))
    data = write_builtin_dataset(work / "data", image_size=16, train_samples=512,
                                 val_samples=128, ood_samples=0, samples_per_shard=128, seed=0)
    postgres, cluster, server = Postgres(), RayCluster(), None
    try:
        postgres.start()
        server = MlflowServer(work / "mlflow", postgres.create_database("mlflow"),
                              postgres.create_database("mlflow_auth"), env=postgres.env())
        server.start()
        creds = server.create_user("bench")
        os.environ.update(creds)  # the client's own, for its access check
        cluster.give_credentials(creds)  # the nodes', as a cluster definition provides them
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(cluster.token_path)
        cluster.start_head({"trial_slot": 4})
        cluster.add_node("node_a", num_cpus=1)
        cluster.add_node("node_b", num_cpus=1)

        spec = work / "bench.toml"
        spec.write_text(textwrap.dedent(f"""
            name = "bench"
            budgets = [2e10, 4e10]
            output_dir = "{work / 'out'}"
            [model]
            sizes = [2.5e4, 6.6e4, 1.2e5, 2.2e5]
            [data]
            source = "path"
            path = "{data.root}"
            [trainer]
            batch_size = 16
            val_samples = 64
            report_every = 1
            [resources]
            cpus_per_worker = 0.5
            max_concurrent_trials = 2
            [tracking]
            uri = "{server.url}"
        """))
        t_submit = time.time()
        sub = submit_study(spec, cluster.address)
        info = wait_for_job(cluster.address, sub.submission_id, timeout=900)
        tracking = Tracking(server.url)
        study = tracking.latest_study_run("bench")
        records = tracking.client.search_runs(
            [study.info.experiment_id], f"tags.`mlflow.parentRunId` = '{study.info.run_id}'")
        unfinished = [r.data.tags.get(TRIAL_KEY) for r in records
                      if r.data.tags.get("dit.status") != "finished"]
        if info.status.value != "SUCCEEDED" and (unfinished or not records):
            # timings need finished trials; a refused law fit alone does not spoil them
            raise SystemExit(f"benchmark study ended {info.status.value}: {info.message}; "
                             f"trials not finished: {unfinished or 'all'}")
        first_step = min(m.timestamp for r in records
                         for m in tracking.client.get_metric_history(r.info.run_id, "step")) / 1e3
        timed = [r.data.metrics for r in records if "startup_train_s" in r.data.metrics]
        if not timed:
            raise SystemExit("no trial run logged its start-up breakdown (startup_setup_s, "
                             "startup_train_s)")
        setup = statistics.median(m["startup_setup_s"] for m in timed)
        to_report = statistics.median(m["startup_train_s"] for m in timed)
        service = study.data.metrics.get("trial_startup_s_median")
        if service is None:
            raise SystemExit("the study run has no trial_startup_s_median: the driver stopped "
                             f"before logging it ({info.status.value}: {info.message})")
        bare = bare_in_cluster_env(cluster, work / "bare")
    finally:
        cluster.stop()
        if server is not None:
            server.stop()
        postgres.stop()

    bare_median = statistics.median(bare)
    rows = [
        ("submit -> first trial step", first_step - t_submit),
        (f"trial start -> first step, service (median of {len(records)})", service),
        (f"  of which: trial function -> training loop (MLflow run; {len(timed)} trials)",
         setup),
        ("  of which: training loop -> first report (model, data, step 1)", to_report),
        ("  of which: the rest (Tune's trial actor, the report's trip)",
         service - setup - to_report),
        (f"TorchTrainer.fit -> train function, bare (median of {len(bare)})", bare_median),
    ]
    print(f"{'measured on a local Ray cluster (head + 2 one-CPU nodes)':<64}{'seconds':>10}")
    for what, value in rows:
        print(f"{what:<64}{value:>10.2f}")
    print(f"{'ratio service / bare trial start':<64}{service / bare_median:>10.2f}")
    print(f"service overhead per trial s: {service - bare_median:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        print(json.dumps(bare_trainer_starts(sys.argv[2], Path(sys.argv[3]))))
    else:
        main()
