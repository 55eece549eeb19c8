"""Optuna side of a sweep without Ray: samplers, pruners, the search space, resumable state."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from gansweep.service.search import (
    PRUNERS, SAMPLERS, OptunaStudy, decode_choice, encode_choice, grid_size, make_pruner,
    requested_trials,
)
from gansweep.config.names import PRUNER_NAMES, SAMPLER_NAMES
from gansweep.config.schema import Choice, TrialConfig
from gansweep.config.load import load_study

STUDY = """\
name: s
sampler: {name: SAMPLER, seed: 0}
trial: {dataset: circle, epochs: 3}
search:
  alpha: {uniform: [0.2, 0.8]}
  k: {int: [1, 3]}
  lr_d: {log_uniform: [1.0e-4, 1.0e-2]}
  loss: [non_saturating, minimax]
  g_hidden: [[8, 8], [16]]
  adam_beta1: {uniform: [0.0, 0.9], when: {optimizer: adam}}
  momentum: {uniform: [0.0, 0.9], when: {optimizer: sgd}}
  optimizer: [adam, sgd]
"""


def make_study(tmp_path: Path, text: str) -> OptunaStudy:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return OptunaStudy(load_study(path), f"sqlite:///{tmp_path / 'optuna.db'}")


def test_registries_match_the_study_schema() -> None:
    assert set(SAMPLERS) == set(SAMPLER_NAMES)
    assert set(PRUNERS) == set(PRUNER_NAMES)


@pytest.mark.parametrize("sampler", [s for s in SAMPLER_NAMES if s != "grid"])
def test_every_sampler_proposes_valid_trials_in_the_space(tmp_path: Path, sampler: str) -> None:
    study = make_study(tmp_path, STUDY.replace("SAMPLER", sampler))
    for _ in range(4):
        number, values = study.ask()
        trial = TrialConfig.model_validate(values)
        assert 0.2 <= trial.alpha <= 0.8 and 1 <= trial.k <= 3 and 1e-4 <= trial.lr_d <= 1e-2
        assert trial.g_hidden in ((8, 8), (16,))
        params = study.study.trials[number].params
        # conditional parameters are sampled only when their condition holds
        assert ("adam_beta1" in params) == (trial.optimizer == "adam")
        assert ("momentum" in params) == (trial.optimizer == "sgd")
        study.tell(number, TrialState.COMPLETE, [trial.alpha])


def test_grid_covers_every_point_once(tmp_path: Path) -> None:
    study = make_study(tmp_path, "name: s\nsampler: {name: grid, seed: 3}\nsearch:\n  alpha: [0.3, 0.5]\n  k: [1, 2, 3]\n")
    assert grid_size(study.config) == requested_trials(study.config) == 6
    seen = set()
    for _ in range(6):
        number, values = study.ask()  # asked all at once, as concurrent Tune trials do
        seen.add((values["alpha"], values["k"]))
    assert seen == {(a, k) for a in (0.3, 0.5) for k in (1, 2, 3)}


@pytest.mark.parametrize("pruner", PRUNER_NAMES)
@pytest.mark.parametrize("patience", [None, 2])
def test_every_pruner_builds(tmp_path: Path, pruner: str, patience: int | None) -> None:
    text = f"name: s\npruner: {{name: {pruner}, patience: {patience or 'null'}}}\n"
    built = make_pruner(make_study(tmp_path, text).config)
    assert isinstance(built, optuna.pruners.BasePruner)
    if patience:
        assert isinstance(built, optuna.pruners.PatientPruner)


def test_median_pruner_stops_a_trial_below_the_median(tmp_path: Path) -> None:
    study = make_study(tmp_path, "name: s\npruner: {name: median, startup_trials: 2}\nsearch: {alpha: [0.3, 0.5, 0.7, 0.6]}\nsampler: {name: random}\n")
    for value in (1.0, 2.0):
        number, _ = study.ask()
        for epoch in (1, 2, 3):
            assert study.report(number, value, epoch) is False
        study.tell(number, TrialState.COMPLETE, [value])
    poor, _ = study.ask()
    assert study.report(poor, 0.0, 1) is True  # median of (1, 2) is 1.5 > 0
    good, _ = study.ask()
    assert study.report(good, 3.0, 1) is False


def test_invalid_combinations_are_skipped_not_run(tmp_path: Path) -> None:
    # alpha 0.01 with batch 8 leaves no real sample in a compose minibatch
    study = make_study(tmp_path, "name: s\ntrial: {batch_size: 8}\nsampler: {name: random, seed: 0}\nsearch: {alpha: [0.01, 0.5]}\n")
    for _ in range(3):
        _, values = study.ask()
        assert values["alpha"] == 0.5
    excluded = [t for t in study.trials() if t.user_attrs.get("excluded")]
    assert all(t.state == TrialState.FAIL for t in excluded)
    assert study.finished_count() == 0  # excluded trials do not use up the budget


def test_unfinished_trials_survive_a_new_driver(tmp_path: Path) -> None:
    text = "name: s\nsampler: {name: random, seed: 0}\nsearch: {alpha: [0.3, 0.7]}\n"
    first = make_study(tmp_path, text)
    done, _ = first.ask()
    first.tell(done, TrialState.COMPLETE, [1.0])
    left, values = first.ask()  # the driver dies here
    again = make_study(tmp_path, text)
    assert [t.number for t in again.unfinished()] == [left]
    assert again.values_of(left) == values
    assert again.finished_count() == 1


@pytest.mark.parametrize("value", [[64, 64], (8,), "relu", 0.5, None])
def test_choices_round_trip_through_optuna(value) -> None:
    param = Choice(values=(value, "other"))
    assert decode_choice(param, encode_choice(value)) == value


# A condition on a conditional field (the optimizer is searched only with minimax; adam_beta1
# only when the optimizer, searched or fixed at adam, is adam), in each order a file can list it.
CHAIN = {
    "adam_beta1": "  adam_beta1: {uniform: [0.0, 0.9], when: {optimizer: adam}}\n",
    "optimizer": "  optimizer: {values: [sgd, adam], when: {loss: minimax}}\n",
    "loss": "  loss: [minimax, non_saturating]\n",
}


def sampled_chain(tmp_path: Path, order: tuple[str, ...], sampler: str) -> list[tuple[dict, list[str]]]:
    text = (f"name: s\nsampler: {{name: {sampler}, seed: 0}}\ntrial: {{dataset: circle}}\nsearch:\n"
            + "".join(CHAIN[name] for name in order))
    folder = tmp_path / "-".join(order)
    folder.mkdir()
    study = make_study(folder, text)
    seen = []
    for _ in range(12):
        number, values = study.ask()
        params = study.study.trials[number].params
        study.tell(number, TrialState.COMPLETE, [values["adam_beta1"]])
        seen.append(({k: values[k] for k in CHAIN}, sorted(params)))
    return seen


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_conditions_are_sampled_after_their_fields_whatever_the_file_order(tmp_path: Path, sampler: str) -> None:
    """The sweep's define-by-run goes through the same resolver as `gansweep train`: every
    order samples the same trials, each consistent with its conditions."""
    runs = [sampled_chain(tmp_path, order, sampler) for order in itertools.permutations(CHAIN)]
    assert all(run == runs[0] for run in runs[1:])
    for values, params in runs[0]:
        assert ("optimizer" in params) == (values["loss"] == "minimax")
        assert ("adam_beta1" in params) == (values["optimizer"] == "adam")
        if "adam_beta1" not in params:
            assert values["adam_beta1"] == 0.5  # the fixed value
    assert {(v["loss"], v["optimizer"]) for v, _ in runs[0]} == {
        ("minimax", "sgd"), ("minimax", "adam"), ("non_saturating", "adam")
    }
