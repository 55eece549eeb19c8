"""Seed replicates and rankings per scale field, without Ray: the ledger driven with plain
result dicts over a real Optuna study (as tests/service/test_ledger.py), and results.csv built from it."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from gansweep.config.load import load_study
from conftest import plain

from gansweep.service import protocol as p
from gansweep.service.replicates import RunKey as K
from gansweep.service import replicates as rep
from gansweep.service.ledger import Close, FetchSamples, Ledger, LogEpoch
from gansweep.service.progress import SweepProgress
from gansweep.service.results import results_table
from gansweep.service.search import OptunaStudy

STUDY = """\
name: replicates
sampler: {name: random, seed: 0}
pruner: {name: median, startup_trials: 1, warmup_epochs: 0}
trial: {dataset: circle, epochs: 3, seed: 10}
search:
  lr_d: {log_uniform: [1.0e-4, 1.0e-2]}
budget: {trials: 3, replicates: 3}
"""


def make_study(tmp_path: Path, text: str = STUDY) -> OptunaStudy:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return OptunaStudy(load_study(path), f"sqlite:///{tmp_path / 'optuna.db'}")


def result(epoch: int, members: dict[int, dict]) -> dict:
    return {"epoch": float(epoch), "members": {str(n): m for n, m in members.items()}, "training_iteration": epoch}


def good(epoch: int, value: float) -> dict:
    return {"epoch": float(epoch), "d_loss": 1.0 + value / 100, "g_loss": 0.75, "parzen_ll": value}


def finish(ledger: Ledger, trial_id: str, values: dict[int, float], epochs: int = 3) -> list:
    """Every member of the unit through `epochs` epochs at its value; the closes at the end."""
    for epoch in range(1, epochs + 1):
        ledger.judge(trial_id, result(epoch, {m: good(epoch, v) for m, v in values.items()}))
        ledger.record(trial_id, result(epoch, {m: good(epoch, v) for m, v in values.items()}), checkpoint_follows=False)
    ledger.complete(trial_id, result(epochs, {m: good(epochs, v) for m, v in values.items()}))
    return ledger.closes(trial_id)


def test_member_ids_are_the_trial_numbers_with_one_seed_and_spread_with_more() -> None:
    assert [rep.member_id(n, 0, 1) for n in range(4)] == [0, 1, 2, 3]
    assert [rep.member_id(2, r, 3) for r in range(3)] == [6, 7, 8]
    assert [rep.replicate_of(m, 3) for m in (6, 7, 8, 9)] == [(2, 0), (2, 1), (2, 2), (3, 0)]
    assert rep.run_key(7, 1) == K(7) and rep.run_key(7, 3) == K(2, 1)
    assert sorted([K(1), K(0, 1), K(0)]) == [K(0), K(0, 1), K(1)]  # a configuration before its replicates
    assert (str(K(3)), str(K(3, 1))) == ("3", "3 replicate 1")


def test_a_configuration_trains_its_seeds_as_one_pack_and_optuna_sees_their_mean(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path))
    assert ledger.plan(3) == 3  # a unit per configuration
    given = ledger.hand_out("t")
    assert given.numbers == [0, 1, 2] and given.packed
    assert [v["seed"] for v in given.values] == [10, 11, 12]  # seed, seed + 1, ...
    assert len({v["lr_d"] for v in given.values}) == 1  # one configuration
    assert ledger.runs_to_start("t") == [(K(0), given.values[0])] + [(K(0, r), given.values[r]) for r in range(3)]
    values = {0: -1.0, 1: -2.5, 2: -1.75}
    actions = ledger.record("t", result(1, {m: good(1, v) for m, v in values.items()}), checkpoint_follows=False)
    logs = [a for a in actions if isinstance(a, LogEpoch)]
    assert [plain(a.number) for a in logs] == [(0, 0), (0, 1), (0, 2), 0]  # the replicates, then their configuration
    mean = statistics.fmean(values.values())
    assert logs[-1].metrics["parzen_ll"] == pytest.approx(mean)
    stderr = statistics.stdev(values.values()) / math.sqrt(3)
    assert logs[-1].metrics["parzen_ll" + rep.STDERR_SUFFIX] == pytest.approx(stderr)
    closes = finish(ledger, "t", values)
    frozen = ledger.optuna.frozen(0)
    assert frozen.state == TrialState.COMPLETE
    assert frozen.values == [pytest.approx(mean)]
    assert frozen.user_attrs[rep.ATTR_OBJECTIVE_STDERR] == pytest.approx(stderr)
    assert [(plain(c.number), c.state, c.files) for c in closes] == [
        ((0, 0), "COMPLETE", True), ((0, 1), "COMPLETE", True), ((0, 2), "COMPLETE", True), (0, "COMPLETE", False)]
    assert [c.member for c in closes[:3]] == [0, 1, 2]
    assert closes[-1].objective == pytest.approx(mean) and closes[-1].stderr == pytest.approx(stderr)
    assert ledger.closes("t") == []  # closed once


def test_results_keep_a_row_per_replicate_and_the_configuration_is_their_mean(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path))
    ledger.plan(2)
    ledger.hand_out("a")
    finish(ledger, "a", {0: -1.0, 1: -2.0, 2: -4.5})
    ledger.hand_out("b")
    finish(ledger, "b", {3: -0.5, 4: -0.75, 5: -0.25})
    table = results_table(ledger.optuna)
    assert len(table) == 2 * (1 + 3)
    configurations = table[table["replicate"].isna()]
    assert list(configurations["trial"]) == [1, 0]  # best mean first
    for _, row in configurations.iterrows():
        seeds = table[(table["trial"] == row["trial"]) & table["replicate"].notna()]
        assert list(seeds["replicate"]) == [0, 1, 2] and list(seeds["seed"]) == [10, 11, 12]
        assert row["objective"] == pytest.approx(seeds["objective"].mean())
        assert row["objective_stderr"] == pytest.approx(seeds["objective"].std(ddof=1) / math.sqrt(3))
        assert row["replicates_completed"] == 3
    assert list(table["trial"]) == [1, 1, 1, 1, 0, 0, 0, 0]  # each configuration's replicates follow it


def test_results_give_each_replicates_verdict_and_the_configurations_shared_or_counted(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path))
    ledger.plan(2)
    verdicts = {0: "blind", 1: "settled", 2: "blind", 3: "unsettled", 4: "unsettled", 5: "unsettled"}
    for trial_id, members in (("a", (0, 1, 2)), ("b", (3, 4, 5))):
        ledger.hand_out(trial_id)
        for epoch in (1, 2, 3):
            parts = {m: {**good(epoch, -1.0 - m), p.EQUILIBRIUM: verdicts[m]} for m in members}
            ledger.judge(trial_id, result(epoch, parts))
            ledger.record(trial_id, result(epoch, parts), checkpoint_follows=False)
        ledger.complete(trial_id, result(3, parts))
    table = results_table(ledger.optuna)
    rows = {(r.trial, None if pd.isna(r.replicate) else r.replicate): r.equilibrium for r in table.itertuples()}
    assert rows[(0, None)] == "blind x2, settled x1"  # a mean of verdicts would hide the disagreement
    assert [rows[(0, r)] for r in (0, 1, 2)] == ["blind", "settled", "blind"]
    assert rows[(1, None)] == "unsettled"


def test_the_pruner_hears_the_replicates_mean_and_prunes_them_together(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path))
    ledger.plan(2)
    ledger.hand_out("a")
    finish(ledger, "a", {0: -1.0, 1: -1.0, 2: -1.0})
    ledger.hand_out("b")
    first = result(1, {3: good(1, -9.0), 4: good(1, -7.0), 5: good(1, -8.5)})
    verdict = ledger.judge("b", first)
    assert ledger.optuna.frozen(1).intermediate_values == {1: pytest.approx(statistics.fmean([-9.0, -7.0, -8.5]))}
    assert verdict.leaving == (3, 4, 5) and verdict.stop
    closes = [a for a in ledger.record("b", first, checkpoint_follows=False) if isinstance(a, Close)]
    assert [(plain(c.number), c.state, c.pruned_at) for c in closes] == [
        ((1, 0), "PRUNED", 1), ((1, 1), "PRUNED", 1), ((1, 2), "PRUNED", 1), (1, "PRUNED", 1)]
    assert ledger.optuna.frozen(1).state == TrialState.PRUNED


def test_a_diverged_seed_is_recorded_and_left_out_of_the_mean(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path))
    ledger.plan(1)
    ledger.hand_out("t")
    reason = "diverged at epoch 1: d_loss = nan"
    epoch1 = result(1, {0: good(1, -1.0), 1: {"epoch": 1.0, "failure_reason": reason}, 2: good(1, -3.0)})
    ledger.judge("t", epoch1)
    actions = ledger.record("t", epoch1, checkpoint_follows=True)
    assert LogEpoch(K(0), {"d_loss": pytest.approx(0.98), "g_loss": 0.75, "parzen_ll": -2.0,
                        "parzen_ll" + rep.STDERR_SUFFIX: pytest.approx(1.0)}, 1) in actions
    assert ledger.optuna.frozen(0).state == TrialState.RUNNING  # its mates train on
    assert ledger.checkpointed("t", "/ckpt")[:3] == [
        FetchSamples(K(0, 0), 0), FetchSamples(K(0, 1), 1),
        Close(K(0, 1), "FAIL", None, reason, None, True, member=1)]
    for epoch in (2, 3):
        ledger.record("t", result(epoch, {0: good(epoch, -1.0), 2: good(epoch, -3.0)}), checkpoint_follows=False)
    ledger.complete("t", result(3, {0: good(3, -1.0), 2: good(3, -3.0)}))
    frozen = ledger.optuna.frozen(0)
    assert frozen.state == TrialState.COMPLETE and frozen.values == [pytest.approx(-2.0)]
    assert frozen.user_attrs[rep.ATTR_REPLICATES_COMPLETED] == 2
    table = results_table(ledger.optuna)
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]


def test_an_interrupted_configuration_resumes_every_replicate_once_from_its_checkpoint(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path))
    ledger.plan(1)
    first = ledger.hand_out("t")
    reason = "diverged at epoch 1: g_loss = inf"
    epoch1 = result(1, {0: good(1, -1.0), 1: good(1, -2.0), 2: {"epoch": 1.0, "failure_reason": reason}})
    ledger.record("t", epoch1, checkpoint_follows=True)
    ledger.checkpointed("t", "/ckpt/1")
    ledger.complete("t", result(1, {0: good(1, -1.0), 1: good(1, -2.0)}))  # the driver stops after epoch 1
    closes = ledger.closes("t")
    assert [(plain(c.number), c.state) for c in closes] == [((0, 0), "INTERRUPTED"), ((0, 1), "INTERRUPTED"), (0, "INTERRUPTED")]
    assert ledger.optuna.frozen(0).state == TrialState.RUNNING

    again = Ledger(make_study(tmp_path))  # the next `gansweep run`
    assert again.resumable == [[0]] and again.plan(1) == 1
    resumed = again.hand_out("r")
    assert (resumed.numbers, resumed.values, resumed.resume) == ([0, 1, 2], first.values, "/ckpt/1")
    # the worker resumes the two left in the checkpoint; the failed seed keeps its record
    closes = finish(again, "r", {0: -1.0, 1: -2.0})
    frozen = again.optuna.frozen(0)
    assert frozen.state == TrialState.COMPLETE and frozen.values == [pytest.approx(-1.5)]
    assert sorted(rep.records_of(frozen.user_attrs, 3)) == [0, 1, 2]
    assert [(plain(c.number), c.state) for c in closes] == [
        ((0, 0), "COMPLETE"), ((0, 1), "COMPLETE"), ((0, 2), "FAIL"), (0, "COMPLETE")]
    table = results_table(again.optuna)
    assert len(table) == 4 and list(table["replicate"].fillna(-1)) == [-1, 0, 1, 2]  # each replicate once


def test_select_best_tells_optuna_the_best_evaluation_and_its_epoch(tmp_path: Path) -> None:
    study = make_study(tmp_path, STUDY.replace("replicates: 3", "replicates: 1") + "objective: {select: best}\n")
    ledger = Ledger(study)
    ledger.plan(1)
    ledger.hand_out("t")
    assert ledger.selection() == {"metric": "parzen_ll", "direction": "maximize", "metrics": ["parzen_ll"]}
    last = {**good(3, -4.0), p.BEST_EPOCH: 2.0, p.BEST_PREFIX + "parzen_ll": -1.25}  # as the worker reports it
    ledger.record("t", result(3, {0: last}), checkpoint_follows=False)
    ledger.complete("t", result(3, {0: last}))
    assert study.frozen(0).values == [-1.25]
    (close,) = ledger.closes("t")
    assert (close.objective, close.best_epoch) == (-1.25, 2)


SCALES = """\
name: scales
sampler: {name: grid, seed: 0}
trial: {epochs: 1}
search:
  dataset: [circle, ring8]
  lr_d: [0.001, 0.002]
"""


def test_rankings_are_per_data_set_never_on_one_axis(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, SCALES))
    ledger.plan(4)
    objective = {"circle": -2.0, "ring8": -3.0}
    progress = SweepProgress(total=4, done=0, metric="parzen_ll", direction="maximize", groups=("dataset",))
    for index in range(4):
        given = ledger.hand_out(f"t{index}")
        values = given.values[0]
        value = objective[values["dataset"]] + values["lr_d"] * 100  # ring8's best is below circle's worst
        progress.started(given.numbers[0], values)
        ledger.record(f"t{index}", result(1, {given.numbers[0]: good(1, value)}), False)
        ledger.complete(f"t{index}", result(1, {given.numbers[0]: good(1, value)}))
        for close in ledger.closes(f"t{index}"):
            progress.finished(close.number.number, close.state, close.objective)
    table = results_table(ledger.optuna)
    assert list(table["dataset"]) == ["circle", "circle", "ring8", "ring8"]  # as the study lists them
    assert list(table["objective"]) == pytest.approx([-1.8, -1.9, -2.8, -2.9])  # best first within each
    assert progress.bests == {"dataset=circle": (pytest.approx(-1.8), None), "dataset=ring8": (pytest.approx(-2.8), None)}
    assert "dataset=circle: -1.8" in progress._best_text() and "dataset=ring8: -2.8" in progress._best_text()


WILCOXON = STUDY.replace("pruner: {name: median, startup_trials: 1, warmup_epochs: 0}", "pruner: {name: wilcoxon, p_threshold: 0.1}") \
    .replace("epochs: 3", "epochs: 8").replace("replicates: 3", "replicates: 2")


def test_the_wilcoxon_pruner_pairs_the_replicates_means_with_the_best_trials_at_each_epoch(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, WILCOXON))
    ledger.plan(2)
    ledger.hand_out("best")
    best = [-1.0, -0.9, -1.1, -0.8, -1.0, -0.95, -0.85, -0.9]
    for epoch, value in enumerate(best, start=1):
        ledger.judge("best", result(epoch, {0: good(epoch, value - 0.1), 1: good(epoch, value + 0.1)}))
    ledger.complete("best", result(8, {0: good(8, best[-1] - 0.1), 1: good(8, best[-1] + 0.1)}))
    reported = {e: pytest.approx(v) for e, v in enumerate(best[:-1], start=1)}  # the last epoch is the objective
    assert ledger.optuna.frozen(0).intermediate_values == reported
    ledger.hand_out("worse")
    stops = []
    for epoch in range(1, 9):  # every epoch's mean below the best trial's at that epoch
        verdict = ledger.judge("worse", result(epoch, {2: good(epoch, best[epoch - 1] - 0.3), 3: good(epoch, best[epoch - 1] - 0.5)}))
        stops.append(verdict.stop)
        if verdict.stop:
            break
    # one-sided signed-rank p-value of n pairs all worse: 2^-n; below 0.1 from n = 4
    assert stops == [False, False, False, True]
    assert ledger.optuna.frozen(1).user_attrs[p.ATTR_PRUNED_AT] == 4
