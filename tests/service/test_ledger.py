"""The driver's decisions without Ray: the ledger driven with plain result dicts, as Tune hands
them, over a real Optuna study in SQLite (as Ray Tune tests its schedulers' _Bracket)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from gansweep.config.load import load_study
from gansweep.service.search import OptunaStudy
from conftest import plain

from gansweep.service import protocol as p
from gansweep.service.replicates import RunKey as K
from gansweep.service.ledger import Close, FetchSamples, Ledger, LogEpoch, TagNodes

STUDY = """\
name: ledger
sampler: {name: random, seed: 0}
pruner: {name: median, startup_trials: 1, warmup_epochs: 0}
trial: {dataset: circle, epochs: 3}
search:
  lr_d: {log_uniform: [1.0e-4, 1.0e-2]}
budget: {trials: 5, pack_size: PACK}
"""


def make_study(tmp_path: Path, pack_size: int) -> OptunaStudy:
    path = tmp_path / "ledger.yaml"
    path.write_text(STUDY.replace("PACK", str(pack_size)))
    return OptunaStudy(load_study(path), f"sqlite:///{tmp_path / 'optuna.db'}")


def result(epoch: int, members: dict[int, dict], **top: object) -> dict:
    """A unit's result as Tune hands it to callbacks (nested)."""
    return {"epoch": float(epoch), "members": {str(n): m for n, m in members.items()}, "training_iteration": epoch, **top}


def flattened(epoch: int, members: dict[int, dict]) -> dict:
    """The same as Tune hands it to schedulers and searchers."""
    flat: dict = {"epoch": float(epoch), "training_iteration": epoch}
    for number, metrics in members.items():
        flat.update({f"members/{number}/{k}": v for k, v in metrics.items()})
    return flat


def good(epoch: int, value: float) -> dict:
    return {"epoch": float(epoch), "d_loss": 1.25, "g_loss": 0.75, "parzen_ll": value, "pack_size": 2.0}


def state(study: OptunaStudy, number: int) -> TrialState:
    return study.frozen(number).state


def test_units_of_pack_size_the_last_takes_what_is_left(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 2))
    assert ledger.plan(5) == 3
    given = [ledger.hand_out(f"t{i}") for i in range(4)]
    assert [g.numbers for g in given[:3]] == [[0, 1], [2, 3], [4]]
    assert given[3] is None
    assert all(g.packed and g.resume is None for g in given[:3])  # a pack of one runs packed too
    assert ledger.members("t2") == {4: given[2].values[0]}
    assert ledger.optuna.frozen(3).user_attrs[p.ATTR_UNIT] == [2, 3]


def test_a_lone_trial_is_a_unit_of_one_run_eagerly(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 1))
    assert ledger.plan(2) == 2
    first = ledger.hand_out("a")
    assert first.numbers == [0] and not first.packed
    config = p.unit_config(first.numbers, first.values, resume=None, threads=1, packed=first.packed, board=None)
    assert p.read_unit_config(dict(config)) == config


def test_a_unit_that_reaches_its_last_epoch_completes_with_its_objective(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(2)
    ledger.hand_out("t")
    last = result(3, {0: good(3, -1.5), 1: good(3, -2.5)})
    actions = ledger.record("t", last, checkpoint_follows=True)
    assert actions == [LogEpoch(K(0), {"d_loss": 1.25, "g_loss": 0.75, "parzen_ll": -1.5, "pack_size": 2.0}, 3),
                       LogEpoch(K(1), {"d_loss": 1.25, "g_loss": 0.75, "parzen_ll": -2.5, "pack_size": 2.0}, 3)]
    ledger.complete("t", flattened(3, {0: good(3, -1.5), 1: good(3, -2.5)}))
    assert [state(ledger.optuna, n) for n in (0, 1)] == [TrialState.COMPLETE] * 2
    assert ledger.optuna.frozen(1).values == [-2.5]
    assert ledger.optuna.frozen(0).user_attrs[p.ATTR_EPOCH] == 3
    closes = ledger.closes("t")
    assert [(plain(c.number), c.state, c.objective, c.checkpoint) for c in closes] == [(0, "COMPLETE", -1.5, False),
                                                                              (1, "COMPLETE", -2.5, False)]
    assert ledger.closes("t") == []  # closed once


def test_an_interrupted_unit_stays_running_and_resumes_together_from_its_checkpoint(tmp_path: Path) -> None:
    study = make_study(tmp_path, 2)
    ledger = Ledger(study)
    ledger.plan(4)
    first, second = ledger.hand_out("t0"), ledger.hand_out("t1")
    ledger.record("t0", result(1, {0: good(1, -1.0), 1: good(1, -1.0)}), checkpoint_follows=True)
    assert ledger.checkpointed("t0", "/ckpt/0") == [FetchSamples(K(0)), FetchSamples(K(1))]
    ledger.complete("t0", flattened(1, {0: good(1, -1.0), 1: good(1, -1.0)}))  # Ctrl-C after epoch 1
    ledger.complete("t1", None)  # never reported
    assert [state(study, n) for n in range(4)] == [TrialState.RUNNING] * 4
    assert [(plain(c.number), c.state) for c in ledger.closes("t0")] == [(0, "INTERRUPTED"), (1, "INTERRUPTED")]

    again = Ledger(make_study(tmp_path, 2))  # the next `gansweep run`
    assert again.resumable == [[0, 1], [2, 3]]
    assert again.plan(4) == 2
    resumed = again.hand_out("r0")
    assert (resumed.numbers, resumed.values, resumed.resume) == ([0, 1], first.values, "/ckpt/0")
    fresh_start = again.hand_out("r1")
    assert (fresh_start.numbers, fresh_start.values, fresh_start.resume) == ([2, 3], second.values, None)
    assert again.hand_out("r2") is None


GRID_STUDY = """\
name: grid
sampler: {name: grid, seed: 1}
trial: {dataset: circle, epochs: 3}
search:
  alpha: [0.3, 0.4, 0.5, 0.6, 0.7]
"""


def test_a_trial_killed_between_ask_and_its_suggestions_resumes_with_its_grid_point(tmp_path: Path) -> None:
    """Optuna's ask commits a RUNNING trial (and the grid point it is given) before the
    suggestions record its params; a driver killed in between left a trial without alpha,
    which resumed with the default 0.5: one grid point twice, another never (seen in CI)."""
    (tmp_path / "grid.yaml").write_text(GRID_STUDY)
    study = OptunaStudy(load_study(tmp_path / "grid.yaml"), f"sqlite:///{tmp_path / 'optuna.db'}")
    study.ask()  # trial 0: asked and suggested, then the driver dies...
    study.study.ask()  # ...while trial 1 has been asked but not yet suggested
    assert study.frozen(1).params == {}
    ledger = Ledger(OptunaStudy(load_study(tmp_path / "grid.yaml"), f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert ledger.resumable == [[0], [1]]
    assert ledger.plan(5) == 5
    handed = [ledger.hand_out(f"t{i}") for i in range(5)]
    assert sorted(v["alpha"] for h in handed for v in h.values) == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert ledger.optuna.frozen(1).params == {"alpha": handed[1].values[0]["alpha"]}  # recorded now


def test_a_study_from_before_the_one_protocol_resumes_its_packs_and_lone_trials(tmp_path: Path) -> None:
    """Optuna attrs of the old protocol: a pack member's "pack" attr, a lone trial none."""
    study = make_study(tmp_path, 2)
    for _ in range(3):
        study.ask()
    study.set_attrs(0, {"pack": [0, 1], "checkpoint": "/old/pack"})
    study.set_attrs(1, {"pack": [0, 1], "checkpoint": "/old/pack"})
    study.set_attrs(2, {"checkpoint": "/old/lone"})  # ran alone before (pack_size 1)
    ledger = Ledger(study)
    assert ledger.resumable == [[0, 1], [2]]
    assert ledger.plan(3) == 2
    pack, lone = ledger.hand_out("a"), ledger.hand_out("b")
    assert (pack.numbers, pack.resume, pack.packed) == ([0, 1], "/old/pack", True)
    assert (lone.numbers, lone.resume) == ([2], "/old/lone")


def test_a_pruned_member_leaves_its_unit_and_is_settled_with_the_next_checkpoint(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(4)
    ledger.hand_out("t0")
    for epoch in (1, 2, 3):  # a finished unit for the median to compare against
        ledger.judge("t0", flattened(epoch, {0: good(epoch, -1.0), 1: good(epoch, -1.0)}))
    ledger.complete("t0", flattened(3, {0: good(3, -1.0), 1: good(3, -1.0)}))
    ledger.closes("t0")
    ledger.hand_out("t1")  # members 2 and 3
    verdict = ledger.judge("t1", flattened(1, {2: good(1, -9.0), 3: good(1, 5.0)}))
    assert verdict.leaving == (2,) and not verdict.stop  # 3 trains on alone
    assert ledger.optuna.frozen(2).user_attrs[p.ATTR_PRUNED_AT] == 1
    actions = ledger.record("t1", result(1, {2: good(1, -9.0), 3: good(1, 5.0)}), checkpoint_follows=True)
    assert [type(a) for a in actions] == [LogEpoch, LogEpoch]  # the pruned epoch is logged
    assert state(ledger.optuna, 2) == TrialState.PRUNED
    actions = ledger.checkpointed("t1", "/ckpt/1")
    assert actions == [FetchSamples(K(2)), Close(K(2), "PRUNED", 1, None, None, True), FetchSamples(K(3))]
    assert ledger.optuna.frozen(3).user_attrs[p.ATTR_CHECKPOINT] == "/ckpt/1"
    assert p.ATTR_CHECKPOINT not in ledger.optuna.frozen(2).user_attrs  # not resumed: finished
    # later results no longer carry it; nothing is logged or judged for it again
    assert ledger.judge("t1", flattened(2, {3: good(2, 5.0)})).stop is False
    assert ledger.record("t1", result(2, {2: good(2, 0.0), 3: good(2, 5.0)}), False) == [
        LogEpoch(K(3), {"d_loss": 1.25, "g_loss": 0.75, "parzen_ll": 5.0, "pack_size": 2.0}, 2)]
    ledger.complete("t1", flattened(3, {3: good(3, 5.0)}))
    assert state(ledger.optuna, 3) == TrialState.COMPLETE
    assert [plain(c.number) for c in ledger.closes("t1")] == [3]


def test_a_lone_pruned_trial_stops_its_unit(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 1))
    ledger.plan(2)
    ledger.hand_out("a")
    for epoch in (1, 2, 3):
        assert ledger.judge("a", flattened(epoch, {0: good(epoch, -1.0)})).stop is False
    ledger.complete("a", flattened(3, {0: good(3, -1.0)}))
    ledger.hand_out("b")
    verdict = ledger.judge("b", flattened(1, {1: good(1, -7.0)}))
    assert verdict.leaving == (1,) and verdict.stop
    actions = ledger.record("b", result(1, {1: good(1, -7.0)}), checkpoint_follows=False)
    assert actions[-1] == Close(K(1), "PRUNED", 1, None, None, False)
    ledger.complete("b", flattened(1, {1: good(1, -7.0)}))  # Tune's completion changes nothing
    assert state(ledger.optuna, 1) == TrialState.PRUNED and ledger.closes("b") == []


def test_a_failed_member_is_settled_at_once_and_its_mates_train_on(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(2)
    ledger.hand_out("t")
    reason = "diverged at epoch 1: d_loss = nan"
    flat = flattened(1, {0: {"epoch": 1.0, "failure_reason": reason}, 1: good(1, -1.0)})
    assert ledger.judge("t", flat).stop is False
    actions = ledger.record("t", result(1, {0: {"epoch": 1.0, "failure_reason": reason}, 1: good(1, -1.0)}),
                            checkpoint_follows=True)
    assert [type(a) for a in actions] == [LogEpoch]  # no metrics for the failed member
    assert state(ledger.optuna, 0) == TrialState.FAIL
    assert ledger.optuna.frozen(0).user_attrs[p.ATTR_FAILURE_REASON] == reason
    assert ledger.checkpointed("t", "/c") == [FetchSamples(K(0)), Close(K(0), "FAIL", None, reason, None, True), FetchSamples(K(1))]


def test_a_whole_unit_failure_fails_every_member_and_stops(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(2)
    ledger.hand_out("t")
    failed = p.failed_unit([0, 1], 0, "out of memory on cpu at epoch 0: boom")
    assert ledger.judge("t", failed).stop
    closes = [a for a in ledger.record("t", failed, checkpoint_follows=False) if isinstance(a, Close)]
    assert [(plain(c.number), c.state, c.reason) for c in closes] == [(0, "FAIL", "out of memory on cpu at epoch 0: boom")] + [
        (1, "FAIL", "out of memory on cpu at epoch 0: boom")]


def test_a_complete_member_without_its_objective_fails_with_a_reason(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 1))
    ledger.plan(1)
    ledger.hand_out("t")
    ledger.complete("t", flattened(3, {0: {"epoch": 3.0, "d_loss": 1.0}}))
    frozen = ledger.optuna.frozen(0)
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs[p.ATTR_FAILURE_REASON] == "objective metric missing from final result"


def test_a_worker_error_fails_the_members_not_yet_ended(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(2)
    ledger.hand_out("t")
    closes = ledger.errored("t", "worker error after 2 attempt(s): err.txt")
    assert [(plain(c.number), c.state) for c in closes] == [(0, "FAIL"), (1, "FAIL")]
    assert ledger.errored("t", "again") == []


def test_a_worker_stopped_by_the_store_being_away_leaves_its_members_to_resume(tmp_path: Path) -> None:
    from gansweep.service.storage import is_storage_outage

    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(2)
    ledger.hand_out("t")
    ledger.record("t", result(1, {0: good(1, -1.0), 1: good(1, -1.0)}), checkpoint_follows=True)
    ledger.checkpointed("t", "s3://b/ckpt/1")
    closes = ledger.errored("t", "the checkpoint store did not answer", interrupted=True)
    assert [(plain(c.number), c.state, c.reason) for c in closes] == [(0, "INTERRUPTED", "the checkpoint store did not answer"),
                                                               (1, "INTERRUPTED", "the checkpoint store did not answer")]
    assert [state(ledger.optuna, n) for n in (0, 1)] == [TrialState.RUNNING] * 2
    assert ledger.optuna.frozen(0).user_attrs[p.ATTR_INTERRUPTED_BY] == "the checkpoint store did not answer"
    again = Ledger(make_study(tmp_path, 2))
    again.plan(2)
    assert again.hand_out("r").resume == "s3://b/ckpt/1"  # the next run resumes them together
    away = ("OSError: When getting information for key 'tune/x/checkpoint_000001' in bucket 'b': AWS Error "
            "NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to server")
    assert is_storage_outage(away)
    assert not is_storage_outage("OSError: When reading 'x' in bucket 'b': AWS Error ACCESS_DENIED during GetObject")
    assert not is_storage_outage("RuntimeError: Could not connect to server")  # not the store's client


def test_each_attempt_is_recorded_with_its_node(tmp_path: Path) -> None:
    ledger = Ledger(make_study(tmp_path, 1))
    ledger.plan(1)
    ledger.hand_out("t")
    first = ledger.record("t", result(1, {0: good(1, -1.0)}, node_id="na", resumed_from=0), False)
    assert first[0] == TagNodes(K(0), "na")
    again = ledger.record("t", result(3, {0: good(3, -1.0)}, node_id="nb", resumed_from=2), False)
    assert again[0] == TagNodes(K(0), "na,nb")
    assert ledger.optuna.frozen(0).user_attrs[p.ATTR_ATTEMPTS] == [
        {"node": "na", "resumed_from": 0, "first_epoch": 1}, {"node": "nb", "resumed_from": 2, "first_epoch": 3}]
    assert "node_id" not in again[1].metrics  # attempt keys are not metrics


def test_a_resumed_unit_logs_its_checkpointed_epochs_again_in_epoch_order(tmp_path: Path) -> None:
    """The driver that recorded the checkpoint may have died with those epochs still queued
    for MLflow: the resume replays each member's history (the tracker skips what a run has)."""
    ledger = Ledger(make_study(tmp_path, 2))
    ledger.plan(2)
    ledger.hand_out("t0")
    ledger.record("t0", result(2, {0: good(2, -1.0), 1: good(2, -2.0)}), checkpoint_follows=True)
    ledger.checkpointed("t0", "/ckpt/2")
    again = Ledger(make_study(tmp_path, 2))  # the next `gansweep run`
    again.plan(2)
    assert again.hand_out("r0").resume == "/ckpt/2" and again.resumes == {"r0": "/ckpt/2"}
    histories = {1: [good(1, -1.5), good(2, -2.0)], 0: [good(1, -0.5), {**good(2, -1.0), p.FEATURES: "domain:ring8:ab12cd34"}],
                 7: [good(1, 0.0)]}  # 7 is no member of this unit: ignored
    logs = again.replay("r0", histories)
    assert [(plain(a.number), a.epoch, a.metrics["parzen_ll"]) for a in logs] == [(0, 1, -0.5), (1, 1, -1.5), (0, 2, -1.0), (1, 2, -2.0)]
    assert logs[2].texts == {p.FEATURES: "domain:ring8:ab12cd34"} and "epoch" not in logs[0].metrics
    assert again.replay("r0", {}) == []  # a checkpoint from before history.json
    assert p.read_history(p.history_text(histories[1])) == histories[1]
    assert p.read_history("{not json") == [] and p.read_history('{"epoch": 1}') == []


# ------------------------------------------------------------------ protocol: old layouts


def test_the_configs_of_the_old_protocol_read_as_units() -> None:
    lone = p.read_unit_config({"number": 4, "values": {"alpha": 0.5}, "resume": "/c", "threads": 2})
    assert lone == {"numbers": [4], "values": [{"alpha": 0.5}], "resume": "/c", "threads": 2, "packed": False,
                    "board": None, "select": None, "plugins": []}
    pack = p.read_unit_config({"numbers": [1, 2], "values": [{}, {}], "resume": None, "threads": 1, "board": "b"})
    assert pack["numbers"] == [1, 2] and pack["packed"] and pack["board"] == "b"
    with pytest.raises(p.UnreadableConfig, match="needs 'numbers'"):
        p.read_unit_config({"values": {}})


def test_the_checkpoints_of_the_old_protocol_read_as_checkpoint_states() -> None:
    unit = {"format": 2, "epoch": 2, "epochs": [2], "metrics": [{"d_loss": 1.0}]}
    lone = p.read_checkpoint_state({**unit, "generator": {}}, [7], seed=3)
    assert (lone["epoch"], lone["numbers"], lone["data_seed"], lone["last"]) == (2, [7], 3, {})
    assert lone["unit"]["metrics"] == [{"d_loss": 1.0}]
    format1 = p.read_checkpoint_state({"epoch": 1, "generator": {}, "opt_g": {}}, [7], seed=3)
    assert format1["epoch"] == 1 and "opt_g" in format1["unit"]
    pack = p.read_checkpoint_state(
        {"epoch": 2, "numbers": [4, 5], "data_seed": 9, "pack": unit, "last": {"4": {"d_loss": 2.0}}}, [4, 5], seed=0)
    assert (pack["epoch"], pack["numbers"], pack["data_seed"], pack["last"]) == (2, [4, 5], 9, {"4": {"d_loss": 2.0}})
    with pytest.raises(p.UnknownCheckpoint, match="protocol 7"):
        p.read_checkpoint_state({"protocol": 7}, [1], seed=0)
    with pytest.raises(p.UnknownCheckpoint, match="keys"):
        p.read_checkpoint_state({"weights": 1}, [1], seed=0)


def test_results_read_nested_or_flattened() -> None:
    nested = result(2, {3: good(2, -1.0)})
    assert p.member_results([3], nested) == p.member_results([3], flattened(2, {3: good(2, -1.0)}))
    assert p.member_results([3], nested)[3]["parzen_ll"] == -1.0
    assert p.member_results([9], nested) == {}  # not this unit's member
