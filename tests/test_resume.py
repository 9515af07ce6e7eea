"""A simulated study whose driver is killed mid-way resumes and finishes without rerunning the
trials it had finished, and ends with the same trials a plan predicts."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray

from scaling.surface import SURFACES
from search.allocator import resolve_prior
from search.cli import main
from search.plan import simulate_study, simulated_template
from search.spec import load_spec
from search.tracking import Tracking
from search.trial_log import ATTEMPTS, known_trial_runs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_a_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    spec_path = tmp_path / "resume.toml"
    # Trials hold their slot for 0.5-2 s of wall time, so the kill lands between reports.
    spec_path.write_text(textwrap.dedent(f"""
        name = "resume"
        seed = 2
        budgets = [1e17, 2e17, 4e17]
        output_dir = "{tmp_path / 'out'}"
        [trainer]
        kind = "simulated"
        batch_size = 256
        time_scale = 2e-3
        [allocator]
        kind = "adaptive"
        prior = "paper"
        spacing = 3.0
        max_trials_per_budget = 4  # 12 trials: 6 before the kill, the rest after
        [resources]
        max_concurrent_trials = 1
    """))
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "run", str(spec_path)],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    tracking = Tracking(uri)
    finished: set[str] = set()
    deadline = time.monotonic() + 240
    try:
        while len(finished) < 6:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the study did not finish 6 trials in time"
            time.sleep(0.5)
            try:
                parent = tracking.latest_study_run("resume")
            except Exception:  # the experiment is not created yet
                continue
            runs = known_trial_runs(tracking, "resume", parent.info.run_id)
            finished = {k for k, (_, _, status) in runs.items() if status == "finished"}
        time.sleep(0.3)
        runs = known_trial_runs(tracking, "resume", parent.info.run_id)
        finished = {k for k, (_, _, status) in runs.items() if status == "finished"}
    finally:  # the driver, its Ray cluster and workers: one process group, started here
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()

    try:
        assert main(["resume", "--study", "resume", "--tracking-uri", uri]) == 0
    finally:
        ray.shutdown()
    after = known_trial_runs(tracking, "resume", parent.info.run_id)
    assert all(status == "finished" for _, _, status in after.values())
    for key in finished:  # finished before the kill: never started again
        run = tracking.client.get_run(after[key][0])
        assert run.data.tags[ATTEMPTS] == "1", key
    records = tracking.trial_records(parent.info.run_id, parent.info.experiment_id)
    assert len(records) == len({r.trial_key for r in records})  # no duplicate runs
    assert tracking.client.get_run(parent.info.run_id).data.tags.get("dit.laws") == "1"
    spec = load_spec(spec_path)
    sim = simulate_study(spec, simulated_template(spec), resolve_prior(spec), "adaptive",
                         SURFACES["paper"], concurrency=1, fit=False)
    assert sorted(after) == sorted(t.key for t in sim.trials)
    assert len(after) > len(finished)
