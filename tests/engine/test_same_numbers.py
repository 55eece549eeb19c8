"""studies/smoke.yaml gives the numbers it gave before the extension points (losses as
registry entries, the iteration reading declared extras): tests/data/smoke_before.json was
recorded at commit 33c5f66 (its `commit`) with the same calls, eager and packed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gansweep.config.load import load_study
from gansweep.engine.train import train_gan, train_pack

ROOT = Path(__file__).resolve().parents[2]
BEFORE = json.loads((ROOT / "tests" / "data" / "smoke_before.json").read_text())


def trials():
    study = load_study(ROOT / "studies" / "smoke.yaml")
    return [study.trial.model_copy(update=t) for t in BEFORE["trials"]]


def assert_as_before(history: list[dict[str, float]], before: list[dict[str, float]]) -> None:
    assert len(history) == len(before)
    for got, expected in zip(history, before, strict=True):
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


def test_smoke_trials_train_as_before_eager(circle) -> None:
    for trial, before in zip(trials(), BEFORE["eager"], strict=True):
        assert_as_before(train_gan(trial, circle), before)


def test_smoke_trials_train_as_before_packed(circle) -> None:
    # packed by alpha (compose-mode members share round(alpha m)), the two losses together
    members = trials()
    histories = train_pack(members[:2], circle) + train_pack(members[2:], circle)
    for history, before in zip(histories, BEFORE["packed"], strict=True):
        assert_as_before(history, before)
