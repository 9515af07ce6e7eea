"""How fast the query commands answer and the refusals refuse, beside `python -c "import mlflow"`.

Every command runs as a fresh process (what a user types), `--runs` times; the table gives the
median wall time, its ratio to the baseline's median, the peak resident memory and whether the
process loaded Ray or torch; the CPU column (user + system, median) moves less than wall time when
other work shares the machine. The store is a real SQLite MLflow store in a temporary directory: a
study fitted by `fit --log-to-mlflow` and a study with 15 finished trial runs.

Goals: every query under 2 s on this machine, no query loads Ray or torch; a refusal (bad spec,
unusable store, closed port) is one line, exit code 2, well under the time of a query.

    .venv/bin/python benchmarks/query_latency.py [--runs 5] [--code DIR]

`--code DIR` measures another checkout of the project (e.g. an older commit unpacked with
`git archive COMMIT | tar -x -C DIR`) with this machine's virtual environment.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS_FILE = ROOT / "tests" / "data" / "runs_3x5.csv"
GOAL_S = 2.0
PROBE = ("import sys, runpy; sys.argv = ['dit-scaling', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('search.cli', run_name='__main__')\n"
         "finally:\n    print('loaded:', ' '.join(m for m in ('ray', 'torch') if m in sys.modules)"
         ", file=sys.stderr)\n")


@dataclass(frozen=True)
class Sample:
    seconds: float
    cpu_seconds: float  # user + system: what the command costs, less moved by a busy machine
    rss_mb: float
    code: int
    loaded: str
    stderr: str


def run_once(argv: list[str], env: dict[str, str], cwd: Path, probe: bool,
             timeout: float) -> Sample:
    """One fresh process, killed after `timeout` s; its wall time and peak RSS (from wait4, this
    child only)."""
    cmd = [sys.executable, "-c", PROBE, *argv] if probe else argv
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    loaded = ""
    if probe:
        lines = err.strip().splitlines()
        loaded = lines[-1].removeprefix("loaded:").strip() if lines else "?"
        err = "\n".join(lines[:-1])
    return Sample(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                  proc.returncode, loaded or "-", err)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(folder: Path, env: dict[str, str]) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    subprocess.run([sys.executable, "-m", "search.cli", "fit", str(RUNS_FILE), "--log-to-mlflow",
                    "--study", "fitted", "--tracking-uri", uri], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = ("import sys\nfrom search.tracking import Tracking\n"
            "t = Tracking(sys.argv[1], sys.argv[2])\n"
            "study = t.start_study_run('trials', {'budgets': '[1e11, 1e12, 1e13]'})\n"
            "for i in range(15):\n"
            "    run = t.trial_run('trials', study, f'trial-{i}', {'params': str(1000 * (i + 1)),"
            " 'budget': '1e11'}, 1e11)\n"
            "    t.log_metrics(run, {'loss': 0.5, 'val_loss': 0.4, 'step': 100})\n"
            "    t.set_status(run, 'finished')\n")
    subprocess.run([sys.executable, "-c", code, uri, str(folder / "artifacts")], env=env,
                   check=True)
    return uri


def commands(uri: str, folder: Path) -> list[tuple[str, list[str], bool]]:
    """(label, argv after `dit-scaling`, a query that must answer) for each measured command."""
    bad = folder / "bad.toml"
    bad.write_text('name = "bad"\nbudgets = [2e11, 1e11]\n')
    nodata = folder / "nodata.toml"
    nodata.write_text('name = "nodata"\nbudgets = [1e11, 2e11]\n[data]\nsource = "path"\n'
                      f'path = "{folder / "absent"}"\n')
    port = closed_port()
    return [
        ("laws --study fitted", ["laws", "--study", "fitted", "--tracking-uri", uri], True),
        ("status --study trials", ["status", "--study", "trials", "--tracking-uri", uri], True),
        ("predict --study fitted --budget 1e20",
         ["predict", "--study", "fitted", "--budget", "1e20", "--tracking-uri", uri], True),
        ("predict --law paper --budget 1.5e21",
         ["predict", "--law", "paper", "--budget", "1.5e21"], True),
        ("compare fitted runs_3x5.csv", ["compare", "fitted", str(RUNS_FILE), "--tracking-uri",
                                         uri], True),
        ("fit runs_3x5.csv (1000 draws)", ["fit", str(RUNS_FILE)], True),
        ("run BAD_SPEC (unsorted budgets)", ["run", str(bad)], False),
        ("run SPEC (data.path missing)", ["run", str(nodata)], False),
        ("laws, sqlite:///DIRECTORY", ["laws", "--study", "x", "--tracking-uri",
                                       f"sqlite:///{folder}"], False),
        ("laws, http://127.0.0.1:CLOSED", ["laws", "--study", "x", "--tracking-uri",
                                           f"http://127.0.0.1:{port}"], False),
        ("status, missing SQLite file", ["status", "--study", "x", "--tracking-uri",
                                         f"sqlite:///{folder / 'no' / 'such.db'}"], False),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="processes per command (median)")
    p.add_argument("--code", type=Path, default=ROOT, help="the project checkout to measure")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds before a process is killed (exit -9 in the table)")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(args.code.resolve())
    with tempfile.TemporaryDirectory(prefix="query-latency-") as tmp:
        folder = Path(tmp)
        work = folder / "work"
        work.mkdir()
        uri = make_store(folder, env)
        rows = [("python -c 'import mlflow' (baseline)",
                 [run_once([sys.executable, "-c", "import mlflow"], env, work, False,
                           args.timeout)
                  for _ in range(args.runs)], True)]
        for label, argv, query in commands(uri, folder):
            samples = [run_once(argv, env, work, True, args.timeout) for _ in range(args.runs)]
            rows.append((label, samples, query))
        created = sorted(p.name for p in work.iterdir())
    base = statistics.median(s.seconds for s in rows[0][1])
    base_cpu = statistics.median(s.cpu_seconds for s in rows[0][1])
    print(f"code: {args.code.resolve()}; {args.runs} fresh processes per command, medians; "
          f"baseline {base:.2f} s wall, {base_cpu:.2f} s CPU; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'command':<40} {'median s':>8} {'min-max s':>11} {'x mlflow':>8} {'CPU s':>6} "
          f"{'x mlflow':>8} {'peak MB':>7} {'exit':>4}  loaded   first line of stderr")
    worst = 0.0
    for label, samples, query in rows:
        median = statistics.median(s.seconds for s in samples)
        cpu = statistics.median(s.cpu_seconds for s in samples)
        if query and samples is not rows[0][1]:
            worst = max(worst, median)
        first = samples[0].stderr.strip().splitlines()
        line = (first[0][:70] + ("..." if len(first[0]) > 70 else "")) if first else ""
        print(f"{label:<40} {median:>8.2f} {min(s.seconds for s in samples):>5.2f}-"
              f"{max(s.seconds for s in samples):<5.2f} {median / base:>8.2f} {cpu:>6.2f} "
              f"{cpu / base_cpu:>8.2f} {max(s.rss_mb for s in samples):>7.0f} "
              f"{samples[0].code:>4}  "
              f"{samples[0].loaded:<8} {line}")
    print(f"files left in the working directory by the commands: {created or 'none'}")
    print(f"slowest query median: {worst:.2f} s (goal < {GOAL_S:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
