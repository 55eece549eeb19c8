"""Study files: every shipped study validates; bad input names file, line, field and value."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gansweep import extend
from gansweep.engine import data, models
from gansweep.cli import main
from gansweep.errors import ConfigError
from gansweep.config.names import IMAGE_DATASETS, TOY_DATASETS
from gansweep.config.schema import Choice, FloatRange
from gansweep.config.load import load_study
from gansweep.config.rules import STUDY_RULES, TRIAL_RULES
from gansweep.config.schema import StudyConfig, TrialConfig
from gansweep.config.space import decode_choice, encode_choice, search_order, trial_from_study

STUDIES = sorted(Path(__file__).parents[2].joinpath("studies").glob("*.yaml"))
GOOD = """\
name: ok
trial:
  dataset: circle
  epochs: 2
search:
  alpha: [0.3, 0.5]
  lr_d: {log_uniform: [1.0e-4, 1.0e-2]}
  k: {int: [1, 3]}
  adam_beta1: {uniform: [0.0, 0.9], when: {optimizer: adam}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_validates(path: Path) -> None:
    study = load_study(path)
    trial_from_study(study)  # the trial `gansweep train` would run is valid too
    assert study.name == path.stem


def test_registries_hold_exactly_the_names_studies_accept() -> None:
    assert set(data.DATASETS) == set(TOY_DATASETS + IMAGE_DATASETS)
    # every architecture config.names declares has its builder (none left without code)
    assert all(models.ARCHITECTURES.get(name).code is not None for name in models.ARCHITECTURES)


HEAVY = ("torch", "ray", "mlflow")


def test_validating_every_shipped_study_imports_no_torch_ray_or_mlflow() -> None:
    """`gansweep validate` (the CLI's own code, in a fresh interpreter) of each shipped study,
    packed ones included: the config side stays light and the driver torch-free."""
    code = (
        "import sys\n"
        "from gansweep.cli import main\n"
        f"for path in {[str(p) for p in STUDIES]!r}:\n"
        "    assert main(['validate', path]) == 0, path\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert any(load_study(path).budget.pack_size > 1 for path in STUDIES)  # packs.yaml


def test_search_forms_parse(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, GOOD))
    assert isinstance(study.search["alpha"], Choice) and study.search["alpha"].values == (0.3, 0.5)
    assert isinstance(study.search["lr_d"], FloatRange) and study.search["lr_d"].kind == "log_uniform"
    assert study.search["adam_beta1"].when == {"optimizer": "adam"}
    trial = trial_from_study(study)
    assert trial.alpha == 0.3 and trial.k == 2
    assert trial.lr_d == pytest.approx(1e-3)  # geometric middle of a log range


# Each rule across fields with a trial or study that breaks it (built without validation).
BROKEN_TRIALS = {
    "compose_leaves_both_kinds": {"alpha": 0.001, "batch_size": 64},
    "architecture_fits_the_data": {"architecture": "dcgan", "dataset": "ring8"},
    "smoothing_needs_a_real_target": {"loss": "wasserstein_gp", "label_smoothing": 0.9},
    "feature_layer_needs_feature_matching": {"feature_layer": 0, "loss": "hinge"},
    "feature_layer_is_a_hidden_layer": {"feature_layer": 2, "loss": "feature_matching", "d_hidden": (128, 128)},
    "penalty_needs_a_per_sample_critic": {"loss": "wasserstein_gp", "architecture": "dcgan"},
    "penalty_needs_no_minibatch_features": {"loss": "wasserstein_gp", "minibatch_discrimination": 4},
    "batch_norm_is_new_to_the_generator": {"g_norm": "batch", "architecture": "dcgan"},
    "regularisers_read_a_per_sample_critic": {"regularisers": (("r1", 1.0),), "architecture": "dcgan"},
}
# How a rule's message shows a value whose repr is not what a study file says.
SHOWN = {"regularisers_read_a_per_sample_critic": {"regularisers": "'r1'"}}


@pytest.fixture
def r1_regulariser() -> Iterator[None]:
    """A regulariser as a plugin registers it, that calls D (its input gradient)."""
    extend.regulariser("r1", player="d")(lambda real, d_grad: 0.5 * d_grad(real).pow(2).flatten(2).sum(2).mean(1))
    yield
    extend.REGULARISERS.drop_plugins()


@pytest.mark.parametrize("rule", list(TRIAL_RULES), ids=lambda rule: rule.__name__)
def test_each_trial_rule_names_its_field_and_the_values(rule, r1_regulariser) -> None:
    assert set(BROKEN_TRIALS) == {r.__name__ for r in TRIAL_RULES}
    assert rule(TrialConfig()) is None
    broken = BROKEN_TRIALS[rule.__name__]
    problem = rule(TrialConfig.model_construct(**{**TrialConfig().model_dump(), **broken}))
    shown = {**{k: repr(v).strip("'") for k, v in broken.items()}, **SHOWN.get(rule.__name__, {})}
    assert TRIAL_RULES[rule] in broken and all(text in problem for text in shown.values()), problem


def test_each_study_rule_names_a_field_of_the_study() -> None:
    for rule, field in STUDY_RULES.items():
        assert rule(StudyConfig(name="x")) is None
        assert field[0] in StudyConfig.model_fields and field[1] in type(getattr(StudyConfig(name="x"), field[0])).model_fields


def test_list_choices_travel_to_optuna_as_json_and_back(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, "name: x\nsearch:\n  g_hidden: [[64, 64], [128]]\n  alpha: [0.3, 0.5]\n"))
    hidden, alpha = study.search["g_hidden"], study.search["alpha"]
    assert [encode_choice(v) for v in hidden.values] == ["[64, 64]", "[128]"]  # scalars for Optuna
    assert decode_choice(hidden, "[128]") == [128] and decode_choice(alpha, 0.5) == 0.5  # as listed
    assert decode_choice(alpha, 0.7) == 0.7  # not among the choices: the value itself


# A condition on a field that is itself conditional, listed in every order: the optimizer is
# searched only with minimax, adam_beta1 only when the optimizer (searched or fixed) is adam.
CHAIN = {
    "adam_beta1": "  adam_beta1: {uniform: [0.0, 0.9], when: {optimizer: adam}}\n",
    "optimizer": "  optimizer: {values: [sgd, adam], when: {loss: minimax}}\n",
    "loss": "  loss: [minimax, non_saturating]\n",
}
CHAIN_ORDERS = list(itertools.permutations(CHAIN))


def chain_study(order: tuple[str, ...]) -> str:
    return "name: chain\ntrial: {dataset: circle}\nsearch:\n" + "".join(CHAIN[name] for name in order)


@pytest.mark.parametrize("order", CHAIN_ORDERS, ids="-".join)
def test_conditions_resolve_in_dependency_order_whatever_the_file_order(tmp_path: Path, order) -> None:
    study = load_study(write(tmp_path, chain_study(order)))
    assert search_order(study.search) == ["loss", "optimizer", "adam_beta1"]
    trial = trial_from_study(study)
    # loss minimax, so the optimizer is searched: sgd; so adam_beta1 keeps its fixed 0.5
    assert (trial.loss, trial.optimizer, trial.adam_beta1) == ("minimax", "sgd", 0.5)


@pytest.mark.parametrize("first", ["adam_beta1", "optimizer"])
def test_a_condition_listed_before_its_field_holds_for_train(tmp_path: Path, first: str) -> None:
    """The issue's case: adam_beta1 (when optimizer is adam) above `optimizer: [sgd, adam]`
    gave an sgd trial with adam_beta1 0.45."""
    lines = {"adam_beta1": "  adam_beta1: {uniform: [0.0, 0.9], when: {optimizer: adam}}\n",
             "optimizer": "  optimizer: [sgd, adam]\n"}
    order = [first, *(name for name in lines if name != first)]
    study = load_study(write(tmp_path, "name: x\nsearch:\n" + "".join(lines[n] for n in order)))
    trial = trial_from_study(study)
    assert (trial.optimizer, trial.adam_beta1) == ("sgd", 0.5)


def test_set_fixes_a_field_and_removes_it_from_the_search(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, GOOD), ["alpha=0.7", "budget.trials=3", "g_hidden=[8, 8]"])
    assert "alpha" not in study.search and study.trial.alpha == 0.7
    assert study.budget.trials == 3 and study.trial.g_hidden == (8, 8)


# Each case: (file text or None for GOOD, --set overrides, words the message must contain).
BAD = {
    "yaml syntax": ("name: x\ntrial: {dataset: circle\n", [], ["study.yaml:", "invalid YAML"]),
    "not a mapping": ("- 1\n- 2\n", [], ["mapping"]),
    "missing name": ("trial: {}\n", [], ["name", "Field required"]),
    "bad name": ("name: 'a b/c'\n", [], ["name", "'a b/c'"]),
    "unknown top key": ("name: x\nbogus: 1\n", [], ["bogus", "unknown field"]),
    "unknown trial key": ("name: x\ntrial: {alhpa: 0.3}\n", [], ["trial.alhpa", "unknown field", "alpha"]),
    "alpha too big": ("name: x\ntrial: {alpha: 1.5}\n", [], ["study.yaml:2", "trial.alpha", "1.5"]),
    "alpha zero": ("name: x\ntrial: {alpha: 0}\n", [], ["trial.alpha", "0"]),
    "alpha string": ("name: x\ntrial: {alpha: lots}\n", [], ["trial.alpha", "lots"]),
    "k zero": ("name: x\ntrial: {k: 0}\n", [], ["trial.k", "0"]),
    "k float": ("name: x\ntrial: {k: 1.5}\n", [], ["trial.k", "1.5"]),
    "negative lr": ("name: x\ntrial: {lr_d: -0.1}\n", [], ["trial.lr_d", "-0.1"]),
    "unknown loss": ("name: x\ntrial: {loss: wgan}\n", [], ["trial.loss", "wgan", "non_saturating"]),
    "unknown architecture": ("name: x\ntrial: {architecture: resnet}\n", [], ["trial.architecture", "resnet", "dcgan"]),
    "unknown dataset": ("name: x\ntrial: {dataset: imagenet}\n", [], ["trial.dataset", "imagenet", "fashion-mnist"]),
    "unknown optimizer": ("name: x\ntrial: {optimizer: rmsprop}\n", [], ["trial.optimizer", "rmsprop"]),
    "unknown sampler": ("name: x\nsampler: {name: bayes}\n", [], ["sampler.name", "bayes", "tpe"]),
    "unknown pruner": ("name: x\npruner: {name: early}\n", [], ["pruner.name", "early", "median"]),
    "dcgan on 2D": ("name: x\ntrial: {architecture: dcgan, dataset: circle}\n", [], ["study.yaml:2: trial.architecture", "dcgan", "circle"]),
    "compose leaves no real": ("name: x\ntrial:\n  batch_size: 64\n  alpha: 0.001\n", [], ["study.yaml:4: trial.alpha", "alpha=0.001", "0 real"]),
    "smoothing on hinge": ("name: x\ntrial: {loss: hinge, label_smoothing: 0.9}\n", [], ["trial.label_smoothing", "hinge"]),
    "empty choices": ("name: x\nsearch: {alpha: []}\n", [], ["search.alpha", "empty"]),
    "bad choice value": ("name: x\nsearch:\n  alpha: [0.3, 1.5]\n", [], ["study.yaml:3", "search.alpha.1", "1.5"]),
    "low above high": ("name: x\nsearch: {lr_d: {uniform: [0.1, 0.01]}}\n", [], ["search.lr_d", "low=0.1", "high=0.01"]),
    "log range at zero": ("name: x\nsearch: {lr_d: {log_uniform: [0, 0.01]}}\n", [], ["search.lr_d", "low > 0", "low=0"]),
    "range wrong arity": ("name: x\nsearch: {lr_d: {uniform: [0.1]}}\n", [], ["search.lr_d", "[low, high]"]),
    "two kinds": ("name: x\nsearch: {lr_d: {uniform: [0.1, 1], values: [1]}}\n", [], ["search.lr_d", "exactly one"]),
    "unknown search field": ("name: x\nsearch: {alhpa: [0.3]}\n", [], ["search.alhpa", "unknown trial field"]),
    "range outside field": ("name: x\nsearch: {alpha: {uniform: [0.5, 2.0]}}\n", [], ["search.alpha", "2.0"]),
    "grid with a range": ("name: x\nsampler: {name: grid}\nsearch: {lr_d: {uniform: [0.1, 1]}}\n", [], ["grid", "search.lr_d"]),
    "impossible condition": ("name: x\nsearch: {momentum: {uniform: [0, 0.9], when: {optimizer: lbfgs}}}\n", [], ["when", "lbfgs"]),
    "condition cycle": (
        "name: x\nsearch:\n  momentum: {uniform: [0, 0.9], when: {adam_beta1: 0.5}}\n"
        "  adam_beta1: {values: [0.5, 0.9], when: {momentum: 0.5}}\n",
        [], ["study.yaml:3", "search.momentum.when", "cycle", "momentum -> adam_beta1 -> momentum"],
    ),
    "condition on itself": (
        "name: x\nsearch:\n  optimizer: {values: [adam, sgd], when: {optimizer: sgd}}\n", [],
        ["study.yaml:3", "search.optimizer.when", "optimizer itself"],
    ),
    "condition on an unknown field": (
        "name: x\nsearch:\n  momentum: {uniform: [0, 0.9], when: {optimiser: sgd}}\n", [],
        ["study.yaml:3", "search.momentum.when", "unknown field 'optimiser'", "optimizer"],
    ),
    "condition on a conditional field that cannot hold": (
        "name: x\nsearch:\n  momentum: {uniform: [0, 0.9], when: {optimizer: lbfgs}}\n"
        "  optimizer: {values: [sgd, adam], when: {loss: minimax}}\n  loss: [minimax, hinge]\n",
        [], ["search.momentum.when", "optimizer='lbfgs' can never hold", "['sgd', 'adam']"],
    ),
    "zero gpus fraction": ("name: x\nbudget: {gpus_per_trial: 1.5}\n", [], ["budget.gpus_per_trial", "1.5"]),
    "negative cpus": ("name: x\nbudget: {cpus_per_trial: -1}\n", [], ["budget.cpus_per_trial", "-1"]),
    "zero trials": ("name: x\nbudget: {trials: 0}\n", [], ["budget.trials", "0"]),
    "set unknown key": (None, ["alhpa=0.3"], ["--set alhpa", "unknown trial field"]),
    "set bad value": (None, ["alpha=2"], ["trial.alpha", "2"]),
    "set no equals": (None, ["alpha"], ["KEY=VALUE"]),
    "set bad dotted": (None, ["budget.trials=lots"], ["budget.trials", "lots"]),
    "set through a scalar": (None, ["name.x=1"], ["name", "not a mapping"]),
    "output escapes": ("name: x\noutput: ../../etc\n", [], ["output", "../../etc"]),
    "absolute output outside": ("name: x\noutput: /etc/gansweep\n", [], ["output", "/etc/gansweep"]),
    "python object tag": ("name: !!python/object/apply:os.system ['true']\n", [], ["invalid YAML"]),
    "pack with a searched shape": (
        "name: x\ntrial: {alpha_mode: weight}\nsearch: {k: [1, 2]}\nbudget: {pack_size: 4}\n",
        [], ["search.k", "budget.pack_size=4", "share k"],
    ),
    "pack of compose trials with different real counts": (
        "name: x\nsearch: {alpha: [0.3, 0.5]}\nbudget: {pack_size: 2}\n", [],
        ["search.alpha", "round(alpha * batch_size)", "[19, 32]", "alpha_mode weight"],
    ),
    "zero pack size": ("name: x\nbudget: {pack_size: 0}\n", [], ["budget.pack_size", "0"]),
    "tanh on a 2D set outside its range": (
        None, ["dataset=ring8", "g_output=tanh"],
        ["trial.g_output", "g_output='tanh'", "(-1, 1)", "trial.dataset='ring8'", "[-1.048, 1.048]"],
    ),
    "second objective with pruning": (
        "name: x\nobjective: {second: {metric: wall_time, direction: minimize}}\npruner: {name: median}\n",
        [], ["study.yaml:3: pruner.name", "multi-objective"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_naming_the_field(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    text, overrides, words = BAD[case]
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, GOOD if text is None else text)
    before = set(tmp_path.rglob("*"))
    argv = ["run", str(path)] + [x for o in overrides for x in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(path) in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert set(tmp_path.rglob("*")) == before  # nothing written: no runs/, no mlflow.db


# A bounded g_output against a built-in 2D set's range (config.rules.TOY_EXTENTS), in every
# trial the study can produce: (file text or None for GOOD, --set overrides, exit, words).
OUTPUT_RANGES = {
    "tanh on ring8": (
        None, ["dataset=ring8", "g_output=tanh"], 2,
        ["study.yaml: trial.g_output", "g_output='tanh'", "(-1, 1)", "trial.dataset='ring8'", "[-1.048, 1.048]", "identity"],
    ),
    "tanh with one searched set outside": (
        "name: x\ntrial: {g_output: tanh}\nsearch: {dataset: [circle, digits, grid25]}\n", [], 2,
        ["trial.g_output", "g_output='tanh'", "(-1, 1)", "search.dataset='grid25'", "[-1.052, 1.052]"],
    ),
    "sigmoid searched on the circle": (
        "name: x\nsearch: {g_output: [identity, sigmoid]}\n", [], 2,
        ["search.g_output", "g_output='sigmoid'", "(0, 1)", "trial.dataset='circle'", "[-0.88, 0.88]"],
    ),
    "tanh on the line, whose noise carries its ends past 1": (
        None, ["dataset=line", "g_output=tanh"], 2, ["trial.dataset='line'", "[-1.006, 1.006]"],
    ),
    "tanh on the circle, inside (-1, 1)": (None, ["g_output=tanh"], 0, []),
    "tanh searched on the circle and images": (
        "name: x\nsearch:\n  dataset: [circle, digits]\n  g_output: [tanh, identity]\n", [], 0, [],
    ),
    "tanh only where the searched set is an image set": (
        "name: x\nsearch:\n  g_output: {values: [tanh, identity], when: {dataset: digits}}\n"
        "  dataset: [ring8, digits]\n", [], 0, [],
    ),
}


@pytest.mark.parametrize("case", list(OUTPUT_RANGES))
def test_validate_checks_a_bounded_output_against_the_2d_sets_range(case: str, tmp_path: Path, capsys) -> None:
    text, overrides, code, words = OUTPUT_RANGES[case]
    path = write(tmp_path, GOOD if text is None else text)
    assert main(["validate", str(path)] + [x for o in overrides for x in ("--set", o)]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not code or err.startswith(f"gansweep: error: {path}: "), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


def test_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: study file not found" in capsys.readouterr().err


def test_the_real_command_has_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntrial: {alpha: 1.5}\n")
    done = subprocess.run(
        [sys.executable, "-m", "gansweep", "validate", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "trial.alpha" in done.stderr and "Traceback" not in done.stderr


# "Billion laughs": nine lists of nine aliases of the list before, eight levels deep; a few
# hundred bytes that expand to 9**9 values.
LEVELS = [("a", ", ".join(["lol"] * 9))] + [
    (name, ", ".join([f"*{before}"] * 9)) for before, name in zip("abcdefgh", "bcdefghi")
]
LAUGHS_KEYS = "".join(f"{name}: &{name} [{items}]\n" for name, items in LEVELS)  # top-level keys
LAUGHS = "[" + ", ".join(f"&{name} [{items}]" for name, items in LEVELS) + "]"  # one flow value
HOSTILE_YAML = {
    "billion laughs as top-level keys": ("name: x\n" + LAUGHS_KEYS, [], "billion laughs"),
    "billion laughs in a string field": (f"name: x\ndescription: {LAUGHS}\n", [], "billion laughs"),
    "billion laughs as search values": (f"name: x\nsearch:\n  seed: {LAUGHS}\n", [], "billion laughs"),
    "billion laughs in --set": ("name: x\n", [f"seed={LAUGHS}"], "billion laughs"),
    "alias inside its own anchor": ("name: x\ndescription: &a [lol, *a]\n", [], "contains itself"),
    "nested too deeply": ("name: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n", [], "nested too deeply"),
}
MEMORY_LIMIT = 2 * 2**30


def limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("case", list(HOSTILE_YAML))
def test_hostile_yaml_ends_fast_with_exit_2(case: str, tmp_path: Path) -> None:
    """Study files come from users and cluster jobs: one that would expand to billions of
    values (or contain itself, or nest past Python's stack) is refused in bounded time and
    memory, with a message naming the file; before, `validate` died of a MemoryError."""
    text, overrides, words = HOSTILE_YAML[case]
    path = write(tmp_path, text)
    assert len(path.read_bytes()) < 11_000
    before = set(tmp_path.rglob("*"))
    argv = [x for o in overrides for x in ("--set", o)]
    for command in ("validate", "run"):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "gansweep", command, str(path), *argv], cwd=tmp_path,
            capture_output=True, text=True, timeout=60, preexec_fn=limit_memory,
        )
        assert time.monotonic() - started < 30
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
        assert done.stderr.startswith(f"gansweep: error: {path}")
        assert "invalid YAML" in done.stderr and words in done.stderr
        assert len(done.stderr) < 1000
    assert set(tmp_path.rglob("*")) == before


def test_aliases_within_reason_still_load(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, "name: x\ntrial: {g_hidden: &w [16, 16], d_hidden: *w}\n"
                                       "search:\n  seed: &s [0, 1, 2]\n"))
    assert study.trial.d_hidden == (16, 16) and study.search["seed"].values == (0, 1, 2)


def test_config_error_is_the_one_error_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_study(write(tmp_path, "name: x\ntrial: {k: 0}\n"))
