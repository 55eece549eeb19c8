"""A study edited between runs (issue 29, item 3): its Optuna study holds its identity
(search space, objective, fixed trial fields), and a run whose study differs is refused,
listing what changed, unless --allow-changed accepts a change that keeps the trials
comparable; the objective never changes within a study. Against a real SQLite storage."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from conftest import gansweep
from optuna.trial import TrialState

from gansweep.config.load import load_study
from gansweep.errors import ConfigError
from gansweep.service.identity import ATTR_IDENTITY, identity_changes
from gansweep.service.protocol import local_optuna_storage_url
from gansweep.service.search import OptunaStudy

STUDY = """\
name: edited
trial: {dataset: circle, epochs: 2, steps_per_epoch: 5, eval_samples: 100, eval_valid: 50, eval_test: 100, device: cpu}
search:
  alpha: {uniform: [0.2, 0.4]}
sampler: {name: random}
budget: {trials: 1, max_concurrent: 1}
objective: {metric: parzen_ll}
"""
WIDER = STUDY.replace("[0.2, 0.4]", "[0.2, 0.8]")
MOVED = STUDY.replace("[0.2, 0.4]", "[0.6, 0.8]")
C2ST = STUDY.replace("trial: {", "trial: {metrics: [c2st_accuracy], ").replace("metric: parzen_ll", "metric: c2st_accuracy")
MORE_TRIALS = STUDY.replace("trials: 1", "trials: 3")


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def one_run(tmp_path: Path, text: str, allow_changed: bool = False) -> OptunaStudy:
    """What a driver does with the Optuna study: open it, ask a trial and tell it."""
    study = OptunaStudy(load_study(study_file(tmp_path, text)), f"sqlite:///{tmp_path / 'optuna.db'}",
                        allow_changed=allow_changed)
    number, values = study.ask()
    study.tell(number, TrialState.COMPLETE, [values["alpha"]])
    return study


def test_a_study_run_again_unchanged_or_with_more_trials_goes_on(tmp_path: Path) -> None:
    one_run(tmp_path, STUDY)
    one_run(tmp_path, STUDY)
    assert len(one_run(tmp_path, MORE_TRIALS).trials()) == 3  # the budget is no part of its identity
    one_run(tmp_path, STUDY.replace("device: cpu", "device: auto, compile: true"))  # nor how trials run


def test_a_changed_search_space_is_refused_naming_the_change_and_the_ways_on(tmp_path: Path) -> None:
    one_run(tmp_path, STUDY)
    with pytest.raises(ConfigError) as refused:
        one_run(tmp_path, MOVED)
    message = str(refused.value)
    for words in ("study 'edited' was run with another search space", "search.alpha.low: 0.2 -> 0.6",
                  "search.alpha.high: 0.4 -> 0.8", "a new name", "--output", "--allow-changed"):
        assert words in message, message
    assert len(optuna.load_study(study_name="edited", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials) == 1


def test_allow_changed_accepts_a_wider_range_and_records_it(tmp_path: Path) -> None:
    one_run(tmp_path, STUDY)
    one_run(tmp_path, WIDER, allow_changed=True)
    one_run(tmp_path, WIDER)  # the new identity stands: no flag needed again
    stored = optuna.load_study(study_name="edited", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert stored.user_attrs[ATTR_IDENTITY]["search"]["alpha"]["high"] == 0.8
    with pytest.raises(ConfigError, match="search.alpha.high: 0.8 -> 0.4"):
        one_run(tmp_path, STUDY)


def test_a_changed_objective_is_refused_even_when_changes_are_allowed(tmp_path: Path) -> None:
    one_run(tmp_path, STUDY)
    with pytest.raises(ConfigError) as refused:
        one_run(tmp_path, C2ST, allow_changed=True)
    message = str(refused.value)
    assert "another objective" in message and "objective.metric: 'parzen_ll' -> 'c2st_accuracy'" in message
    assert "objective.direction: 'maximize' -> 'minimize'" in message and "--allow-changed" not in message


def test_a_study_from_before_identities_is_refused_another_direction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="edited", storage=url, direction="maximize")  # no identity stored
    with pytest.raises(ConfigError, match=r"objective directions: \['maximize'\] -> \['minimize'\]"):
        one_run(tmp_path, C2ST)
    one_run(tmp_path, STUDY)  # the same direction: goes on, and its identity is stored from now
    assert optuna.load_study(study_name="edited", storage=url).user_attrs[ATTR_IDENTITY]["search"]["alpha"]["low"] == 0.2


def test_an_identity_stored_by_another_release_compares_on_the_fields_both_know(tmp_path: Path) -> None:
    study = one_run(tmp_path, STUDY).study
    stored = study.user_attrs[ATTR_IDENTITY]
    older = {**stored, "trial": {k: v for k, v in stored["trial"].items() if k != "label_smoothing"}}
    older["trial"]["a_field_since_dropped"] = 1
    study.set_user_attr(ATTR_IDENTITY, older)  # as a release without label_smoothing stored it
    one_run(tmp_path, STUDY)  # label_smoothing at its default trains as before it existed
    with pytest.raises(ConfigError, match=r"trial.label_smoothing: \(new\) -> 0.9"):
        one_run(tmp_path, STUDY.replace("device: cpu", "device: cpu, label_smoothing: 0.9"))


def test_the_changes_listed() -> None:
    before = {"search": {"alpha": {"low": 0.2}}, "trial": {"k": 1}}
    after = {"search": {"alpha": {"low": 0.6}, "k": {"values": [1, 2]}}, "trial": {}}
    assert identity_changes(before, after) == [
        "search.alpha.low: 0.2 -> 0.6", "search.k.values: (new) -> [1, 2]", "trial.k: 1 -> (removed)",
    ]


@pytest.mark.slow  # Ray starts beside the driver's set-up (raystart.py) before the study is opened: 17 s
def test_gansweep_run_of_a_changed_study_exits_2_and_tracks_nothing(tmp_path: Path) -> None:
    # the first run's Optuna study, as `gansweep run` leaves it in runs/edited/optuna.db
    output = tmp_path / "runs" / "edited"
    output.mkdir(parents=True)
    _ = OptunaStudy(load_study(study_file(tmp_path, STUDY)), local_optuna_storage_url(output)).study
    before = set(tmp_path.rglob("*"))
    study_file(tmp_path, MOVED)
    started = time.monotonic()
    done = gansweep("run", "study.yaml", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "gansweep: error: study 'edited' was run with another search space" in done.stderr, done.stderr
    assert "search.alpha.low: 0.2 -> 0.6" in done.stderr and "Traceback" not in done.stderr
    assert {p.name for p in set(tmp_path.rglob("*")) - before} <= {"driver.lock"}  # no mlflow.db, no results
    assert time.monotonic() - started < 60
