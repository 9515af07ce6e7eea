"""The one adapter between a study's proposer and Ray Tune."""

import pickle

from ray.tune.search import Searcher

from search.proposal import FINISHED, Proposer
from search.study.tune_searcher import TUNE_METRIC, TuneSearcher


class Ledger(Proposer):
    """Proposes `n` trials, waiting after each until it completes; notes what it hears."""

    def __init__(self, n: int):
        self.n, self.served, self.heard = n, 0, []
        self.out: str | None = None

    def suggest(self, trial_id):
        if self.out is not None:
            return None
        if self.served == self.n:
            return FINISHED
        self.served += 1
        self.out = trial_id
        return {"trial_key": f"k{self.served}"}

    def on_trial_result(self, trial_id, result):
        self.heard.append(("result", trial_id, result["loss"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.heard.append(("complete", trial_id, error))
        self.out = None

    def get_state(self):
        return {"served": self.served, "heard": list(self.heard), "out": self.out}

    def set_state(self, state):
        self.served, self.heard, self.out = state["served"], list(state["heard"]), state["out"]


def test_serves_the_proposer_to_tune_and_passes_every_report_on():
    searcher = TuneSearcher(Ledger(2))
    assert (searcher.metric, searcher.mode) == (TUNE_METRIC, "min")
    assert searcher.suggest("a") == {"trial_key": "k1"}
    assert searcher.suggest("b") is None  # waits: Tune tries again later
    searcher.on_trial_result("a", {"loss": 0.5})
    searcher.on_trial_complete("a", {"loss": 0.4})
    assert searcher.suggest("b") == {"trial_key": "k2"}
    searcher.on_trial_complete("b", None, error=True)
    assert searcher.suggest("c") == Searcher.FINISHED
    assert searcher.proposer.heard == [("result", "a", 0.5), ("complete", "a", False),
                                       ("complete", "b", True)]


def test_saves_and_restores_the_proposers_whole_state(tmp_path):
    searcher = TuneSearcher(Ledger(3))
    searcher.suggest("a")
    path = tmp_path / "searcher-state.pkl"
    searcher.save(str(path))
    assert pickle.loads(path.read_bytes()) == {"served": 1, "heard": [], "out": "a"}
    restored = TuneSearcher(Ledger(3))
    restored.restore(str(path))
    assert restored.suggest("b") is None  # "a" is still out
    restored.on_trial_complete("a", {"loss": 1.0})
    assert restored.suggest("b") == {"trial_key": "k2"}
