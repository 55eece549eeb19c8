"""A resumed or extended study continues its sampler's stream (issue 29, item 4): each run
rebuilt the seeded sampler from the study's seed, so the second run of a random-sampler study
asked exactly the first run's values again. Against a real SQLite Optuna storage, each run a
new OptunaStudy as a new driver builds it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from gansweep.config.schema import Choice, FloatRange, StudyConfig
from gansweep.service.search import OptunaStudy, continuing_seed


def random_study(sampler: str = "random", seed: int | None = 0) -> StudyConfig:
    return StudyConfig.model_validate({
        "name": "extended", "sampler": {"name": sampler, "seed": seed},
        "search": {"alpha": FloatRange(kind="uniform", low=0.2, high=0.4),
                   "lr_d": FloatRange(kind="log_uniform", low=1e-4, high=1e-2)},
    })


def one_run(study: StudyConfig, url: str, trials: int) -> list[tuple[float, float]]:
    """What a driver does with its budget: ask each trial and tell it COMPLETE."""
    optuna_study = OptunaStudy(study, url)
    asked = []
    for _ in range(trials):
        number, values = optuna_study.ask()
        optuna_study.tell(number, TrialState.COMPLETE, [values["alpha"]])
        asked.append((values["alpha"], values["lr_d"]))
    return asked


# tpe: its first 3 trials (n_startup_trials of a 10-trial budget) are random draws too
@pytest.mark.parametrize(("sampler", "runs"), [("random", (3, 3, 2)), ("tpe", (1, 1, 1))])
def test_a_second_run_of_a_seeded_study_asks_new_values(sampler: str, runs: tuple[int, ...], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    asked = [values for trials in runs for values in one_run(random_study(sampler), url, trials)]
    assert len(set(asked)) == len(asked) == sum(runs), asked


def test_a_second_run_of_a_grid_study_asks_the_points_not_asked_yet(tmp_path: Path) -> None:
    # the grid sampler keeps the study's seed: it shuffled the grid the stored grid ids index
    grid = StudyConfig.model_validate({
        "name": "extended", "sampler": {"name": "grid", "seed": 1},
        "search": {"alpha": Choice(values=(0.3, 0.4, 0.5, 0.6, 0.7))},
    })
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    asked = []
    for trials in (2, 2, 1):
        optuna_study = OptunaStudy(grid, url)
        for _ in range(trials):
            number, values = optuna_study.ask()
            optuna_study.tell(number, TrialState.COMPLETE, [values["alpha"]])
            asked.append(values["alpha"])
    assert sorted(asked) == [0.3, 0.4, 0.5, 0.6, 0.7]


def test_the_first_run_draws_as_the_study_seed_always_did(tmp_path: Path) -> None:
    # a new study's trials reproduce those of the releases before (and of Optuna's own sampler)
    first = one_run(random_study(), f"sqlite:///{tmp_path / 'optuna.db'}", 3)
    reference = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for alpha, lr_d in first:
        trial = reference.ask()
        assert (trial.suggest_float("alpha", 0.2, 0.4), trial.suggest_float("lr_d", 1e-4, 1e-2, log=True)) == (alpha, lr_d)


def test_an_extension_is_reproducible(tmp_path: Path) -> None:
    # the same study extended the same way asks the same values: the seed follows the stored trials
    runs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        url = f"sqlite:///{tmp_path / folder / 'optuna.db'}"
        runs.append(one_run(random_study(), url, 2) + one_run(random_study(), url, 2))
    assert runs[0] == runs[1]


def test_the_continuing_seed() -> None:
    assert continuing_seed(0, 0) == 0 and continuing_seed(None, 5) is None and continuing_seed(7, 5, "grid") == 7
    assert len({continuing_seed(0, n) for n in range(1, 100)} | {continuing_seed(1, n) for n in range(1, 100)}) == 198
