"""The study driver: `run`, `resume` and `refine`, each one pass through the one flow of
`search.study` (session -> proposer -> backend -> execute -> finish).

It runs wherever the command runs: on this machine with an embedded `ray.init()` and a SQLite
MLflow store, or on a cluster's head node when submitted as a Ray job.
"""

from __future__ import annotations

import json
import math
import pickletools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ray import tune

from scaling.model import ModelShape
from search.allocator import Prior, resolve_prior
from search.lr_sweep import sweep_configs
from search.results import load_laws
from search.spec import SpecError, StudySpec
from search.study.backend import RAY_ENV, ClusterError, connect_ray, trial_concurrency
from search.study.execute import StudyStopped, execute
from search.study.finish import DECISIONS_FILE, StudyOutcome, finish
from search.study.proposers import grid_trials, inner_proposer, study_proposer
from search.study.session import (
    EXPERIMENT_TAG,
    SPEC_TAG,
    StudySession,
    experiment_path,
    load_remote_dataset,
    model_template,
    open_session,
    prepare_data,
    prepare_session,
    record_state,
    set_planned,
    start_run,
)
from search.tracking import KIND, Tracking

__all__ = ["DECISIONS_FILE", "EXPERIMENT_TAG", "RAY_ENV", "SPEC_TAG", "ClusterError",
           "StudyOutcome", "StudyStopped", "connect_ray", "load_remote_dataset",
           "model_template", "prepare_data", "refine_study", "resume_study", "run_study",
           "trial_concurrency"]


def study_prior(session: StudySession) -> Prior:
    return resolve_prior(session.spec,
                         study_law=lambda name: load_laws(session.tracking, name)[0].n_opt)


def run_study(spec: StudySpec, out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Run every trial of the study on Ray, track it in MLflow and fit the laws.

    The store, the data, the model family and the proposer's grid are checked before the study
    run is created, so a bad setting fails in seconds with one line and writes nothing."""
    out = out or _print
    t0 = time.monotonic()
    session = prepare_session(spec, out)
    spec = session.spec
    prior = study_prior(session)
    inner, planned = inner_proposer(spec, session.template, prior, out)
    if spec.trainer.lr_sweep is not None:
        sweep_configs(spec, session.template, grid_trials(spec, session.template, prior))
    start_run(session)
    proposer, total = study_proposer(session, prior, inner, planned)
    set_planned(session, total)
    trials = f"{total} trials" if total is not None else "adaptive trials"
    trainer = (f"simulated trainer (surface {spec.trainer.surface})" if spec.simulated
               else "real training")
    out(f"study {spec.name}: {trials} over {len(spec.budgets)} budgets (C = {spec.convention}, "
        f"a multiply-add = 2 FLOPs), allocator {spec.allocator.kind}, {trainer}")
    out(f"MLflow: {spec.tracking_uri}  experiment {spec.name!r}  study run "
        f"{session.study_run_id}")
    return finish(session, execute(session, proposer, total), t0)


def _pickle_complete(data: bytes) -> None:
    """Raise unless `data` is one whole pickle stream; its opcodes are parsed, never run."""
    ops = list(pickletools.genops(data))
    if not ops or ops[-1][0].name != "STOP":
        raise ValueError("no STOP opcode")


def unreadable_state(path: str) -> str | None:
    """Why Tune could not restore the experiment at `path` (None if it can): missing, or state
    files cut short, e.g. by a disk that filled up while Tune was saving them. Nothing is
    unpickled here: the trust check (`search.trust`) comes first, and Tune's restore is the
    only reader of its pickles."""
    from pyarrow import fs as pafs

    if not tune.Tuner.can_restore(path):
        return "no Tune experiment state there"
    filesystem, root = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path)))
    infos = filesystem.get_file_info(pafs.FileSelector(root))
    # experiment_state is JSON; the searcher's saved states are pickles, whatever their suffix
    for prefix, check in (("experiment_state-", json.loads), ("searcher-state-", _pickle_complete),
                          ("search_gen_state-", _pickle_complete)):
        files = sorted(i.path for i in infos if i.base_name.startswith(prefix))
        if not files:
            continue
        try:
            with filesystem.open_input_stream(files[-1]) as f:
                check(f.read())
        except Exception as err:
            return f"{files[-1].rsplit('/', 1)[-1]} is unreadable ({type(err).__name__})"
    return None


def resume_study(study_name: str, tracking_uri: str,
                 out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Continue a study whose driver died or stopped, from the same storage.

    With Tune's saved state readable, `Tuner.restore` continues it (searcher included):
    unfinished and errored trials resume from their last checkpoints. Without it, the proposer
    is built again from the spec and the study continues from MLflow and the trials'
    checkpoints (each trial's Train run is named by study run and trial). Either way a trial
    MLflow holds as finished is never dispatched again, and the same study run carries on.
    """
    out = out or _print
    t0 = time.monotonic()
    session, run = open_session(study_name, tracking_uri, out)
    spec = session.spec
    session.tracking.reopen(session.study_run_id)
    problem = unreadable_state(session.experiment)
    if problem is None:
        out(f"study {spec.name}: resuming study run {session.study_run_id} from "
            f"{session.experiment}")
        return finish(session, execute(session, None, session.planned), t0)
    prior = study_prior(session)
    inner, planned = inner_proposer(spec, session.template, prior, out)
    proposer, total = study_proposer(session, prior, inner, planned)
    old = session.experiment
    session.experiment = (f"{experiment_path(spec, session.study_run_id)}"
                          f"-r{time.strftime('%Y%m%d%H%M%S')}")
    record_state(session.tracking, session.study_run_id, run.data.tags[SPEC_TAG],
                 session.experiment)
    out(f"study {spec.name}: Tune's state at {old} cannot be restored ({problem}); resuming "
        f"study run {session.study_run_id} from MLflow and the trials' checkpoints in "
        f"{session.experiment}")
    return finish(session, execute(session, proposer, total), t0)


def refine_study(study: str, tracking_uri: str, budgets: list[float] | None = None,
                 tolerance: float | None = None,
                 out: Callable[[str], None] | None = None) -> StudyOutcome:
    """Add trials to a finished study (of any kind) to tighten chosen optima, reusing every
    finished trial: the adaptive allocator starts from them, new trials nest under the same study
    run, and the laws are refitted and logged again."""
    out = out or _print
    t0 = time.monotonic()
    session, run = open_session(study, tracking_uri, out)
    spec = session.spec
    chosen = [float(c) for c in budgets or []]
    for c in chosen:
        if not any(math.isclose(c, b, rel_tol=1e-6) for b in spec.budgets):
            raise SpecError(f"--budget {c:g}: not a budget of study {study!r} (budgets "
                            f"{', '.join(f'{b:g}' for b in spec.budgets)})")
    chosen = [next(b for b in spec.budgets if math.isclose(c, b, rel_tol=1e-6)) for c in chosen]
    update = {"kind": "adaptive", **({"tolerance": tolerance} if tolerance else {})}
    session.spec = spec = _with_study_rule(spec.model_copy(update={
        "allocator": spec.allocator.model_copy(update=update)}), run.data.params)
    tracking, run_id = session.tracking, session.study_run_id
    records = [r for r in tracking.trial_records(run_id, run.info.experiment_id)
               if r.params.get("phase") != "lr_sweep"]
    shapes = [ModelShape(int(r.params["depth"]), int(r.params["width"]), int(r.params["heads"]))
              for r in records]
    prior = study_prior(session)
    inner, _ = inner_proposer(spec, session.template, prior, out, extra_shapes=shapes)
    catalogue = inner.allocator.catalogue

    def budget_of(r) -> float:  # MLflow keeps 6 significant digits of the spec's budget
        return min(spec.budgets, key=lambda b: abs(math.log(b / float(r.params["budget"]))))

    inner.allocator.seed([(budget_of(r), catalogue.shapes.index(shape),
                           r.metrics.get(spec.metric) if r.status == "finished" else None)
                          for r, shape in zip(records, shapes, strict=True)])
    out(f"study {spec.name}: refining study run {run_id} from {len(records)} trials "
        f"({sum(r.status == 'finished' for r in records)} finished), tolerance "
        f"±{inner.allocator.a.tolerance:.0%}")
    inner.allocator.reopen(chosen, tolerance)
    previous = _previous_decisions(tracking, run_id)
    n = len(tracking.client.search_runs([run.info.experiment_id],
                                        f"tags.`{KIND}` = 'study'")) + len(previous)
    name = f"{spec.name}-{run_id[:8]}-refine-{n}-{int(time.time())}"
    proposer, _ = study_proposer(session, prior, inner, None)
    experiment = f"{spec.storage_path.rstrip('/')}/{name}"
    return finish(session, execute(session, proposer, None, experiment), t0, previous)


def _with_study_rule(spec: StudySpec, params: dict[str, str]) -> StudySpec:
    """The spec whose LR rule is the one the study trained with (its LR sweep's fit, logged as
    `lr_rule.*` params) and without the sweep, which refinement does not run again."""
    if spec.trainer.lr_sweep is None:
        return spec
    t = spec.trainer
    rule = t.lr_rule.model_copy(update={
        "ref_width": int(params.get("lr_rule.ref_width", t.lr_rule.ref_width)),
        "lr_exponent": float(params.get("lr_rule.lr_exponent", t.lr_rule.lr_exponent)),
        "warmup_exponent": float(params.get("lr_rule.warmup_exponent",
                                            t.lr_rule.warmup_exponent))})
    trainer = t.model_copy(update={
        "lr": float(params.get("lr_rule.base_lr", t.lr)),
        "warmup_steps": int(params.get("lr_rule.warmup_steps", t.warmup_steps)),
        "lr_rule": rule, "lr_sweep": None})
    return spec.model_copy(update={"trainer": trainer})


def _previous_decisions(tracking: Tracking, run_id: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(tracking.download_text(run_id, DECISIONS_FILE, Path(tmp)))
        except Exception:
            return []


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
