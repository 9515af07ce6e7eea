"""Run `dit-scaling` as a real subprocess and read back what a user would see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def one_line_error(self) -> bool:
        """Exactly one line on stderr, no traceback."""
        text = self.err.strip()
        return bool(text) and "\n" not in text and "Traceback" not in text


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def dit_scaling(*args: str, cwd: Path, timeout: float = 120, **env: str) -> Result:
    """`dit-scaling ARGS` in `cwd`, with no MLflow or Ray settings inherited from the caller."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          env=environment(**env), capture_output=True, text=True,
                          timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def modules_after(argv: list[str], cwd: Path) -> dict:
    """Run the CLI's `main(argv)` in a fresh interpreter; its exit code and whether Ray, torch or
    matplotlib were imported."""
    code = ("import json, sys, contextlib, io\n"
            "from search.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main({argv!r})\n"
            "print(json.dumps({'rc': rc, **{m: m in sys.modules for m in "
            "('ray', 'torch', 'matplotlib')}}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
