"""trial.metrics and a quality objective in a study file: the names checked, the objective's
direction taken from its metric, a metric not computed or a wrong direction refused naming
file, line and field (config/schema.py, config/rules.py, config/names.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gansweep.config.load import load_study
from gansweep.config.names import QUALITY_METRICS, metric_direction
from gansweep.errors import ConfigError


def study(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text("name: q\n" + text)
    return path


def test_default_is_no_quality_metric() -> None:
    from gansweep.config.schema import TrialConfig

    assert TrialConfig().metrics == () and TrialConfig().features == "domain"


@pytest.mark.parametrize("metric", QUALITY_METRICS)
def test_a_quality_objective_takes_its_metrics_direction(tmp_path: Path, metric: str) -> None:
    loaded = load_study(study(tmp_path, f"trial:\n  metrics: [{metric}]\nobjective:\n  metric: {metric}\n"))
    assert loaded.objective.direction == metric_direction(metric)
    assert loaded.objective.direction == ("maximize" if metric in ("precision", "recall") else "minimize")


def test_an_objective_not_computed_names_the_line(tmp_path: Path) -> None:
    path = study(tmp_path, "trial:\n  metrics: [kid]\nobjective:\n  metric: fid\n")
    with pytest.raises(ConfigError, match=r"study.yaml:5: objective.metric: .*'fid' is computed only when trial.metrics"):
        load_study(path)


def test_the_wrong_direction_is_refused(tmp_path: Path) -> None:
    path = study(tmp_path, "trial:\n  metrics: [fid, recall]\nobjective:\n  metric: recall\n"
                           "  second: {metric: fid, direction: maximize}\n")
    with pytest.raises(ConfigError, match=r"objective.second.direction.*fid is better minimised"):
        load_study(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("trial:\n  metrics: [fid, fd]\n", r"study.yaml:3: trial.metrics.1: unknown metric 'fd'; valid: fid, fid_infinity, kid"),
    ("trial:\n  metrics: [fid, fid]\n", r"trial.metrics: .*fid more than once"),
    ("trial:\n  features: imagenet\n", r"trial.features: .*'domain' or 'inception'"),
])
def test_bad_metric_names_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_study(study(tmp_path, text))


# ---------------------------------------------------------------------------- comparable objectives


@pytest.mark.parametrize(("metrics", "search", "objective", "field", "why"), [
    ("[fid]", "eval_samples: [500, 10000]", "{metric: fid}", "eval_samples", "the number of generated samples"),
    ("[fid]", "eval_test: {int: [500, 2000]}", "{metric: fid}", "eval_test", "the number of real .test. samples"),
    ("[precision]", "features: [domain, inception]", "{metric: precision}", "features", "the feature space"),
    ("[kid]", "features: [domain, inception]", "{metric: kid}", "features", "the feature space"),
    ("[]", "eval_samples: [1000, 10000]", "{metric: parzen_ll}", "eval_samples", "the number of generated samples"),
    ("[kid, energy_distance]", "eval_samples: [500, 1000]",  # kid is comparable, the second objective not
     "{metric: kid, second: {metric: energy_distance}}", "eval_samples", "the number of generated"),
])
def test_a_search_that_changes_what_the_objective_depends_on_is_refused(
    tmp_path: Path, capsys, metrics: str, search: str, objective: str, field: str, why: str
) -> None:
    from gansweep.cli import main

    path = study(tmp_path, f"trial:\n  metrics: {metrics}\nsearch:\n  {search}\nobjective: {objective}\n"
                           "pruner: {name: none}\n")
    assert main(["validate", str(path)]) == 2
    error = capsys.readouterr().err
    metric = re.search(r"metric: (\w+)}+$", objective).group(1)  # the objective that depends on the field
    where = "objective.second" if "second" in objective else "objective"
    assert re.search(rf"{re.escape(str(path))}: search.{field}: {where}.metric='{metric}' depends on {why}", error), error
    assert "cannot be ranked, pruned or compared" in error


@pytest.mark.parametrize(("metrics", "search", "objective"), [
    ("[kid]", "eval_samples: [500, 10000]", "kid"),  # unbiased at any size
    ("[d_auc]", "features: [domain, inception]", "d_auc"),  # no features read
    ("[]", "eval_test: [500, 1000]", "parzen_ll"),  # which test rows average the same quantity
    ("[fid]", "alpha: [0.3, 0.5]", "fid"),
])
def test_a_search_that_leaves_the_objective_comparable_is_accepted(
    tmp_path: Path, metrics: str, search: str, objective: str
) -> None:
    loaded = load_study(study(tmp_path, f"trial:\n  metrics: {metrics}\nsearch:\n  {search}\nobjective:\n"
                                        f"  metric: {objective}\n"))
    assert loaded.objective.metric == objective and len(loaded.search) == 1
