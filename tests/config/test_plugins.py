"""A study's plugins (config.plugins, gansweep.extend): their names join the registries that
the schema reads, and whatever goes wrong in one is named by file and line, exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gansweep.config import plugins
from gansweep.config.load import load_study
from gansweep.errors import ConfigError
from gansweep.extend import LOSSES
from conftest import clean_env, gansweep

LOSS = '''
from gansweep.extend import loss, metric

@loss("doubled_hinge")
class DoubledHinge:
    """Twice the hinge loss."""
    smoothable = False
    def d_real(self, logits): return 2 * (1 - logits).clamp(min=0)
    def d_fake(self, logits): return 2 * (1 + logits).clamp(min=0)
    def g(self, logits): return -2 * logits

@metric("sample_count", direction="maximize")
def sample_count(generated, real):
    return float(generated.shape[0])
'''


@pytest.fixture(autouse=True)
def no_plugins_left() -> Iterator[None]:
    yield
    plugins.forget_all()


def study(tmp_path: Path, plugin: str, trial: str = "loss: doubled_hinge", extra: str = "") -> Path:
    (tmp_path / "mine.py").write_text(plugin)
    path = tmp_path / "study.yaml"
    path.write_text(f"name: x\nplugins: [mine.py]\ntrial:\n  {trial}\n{extra}")
    return path


def test_a_plugins_names_are_valid_in_trial_search_and_objective(tmp_path: Path) -> None:
    path = study(tmp_path, LOSS, "loss: doubled_hinge\n  metrics: [sample_count]",
                 "search:\n  loss: [doubled_hinge, hinge]\nobjective: {metric: sample_count}\n")
    loaded = load_study(path)
    assert loaded.trial.loss == "doubled_hinge"
    assert loaded.search["loss"].values == ("doubled_hinge", "hinge")
    assert loaded.objective.direction == "maximize"  # the plugin's, not the default's
    assert loaded.plugins == (str(tmp_path / "mine.py"),)
    entry = LOSSES.get("doubled_hinge")
    assert (entry.origin, entry.description, entry.meta["smoothable"]) == (str(tmp_path / "mine.py"), "Twice the hinge loss.", False)


def test_a_plugin_loss_keeps_the_rules_of_its_needs(tmp_path: Path) -> None:
    # smoothable = False: label smoothing is refused as for the built-in hinge
    with pytest.raises(ConfigError, match=r"study.yaml:\d+: trial.label_smoothing: .*doubled_hinge"):
        load_study(study(tmp_path, LOSS, "loss: doubled_hinge\n  label_smoothing: 0.9"))


def test_an_unknown_name_lists_the_plugins_names_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trial.loss: unknown loss 'doubled_hing'; valid: .*hinge.*doubled_hinge"):
        load_study(study(tmp_path, LOSS, "loss: doubled_hing"))


@pytest.mark.parametrize(("plugin", "expected"), [
    ("import torch\n\ndef broken(:\n", r"mine.py:3: plugin: "),
    ("x = 1\nraise RuntimeError('no GPU here')\n", r"mine.py:2: plugin: RuntimeError: no GPU here"),
    ("import no_such_package\n", r"mine.py:1: plugin: ModuleNotFoundError: No module named 'no_such_package'"),
    ("from gansweep.extend import loss\n\n@loss('hinge')\nclass Mine:\n    def d_real(self, l): return l\n"
     "    def d_fake(self, l): return l\n    def g(self, l): return l\n",
     r"mine.py:3: plugin: ExtensionError: .*loss 'hinge' collides with the built-in loss"),
    ("from gansweep.extend import loss\n\n@loss('half')\nclass Half:\n    def d_real(self, l): return l\n",
     r"mine.py:3: plugin: ExtensionError: .*loss 'half' lacks d_fake, g"),
    ("from gansweep.extend import metric\n\n@metric('m', direction='up')\ndef m(g, r): return 0.0\n",
     r"mine.py:3: plugin: ExtensionError: metric 'm': direction must be one of maximize, minimize, got 'up'"),
])
def test_a_broken_plugin_is_named_by_file_and_line(tmp_path: Path, plugin: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_study(study(tmp_path, plugin, "loss: hinge"))
    assert not LOSSES.names(built_in=False)  # nothing half-registered... of a file that failed first


def test_a_missing_or_foreign_plugin_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: x\nplugins: [nowhere.py]\n")
    with pytest.raises(ConfigError, match=r"study.yaml:2: plugins\[0\]: plugin file not found: .*nowhere.py"):
        load_study(path)
    path.write_text("name: x\nplugins: [notes.txt]\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\]: a plugin is a Python file \(.py\), got '.*notes.txt'"):
        load_study(path)


def test_two_files_may_not_define_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "other.py").write_text(LOSS)
    path = study(tmp_path, LOSS)
    path.write_text(path.read_text().replace("[mine.py]", "[mine.py, other.py]"))
    with pytest.raises(ConfigError, match=r"other.py:4: plugin: ExtensionError: .*'doubled_hinge' is already defined in .*mine.py"):
        load_study(path)


def test_an_edited_plugin_replaces_its_own_entries(tmp_path: Path) -> None:
    path = study(tmp_path, LOSS)
    load_study(path)
    first = LOSSES.get("doubled_hinge").code
    (tmp_path / "mine.py").write_text(LOSS.replace("Twice the hinge loss.", "Twice the hinge, edited."))
    load_study(path)
    assert LOSSES.get("doubled_hinge").code is not first
    assert LOSSES.get("doubled_hinge").description == "Twice the hinge, edited."


def test_validate_of_a_broken_plugin_exits_2_with_one_line(tmp_path: Path) -> None:
    study(tmp_path, "x = 1\nraise RuntimeError('no GPU here')\n", "loss: hinge")
    done = gansweep("validate", "study.yaml", cwd=tmp_path, env=clean_env())
    assert done.returncode == 2, done.stderr
    assert "mine.py:2: plugin: RuntimeError: no GPU here" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
