"""Tune's scheduler over the ledger: after each result the ledger asks Optuna's pruner about
every member still training; a pruned member leaves its unit (posted on the PruneBoard the
unit reads), and a unit with no member left stops."""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from gansweep import extend
from gansweep.config import names  # noqa: F401 (the built-ins' declarations, before their code)
from gansweep.service.ledger import Ledger


class LedgerPruner(FIFOScheduler):
    def __init__(self, ledger: Ledger, board: Any = None) -> None:
        super().__init__()
        self.ledger = ledger
        self.board = board  # the PruneBoard actor, or None when units have one member

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "board": None}  # Tune may pickle it; the actor stays here

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        verdict = self.ledger.judge(trial.trial_id, result)
        if self.board is not None and not verdict.stop:
            for number in verdict.leaving:
                self.board.prune.remote(number)
        return TrialScheduler.STOP if verdict.stop else TrialScheduler.CONTINUE


extend.SCHEDULERS.add("none", LedgerPruner, extend.BUILT_IN)  # (ledger, board) -> Tune's scheduler
