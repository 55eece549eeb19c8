"""gansweep.extend's registries: every built-in the config declares (torch-free) has its code
once the engine and the service are imported, with a description; unknown names list the
valid ones; the study's choices are the registries' names."""

from __future__ import annotations

import importlib

import pytest

from gansweep import extend
from gansweep.config.schema import PrunerConfig, SamplerConfig, SchedulerConfig, TrialConfig

# The modules that attach the built-ins' code to their declarations.
CODE = ("gansweep.engine.losses", "gansweep.engine.models", "gansweep.engine.quality", "gansweep.service.search",
        "gansweep.service.pruner")
# Built-ins computed by name where they are computed (engine.evaluate, engine.scoring), not by
# a registered function: Parzen, the joint precision/recall, seeded kid and c2st, D's AUC.
COMPUTED_BY_NAME = {"parzen_ll", "fid", "kid", "precision", "recall", "c2st_accuracy", "d_auc"}


@pytest.mark.parametrize("kind", list(extend.REGISTRIES))
def test_every_declared_built_in_has_its_code_and_a_description(kind: str) -> None:
    for module in CODE:
        importlib.import_module(module)
    registry = extend.REGISTRIES[kind]
    for name in registry.names(built_in=True):
        entry = registry.get(name)
        assert entry.description, name
        if not (kind == "metric" and name in COMPUTED_BY_NAME):
            assert entry.code is not None, f"{kind} {name!r} is declared but has no code"


@pytest.mark.parametrize(("make", "field", "registry"), [
    (lambda v: TrialConfig(loss=v), "loss", extend.LOSSES),
    (lambda v: TrialConfig(architecture=v, dataset="digits"), "architecture", extend.ARCHITECTURES),
    (lambda v: SamplerConfig(name=v), "sampler", extend.SAMPLERS),
    (lambda v: PrunerConfig(name=v), "pruner", extend.PRUNERS),
    (lambda v: SchedulerConfig(name=v), "scheduler", extend.SCHEDULERS),
])
def test_the_schemas_choices_are_the_registries_names(make, field: str, registry: extend.Registry) -> None:
    for name in registry.names():
        make(name)  # every registered name is accepted
    with pytest.raises(ValueError, match=f"unknown {registry.kind} 'nope'; valid: {', '.join(registry.names())}"):
        make("nope")


def test_a_built_in_without_a_declaration_is_refused() -> None:
    with pytest.raises(extend.ExtensionError, match="built-in loss 'undeclared' has no declaration"):
        extend.LOSSES.add("undeclared", object, extend.BUILT_IN)
    with pytest.raises(extend.ExtensionError, match="a loss name is a Python identifier, got 'two words'"):
        extend.LOSSES.add("two words", object, "mine.py")
