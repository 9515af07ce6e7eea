"""One study flow: the proposer `run` builds, the one `resume` rebuilds and the one `plan`
simulates propose the same trials; interruptions leave a study `stopped` and resumable; one
study runs at a time."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scaling.surface import SURFACES
from search.allocator import resolve_prior
from search.plan import simulate_study, simulated_template
from search.proposal import FINISHED, Proposer
from search.simulated import SimContext
from search.spec import parse_spec
from search.study.proposers import ReuseFinished, inner_proposer
from search.study.session import DRIVER_TAG, prepare_session, start_run
from search.tracking import STATUS, Tracking
from search.trial_log import ATTEMPTS, known_trial_runs
from tests.services import wait_progressing

ROOT = Path(__file__).resolve().parents[1]


def sim_spec(out: Path, kind: str, **trainer) -> dict:
    return {"name": "flow", "seed": 3, "budgets": [1e17, 3e17, 1e18], "output_dir": str(out),
            "trainer": {"kind": "simulated", "batch_size": 256, "reports": 3, **trainer},
            "allocator": {"kind": kind, "prior": "paper", "spacing": 3.0},
            "resources": {"max_concurrent_trials": 1}}


def drive(proposer: Proposer, ctx: SimContext, metric: str, limit: int = 200
          ) -> list[tuple[str, float]]:
    """Tune's use of a proposer, one trial at a time, each finishing with its simulated loss;
    the (trial key, loss) of every dispatched trial, in order."""
    ran = []
    for i in range(limit):
        config = proposer.suggest(f"t{i}")
        if config in (None, FINISHED):
            return ran
        loss = ctx.run(config).final_loss
        ran.append((config["trial_key"], loss))
        proposer.on_trial_complete(f"t{i}", {metric: loss, "loss": loss, "final": 1.0})
    raise AssertionError("the proposer never finished")


@pytest.mark.parametrize("kind, seeds", [("fixed", 1), ("adaptive", 1), ("fixed", 2)])
def test_run_resume_and_plan_propose_the_same_trials(tmp_path, kind, seeds):
    spec = parse_spec({**sim_spec(tmp_path, kind), "model": {"seeds_per_size": seeds}})
    template, prior = simulated_template(spec), resolve_prior(spec)
    ctx = SimContext.from_spec(spec)
    planned = [t.key for t in simulate_study(spec, template, prior, kind, SURFACES["paper"],
                                             fit=False).trials]
    session = prepare_session(spec, print)
    start_run(session)
    inner, _ = inner_proposer(session.spec, template, prior, print)
    ran = drive(ReuseFinished(inner, session.tracking.uri, spec.name, session.study_run_id),
                ctx, spec.metric)
    assert [key for key, _ in ran] == planned and len(planned) >= 9
    if seeds > 1:  # each size twice, as distinct trials with their own noise
        first = {key: loss for key, loss in ran if "-r" not in key}
        again = {key[:-3]: loss for key, loss in ran if key.endswith("-r1")}
        assert again.keys() == first.keys() and len(ran) == 2 * len(first)
        assert all(again[key] != first[key] for key in first)

    # The driver dies after k trials finished (in MLflow); `resume` rebuilds the proposer, which
    # completes those k from their records and dispatches only the others, in the same order.
    k = len(ran) // 2
    tracking = session.tracking
    for key, loss in ran[:k]:
        run_id = tracking.trial_run(spec.name, session.study_run_id, key, {}, 1e17)
        tracking.log_metrics(run_id, {spec.metric: loss, "loss": loss})
        tracking.set_status(run_id, "finished")
    inner, _ = inner_proposer(session.spec, template, prior, print)
    again = ReuseFinished(inner, tracking.uri, spec.name, session.study_run_id)
    dispatched = drive(again, ctx, spec.metric)
    assert again.reused == [key for key, _ in ran[:k]]
    assert dispatched == ran[k:]


def test_an_lr_sweep_cannot_be_asked_of_simulated_trials(tmp_path):
    from search.spec import SpecError

    raw = sim_spec(tmp_path, "adaptive", lr_sweep={"factors": [0.5, 1, 2]})
    with pytest.raises(SpecError, match="trainer.lr_sweep needs real training"):
        parse_spec(raw)


def write_spec(path: Path, out: Path, time_scale: float) -> Path:
    path.write_text(textwrap.dedent(f"""
        name = "flow"
        seed = 3
        budgets = [1e17, 3e17, 1e18]
        output_dir = "{out}"
        [trainer]
        kind = "simulated"
        batch_size = 256
        reports = 3
        time_scale = {time_scale}
        [allocator]
        kind = "adaptive"
        prior = "paper"
        spacing = 3.0
        max_trials_per_budget = 4  # 12 trials: the interruptions need a few, not a whole study
        [resources]
        max_concurrent_trials = 1
    """))
    return path


def start_driver(spec: Path, cwd: Path, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "search.cli", *args, str(spec)], cwd=cwd,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(check, what: str, proc: subprocess.Popen, log: Path):
    """Wait until `check()` is truthy while the driver runs; fail only if it exits or neither its
    log nor the study's store (the folder beside the log) has grown for the idle limit."""
    def checked():
        value = check()
        assert value or proc.poll() is None, f"{what}: the driver exited\n{log.read_text()[-3000:]}"
        return value

    def progress():
        return sum(f.stat().st_size for f in log.parent.rglob("*") if f.is_file())

    return wait_progressing(checked, progress, what)


def finished_trials(tracking: Tracking, run_id: str) -> set[str]:
    return {k for k, (_, _, s) in known_trial_runs(tracking, "flow", run_id).items()
            if s == "finished"}


def study_run(tracking: Tracking):
    try:
        return tracking.latest_study_run("flow")
    except Exception:  # not created yet
        return None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_study_is_stopped_then_resumes_reusing_what_finished(tmp_path, sig):
    spec = write_spec(tmp_path / "flow.toml", tmp_path / "out", time_scale=3e-4)
    tracking = Tracking(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    log = tmp_path / "run.log"
    driver = start_driver(spec, tmp_path, log, "run")
    try:
        run = wait_for(lambda: study_run(tracking), "the study run", driver, log)
        wait_for(lambda: len(finished_trials(tracking, run.info.run_id)) >= 2, "2 trials",
                 driver, log)
        driver.send_signal(sig)
        code = driver.wait(120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 3, text[-3000:]
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert f"stopped by {name}" in text and "dit-scaling resume --study flow" in text
    run = tracking.client.get_run(run.info.run_id)
    assert run.data.tags[STATUS] == "stopped" and run.info.status == "KILLED"
    statuses = known_trial_runs(tracking, "flow", run.info.run_id)
    assert "running" not in {s for _, _, s in statuses.values()}, statuses
    if sig != signal.SIGINT:
        return  # both signals take the same stop path; resuming it once is enough
    before = finished_trials(tracking, run.info.run_id)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "search.cli", "resume", "--study", "flow",
                           "--tracking-uri", tracking.uri], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    after = known_trial_runs(tracking, "flow", run.info.run_id)
    new = set(after) - before
    assert f"({len(after) - len(before)} new, {len(before)} reused)" in done.stdout, \
        done.stdout[-2000:]
    assert new and all(s == "finished" for _, _, s in after.values())
    for key in before:  # finished before the interruption: never started again
        assert tracking.client.get_run(after[key][0]).data.tags[ATTEMPTS] == "1", key


@pytest.mark.slow
def test_a_second_run_of_a_running_study_is_refused(tmp_path):
    spec = write_spec(tmp_path / "flow.toml", tmp_path / "out", time_scale=1e-2)
    tracking = Tracking(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    log = tmp_path / "first.log"
    first = start_driver(spec, tmp_path, log, "run")
    try:
        run = wait_for(lambda: (r := study_run(tracking)) and DRIVER_TAG in r.data.tags and r,
                       "the first study run", first, log)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        second = subprocess.run([sys.executable, "-m", "search.cli", "run", str(spec)],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"study run {run.info.run_id}" in lines[0], lines
    assert "is running now" in lines[0]
    assert len(tracking.study_runs("flow")) == 1


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_fresh_store_leave_one_study(tmp_path):
    spec = write_spec(tmp_path / "flow.toml", tmp_path / "out", time_scale=0)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_driver(spec, tmp_path, log, "run") for log in logs]
    try:
        codes = [p.wait(600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    texts = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 2], texts
    refused = texts[codes.index(2)]
    assert "Traceback" not in refused and "is running now" in refused, refused
    tracking = Tracking(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = tracking.study_runs("flow")
    assert [r.data.tags[STATUS] for r in runs].count("finished") == 1
