"""trial.metrics and a quality objective in a study file: the names checked, the objective's
direction taken from its metric, a metric not computed or a wrong direction refused naming
file, line and field (config/schema.py, config/rules.py, config/names.py)."""

from __future__ import annotations

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
    ("trial:\n  metrics: [fid, fd]\n", r"study.yaml:3: trial.metrics.1: unknown metric 'fd'; valid: fid, kid"),
    ("trial:\n  metrics: [fid, fid]\n", r"trial.metrics: .*fid more than once"),
    ("trial:\n  features: imagenet\n", r"trial.features: .*'domain' or 'inception'"),
])
def test_bad_metric_names_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_study(study(tmp_path, text))
