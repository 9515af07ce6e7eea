"""The simulated trainable as Tune ships it to every trial actor."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ray import cloudpickle

from search.simulated import SimContext, gpu_request, run_simulated_trial
from search.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
LOAD = """
import pickle, sys, json
trainable, ctx, resources = pickle.load(open(sys.argv[1], "rb"))
print(json.dumps({"gpus": resources({"gpus": 4}).required_resources.get("GPU"),
                  "heavy": sorted(m for m in ("torch", "mlflow", "transformers")
                                  if m in sys.modules)}))
"""


def test_a_trial_actor_loads_the_trainable_without_torch_or_mlflow(tmp_path):
    # A trial actor unpickles the trainable, its context and its resource function; each
    # imports its module there. Pulling in torch or MLflow costs seconds of CPU per actor, which
    # on a 2-core head starved a 1,000-trial study of trial starts.
    spec = parse_spec({"name": "s", "budgets": [1e17, 1e18], "trainer": {"kind": "simulated"},
                       "resources": {"gpus_per_trial": [{"max_params": 5e7, "gpus": 2},
                                                        {"gpus": 4}]}})
    payload = tmp_path / "trainable.pkl"
    payload.write_bytes(cloudpickle.dumps((run_simulated_trial, SimContext.from_spec(spec),
                                           gpu_request)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", LOAD, str(payload)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"gpus": 4.0, "heavy": []}
