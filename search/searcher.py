"""The adaptive allocator as a Ray Tune `Searcher`.

Tune asks `suggest(trial_id)` whenever a trial slot is free and reports every finished trial to
`on_trial_complete`; both go to `search.allocator.Allocator`, whose decisions print as progress
lines. Resuming: Tune saves the searcher with its experiment state (`save` pickles the allocator's
plain-data state and the trial-id map) and `Tuner.restore(path, trainable=...)` calls `restore`,
so a restored study continues the same plan: finished trials stay counted, trials that were running
are re-run by Tune and reported here as they finish.
"""

from __future__ import annotations

from collections.abc import Callable

from ray.tune.search import Searcher

from scaling.model import DiTConfig, ModelShape
from search.allocator import FINISHED, Allocator, Prior, SizeCatalogue
from search.grid import StateSearcher, TrialSpec, trial_config
from search.spec import StudySpec

# Tune checks that every result carries the searcher's metric; intermediate reports carry "loss",
# the study's own metric (e.g. val_loss) only arrives with the final report.
TUNE_METRIC = "loss"


class AllocatorSearcher(StateSearcher):
    """Serves the allocator's proposals to Tune and feeds it every trial's final metric."""

    def __init__(self, spec: StudySpec, template: DiTConfig, prior: Prior,
                 out: Callable[[str], None] | None = None,
                 extra_shapes: list[ModelShape] | tuple = ()):
        super().__init__(metric=TUNE_METRIC, mode="min")
        self.spec, self.template = spec, template
        catalogue = SizeCatalogue(spec, template, extra_shapes)
        self.allocator = Allocator(spec, catalogue, prior, out)
        self.issued: dict[str, str] = {}  # Tune trial id -> trial key

    def suggest(self, trial_id: str) -> dict | str | None:
        point = self.allocator.suggest()
        if point is None:
            return None
        if point == FINISHED:
            return Searcher.FINISHED
        budget, _ = self.allocator.trial_of(point.key)
        shape = self.allocator.catalogue.shapes[point.index]
        self.issued[trial_id] = point.key
        return trial_config(self.spec, self.template, TrialSpec(budget, shape, point.params))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        key = self.issued.get(trial_id)
        if key is None:
            return
        loss = None
        if not error and result and not result.get("diverged"):
            loss = result.get(self.spec.metric)
        self.allocator.complete(key, loss)

    def get_state(self) -> dict:
        return {"allocator": self.allocator.get_state(), "issued": dict(self.issued)}

    def set_state(self, state: dict) -> None:
        self.allocator.set_state(state["allocator"])
        self.issued = dict(state["issued"])

