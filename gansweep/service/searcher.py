"""Tune's searcher over the ledger: Tune asks it for the next unit's config; the ledger
answers (a unit an interrupted sweep left unfinished, or new members asked of Optuna) and
tells Optuna how each unit ended."""

from __future__ import annotations

from ray.tune.search import Searcher

from gansweep.service import protocol as p
from gansweep.service.ledger import Ledger


class LedgerSearcher(Searcher):
    def __init__(self, ledger: Ledger, threads: int, board: str | None = None,
                 plugins: list[dict[str, str]] | None = None) -> None:
        super().__init__()
        self.ledger = ledger
        self.threads = threads
        self.board = board  # the PruneBoard's name, when units may lose members
        self.plugins = plugins or []  # the study's plugin files, sent with every unit

    def suggest(self, trial_id: str) -> p.UnitConfig | None:  # type: ignore[override]
        given = self.ledger.hand_out(trial_id)
        if given is None:
            return None
        return p.unit_config(given.numbers, given.values, resume=given.resume, threads=self.threads,
                             packed=given.packed, board=self.board, select=self.ledger.selection(),
                             plugins=self.plugins)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not error:  # errors are recorded by the callback's on_trial_error
            self.ledger.complete(trial_id, result)

    def save(self, checkpoint_path: str) -> None:
        pass  # the Optuna storage holds everything; resumes read it, not this file

    def restore(self, checkpoint_path: str) -> None:
        pass
