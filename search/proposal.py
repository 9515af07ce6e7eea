"""What a study's proposers have in common, without Ray: the grid (`search.grid`), the LR sweep
(`search.lr_sweep`), the adaptive allocator and the reuse of finished trials
(`search.study.proposers`) all answer the same five calls, so each can wrap another and one Tune
adapter (`search.study.tune_searcher`) serves whichever a study uses.

A proposal is a trial config (a dict with at least `trial_key`, see `search.grid.trial_config`),
None (nothing to start until a running trial comes back) or FINISHED (the study has nothing left
to run).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

FINISHED = "FINISHED"  # the same string as Ray Tune's `Searcher.FINISHED`


class Proposer(ABC):
    """Proposes a study's trials one at a time and hears how each ended. Its whole state is
    `get_state()` (plain data), so a restored study goes on exactly where it stopped."""

    @abstractmethod
    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial to start under `trial_id`, None to wait, or FINISHED."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:  # noqa: B027  (optional hooks)
        """An intermediate report of a running trial (most proposers ignore it)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None,  # noqa: B027
                          error: bool = False) -> None:
        """A trial ended: its last result, or `error` when it failed."""

    @abstractmethod
    def get_state(self) -> dict:
        """Everything needed to go on: plain data that pickles."""

    @abstractmethod
    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()`."""

