"""Study inputs that once passed validation and failed at run time (issue 29, items 5 and 6):
a study name that is no folder of its own, a storage that is no database URL, an objective
no trial reports, a YAML key given twice. Each is refused by `gansweep run` itself, before
anything is written: exit 2, the file, line, field and value, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gansweep.cli import main
from gansweep.config.load import load_study
from gansweep.config.names import QUALITY_METRICS, reported_metrics
from gansweep.config.schema import MAX_NAME_LENGTH, TrialConfig

# Each case: the study file's text, then words the message must hold.
REFUSED = {
    "name dot": ("name: '.'\n", ["study.yaml:1: name", "only dots", "'.'"]),
    "name dot dot": ("name: '..'\n", ["study.yaml:1: name", "only dots", "'..'"]),
    "name too long": (f"name: {'n' * 300}\n", ["study.yaml:1: name", f"at most {MAX_NAME_LENGTH}", "got 300"]),
    "storage not a url": ("name: x\nstorage: notaurl\n", ["study.yaml:2: storage", "database URL", "'notaurl'"]),
    "storage of no known database": (
        "name: x\nstorage: 'nosuchdb://user:canary-secret@host/db'\n",
        ["study.yaml:2: storage", "does not know", "'nosuchdb'", "user:***@host/db"],
    ),
    "objective on no reported metric": (
        "name: x\nobjective: {metric: bogus}\n",
        ["study.yaml:2: objective.metric", "'bogus'", "no metric a trial reports", "parzen_ll", "wall_time"],
    ),
    "second objective on no reported metric": (
        "name: x\nobjective:\n  metric: parzen_ll\n  second: {metric: bogus, direction: minimize}\n",
        ["study.yaml:4: objective.second.metric", "'bogus'"],
    ),
    "duplicate top-level key": (
        "name: x\ndescription: a\nname: y\n", ["study.yaml:3: invalid YAML", "duplicate key name", "first at line 1"],
    ),
    "duplicate trial field": (
        "name: x\ntrial:\n  alpha: 0.3\n  epochs: 2\n  alpha: 0.7\n",
        ["study.yaml:5: invalid YAML", "duplicate key trial.alpha", "first at line 3"],
    ),
    "duplicate in a flow mapping of the search": (
        "name: x\nsearch:\n  lr_d: {uniform: [0.1, 1], uniform: [0.2, 1]}\n",
        ["study.yaml:3: invalid YAML", "duplicate key search.lr_d.uniform"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_run_refuses_before_writing_anything(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    text, words = REFUSED[case]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(text)
    before = set(tmp_path.rglob("*"))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gansweep: error: {path}"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert "canary-secret" not in err
    assert set(tmp_path.rglob("*")) == before  # no runs/, no optuna.db, no mlflow.db


ACCEPTED = {
    "a name of the longest length": f"name: {'n' * MAX_NAME_LENGTH}\n",
    "a name with dots that is not only dots": "name: alpha.v2..b\n",
    "the default sqlite storage spelled out": "name: x\nstorage: sqlite:///runs/x/optuna.db\n",
    "postgres:// which the service maps to psycopg2": "name: x\nstorage: postgres://u:p@db:5432/optuna\n",
    "postgresql with its driver": "name: x\nstorage: postgresql+psycopg2://u:p@db/optuna\n",
    "an empty storage, the default": "name: x\nstorage: ''\n",
    "an engine metric as objective": "name: x\nobjective: {metric: wall_time, direction: minimize}\n",
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_what_the_project_accepted_still_validates(case: str, tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(ACCEPTED[case])
    assert load_study(path).name


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    # `<<: *base` then the same key: YAML's merge, not a key given twice
    path = tmp_path / "study.yaml"
    path.write_text("name: x\ntrial:\n  <<: {alpha: 0.3, k: 2}\n  alpha: 0.7\n")
    study = load_study(path)
    assert (study.trial.alpha, study.trial.k) == (0.7, 2)


def test_a_duplicate_key_in_a_set_value_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: x\n")
    assert main(["validate", str(path), "--set", "regularisers={r: 1, r: 2}"]) == 2
    assert "--set regularisers: invalid YAML: duplicate key r" in capsys.readouterr().err


def test_the_engine_reports_no_metric_the_objective_rule_does_not_know() -> None:
    """config.names.ENGINE_METRICS is declared torch-free; a real epoch of a trial with every
    metric on, evaluated, holds it to what the engine reports (a new engine metric must be
    declared there, or objectives on it would be refused)."""
    from gansweep.engine import run
    from gansweep.engine.data import load_dataset

    trial = TrialConfig(
        dataset="ring8", g_hidden=(8,), d_hidden=(8,), noise_dim=2, batch_size=32, epochs=1,
        steps_per_epoch=2, eval_samples=200, eval_valid=100, eval_test=200, device="cpu",
        metrics=QUALITY_METRICS,
    )
    data = load_dataset("ring8", seed=0)
    unit = run.build_unit([trial], data, execution="eager")
    (metrics,) = run.train_epoch(unit)
    numeric = {name for name, value in metrics.items() if isinstance(value, float)}
    assert {"parzen_ll", "modes_covered", "d_loss_gap", *QUALITY_METRICS} <= numeric
    assert numeric - set(reported_metrics()) == set()
