"""`resume` and `refine` trust a study's stored state only as it was signed at creation: a tag
rewritten in MLflow (the Tune experiment pointing elsewhere, a spec logging to another server) is
refused in one line before anything of it is loaded."""

import json
import os
import pickle
import shutil

import pytest
import ray

from search.cli import main
from search.driver import EXPERIMENT_TAG, SPEC_TAG
from search.tracking import Tracking
from search.trust import (
    SIGNATURE_TAG,
    UntrustedStateError,
    inside,
    key_path,
    same_store,
    signature,
)


class Payload:
    """A pickle that runs code when loaded: it creates `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_inside_is_strict_and_refuses_parent_steps(tmp_path):
    assert inside(str(tmp_path / "ray" / "s-1"), str(tmp_path / "ray"))
    assert not inside(str(tmp_path / "ray"), str(tmp_path / "ray"))
    assert not inside(str(tmp_path / "ray" / ".." / "evil"), str(tmp_path / "ray"))
    assert not inside(str(tmp_path / "raynot" / "x"), str(tmp_path / "ray"))
    assert inside("s3://bucket/studies/s-1", "s3://bucket/studies")
    assert not inside("s3://other/studies/s-1", "s3://bucket/studies")
    assert not inside("/bucket/studies/s-1", "s3://bucket/studies")


def test_same_store_resolves_sqlite_paths(tmp_path):
    assert same_store(f"sqlite:///{tmp_path}/a/../m.db", f"sqlite:///{tmp_path}/m.db")
    assert same_store("http://h:5000/", "http://h:5000")
    assert not same_store("http://h:5000", "http://evil:5000")


def test_the_key_is_private_and_signatures_bind_every_field():
    a = signature("run1", '{"name": "s"}', "/x/s-1")
    assert oct(key_path().stat().st_mode & 0o777) == "0o600"
    assert a == signature("run1", '{"name": "s"}', "/x/s-1")
    assert len({a, signature("run2", '{"name": "s"}', "/x/s-1"),
                signature("run1", '{"name": "t"}', "/x/s-1"),
                signature("run1", '{"name": "s"}', "/x/s-2")}) == 4
    key_path().chmod(0o644)
    try:
        with pytest.raises(UntrustedStateError, match="chmod 600"):
            signature("run1", "{}", "/x")
    finally:
        key_path().chmod(0o600)


@pytest.fixture(scope="module")
def study(tmp_path_factory, run_study):
    out = tmp_path_factory.mktemp("trust")
    _, code, uri = run_study(out, """
        name = "trusted"
        budgets = [1e17, 3e17]
        [model]
        sizes_per_budget = 5
        tokens_per_param = 1000.0
        [trainer]
        kind = "simulated"
        batch_size = 256
        reports = 3
        [resources]
        max_concurrent_trials = 1
    """)
    assert code == 0
    tracking = Tracking(uri)
    run = tracking.latest_study_run("trusted")
    return out, uri, tracking, run.info.run_id, dict(run.data.tags)


def resume_refused(capsys, uri: str, *verb: str) -> str:
    capsys.readouterr()
    assert main([*verb, "--study", "trusted", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("verb", ["resume", "refine"])
def test_a_tune_experiment_moved_elsewhere_is_refused_unloaded(study, tmp_path, capsys, verb):
    out, uri, tracking, run_id, tags = study
    evil = tmp_path / "evil" / "trusted-x"
    shutil.copytree(tags[EXPERIMENT_TAG], evil)
    marker = tmp_path / "pwned"
    for state in [*evil.glob("*.pkl"), *evil.glob("searcher-state-*")]:
        state.write_bytes(pickle.dumps(Payload(str(marker))))
    tracking.set_tags(run_id, {EXPERIMENT_TAG: str(evil)})
    try:
        err = resume_refused(capsys, uri, verb)
    finally:
        tracking.set_tags(run_id, {EXPERIMENT_TAG: tags[EXPERIMENT_TAG]})
    assert "changed since the study was created" in err and "nothing loaded" in err
    assert not marker.exists()


def test_a_re_signed_experiment_outside_the_storage_is_still_refused(study, tmp_path, capsys):
    """Even with the owner's key (say a stale signature recomputed), state must live in the
    study's own storage."""
    out, uri, tracking, run_id, tags = study
    evil = str(tmp_path / "elsewhere" / "trusted-x")
    tracking.set_tags(run_id, {EXPERIMENT_TAG: evil,
                               SIGNATURE_TAG: signature(run_id, tags[SPEC_TAG], evil)})
    try:
        err = resume_refused(capsys, uri, "resume")
    finally:
        tracking.set_tags(run_id, {EXPERIMENT_TAG: tags[EXPERIMENT_TAG],
                                   SIGNATURE_TAG: tags[SIGNATURE_TAG]})
    assert "is not inside the study's storage" in err


def test_a_spec_sending_the_study_to_another_server_is_refused(study, capsys):
    out, uri, tracking, run_id, tags = study
    spec = json.loads(tags[SPEC_TAG])
    spec["tracking"]["uri"] = "https://attacker.example.com"
    tracking.set_tags(run_id, {SPEC_TAG: json.dumps(spec)})
    try:
        err = resume_refused(capsys, uri, "resume")
    finally:
        tracking.set_tags(run_id, {SPEC_TAG: tags[SPEC_TAG]})
    assert "changed since the study was created" in err
    assert "attacker" not in err


def test_a_study_signed_with_another_key_is_refused(study, capsys, monkeypatch, tmp_path):
    out, uri, tracking, run_id, tags = study
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-user"))
    err = resume_refused(capsys, uri, "resume")
    assert "created with another key" in err
    assert os.environ["XDG_CONFIG_HOME"].endswith("other-user")


def test_the_untouched_study_resumes(study, capsys):
    out, uri, tracking, run_id, tags = study
    try:
        assert main(["resume", "--study", "trusted", "--tracking-uri", uri]) == 0
    finally:
        ray.shutdown()
    assert "resuming study run" in capsys.readouterr().out
