"""A study's proposer (`search.proposal.Proposer`) as the Ray Tune `Searcher` its Tuner drives.

Tune asks `suggest(trial_id)` whenever a trial slot is free and reports each trial's results and
end; all go to the proposer. Tune saves the searcher with its experiment state (`save` pickles
the proposer's plain-data state) and `Tuner.restore` calls `restore`, so a restored study
continues the same plan: finished trials stay counted, trials that were running are run again by
Tune and reported here as they end.
"""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from search.proposal import FINISHED, Proposer

# Tune checks that every result carries the searcher's metric; intermediate reports carry "loss",
# the study's own metric (e.g. val_loss) only arrives with the final report.
TUNE_METRIC = "loss"


class TuneSearcher(Searcher):
    """Serves `proposer`'s trials to Tune; its whole state is the proposer's."""

    def __init__(self, proposer: Proposer):
        super().__init__(metric=TUNE_METRIC, mode="min")
        self.proposer = proposer

    def suggest(self, trial_id: str) -> dict | str | None:
        config = self.proposer.suggest(trial_id)
        return Searcher.FINISHED if config == FINISHED else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.proposer.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        self.proposer.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return self.proposer.get_state()

    def set_state(self, state: dict) -> None:
        self.proposer.set_state(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
