"""Shared fixtures: one small built-in dataset per session (real shards, real text features) and a
tiny random CLIP vision tower saved with `save_pretrained`, for FID."""

import os
import sys

import pytest

from scaling.builtin_data import DatasetInfo, write_builtin_dataset

EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with the session's exit status once pytest has reported it, without the interpreter's
    teardown: after a suite that ran Ray, gRPC and torch threads in this process, that teardown
    can crash in native code (a segmentation fault after every test had passed), which would turn
    a passing run into a failing one."""
    status = config.stash.get(EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> DatasetInfo:
    return write_builtin_dataset(tmp_path_factory.mktemp("tiny") / "data", image_size=16,
                                 train_samples=512, val_samples=128, ood_samples=64,
                                 samples_per_shard=128, seed=0)


@pytest.fixture(scope="session")
def centred_sizes() -> str:
    """The `[model]` keys of a small real study on `tiny_data`: three sizes a factor 2 apart
    around each budget's optimum, which on this data lies near D ~ 1.3 N tokens."""
    return "sizes_per_budget = 3\ntokens_per_param = 1.33\nmin_params = 1e4"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A 2-layer random CLIPVisionModelWithProjection (32 px, 16-d embeddings) with its image
    processor config, saved to a directory and loaded the real way by `scaling.fid`."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8,
                              projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def study_key_home(tmp_path_factory):
    """The key that signs studies' stored state (`search.trust`), private to this test session:
    set in the environment, so drivers, Ray nodes and jobs the tests start use the same one."""
    import os

    home = tmp_path_factory.mktemp("config")
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


@pytest.fixture(scope="session")
def run_study():
    """`run_study(folder, spec_text)`: write the TOML (with `output_dir` set to `folder`) as
    `folder/study.toml`, run `dit-scaling run` on it with an embedded Ray, always shut Ray down,
    and return (spec path, exit code, the study's SQLite tracking URI)."""
    import textwrap

    import ray

    from search.cli import main

    def run(folder, text: str):
        spec = folder / "study.toml"
        spec.write_text(f'output_dir = "{folder}"\n' + textwrap.dedent(text))
        try:
            code = main(["run", str(spec)])
        finally:
            ray.shutdown()
        return spec, code, f"sqlite:///{folder / 'mlflow.db'}"

    return run
