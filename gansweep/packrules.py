"""What a pack can train: the rules `gansweep validate` checks and the pack step relies on.

Torch-free, so that validating a packed study imports no torch (the driver and `gansweep
validate` stay light); gansweep.pack, the vectorised step itself, imports these rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gansweep.errors import ConfigError
from gansweep.names import TOY_DATASETS

if TYPE_CHECKING:  # gansweep.study imports this module to validate packed studies
    from gansweep.study import StudyConfig, TrialConfig

# Losses whose discriminator terms are the (smoothed) BCE ones: the pack rebuilds the smoothed
# real term as s * real_term(l, 1) + (1 - s) * fake_term(l), which holds for BCE only and takes
# s as a tensor (real_term itself branches on a Python float). A literal, not computed from
# gansweep.losses (torch); tests/test_study.py checks it against the registry.
PACK_LOSSES: tuple[str, ...] = ("minimax", "non_saturating", "max_likelihood")

# Fields that fix the tensors' shapes, the data or the step's code: equal keys share a pack.
KEY_FIELDS: tuple[str, ...] = (
    "dataset", "data_dir", "n_train", "architecture", "g_hidden", "d_hidden", "g_activation",
    "d_activation", "generator_output", "noise_dim", "noise", "batch_size", "k", "epochs",
    "steps_per_epoch", "device", "alpha_mode", "optimizer", "d_dropout",
)

# What the vectorised step implements: field -> (test, what a packed trial needs).
REQUIREMENTS: dict[str, tuple[Callable[[TrialConfig], bool], str]] = {
    "dataset": (lambda t: t.is_toy, f"a 2D toy set ({', '.join(TOY_DATASETS)})"),
    "architecture": (lambda t: t.architecture == "mlp", "'mlp'"),
    "alpha_mode": (lambda t: t.alpha_mode == "weight", "'weight'"),
    "optimizer": (lambda t: t.optimizer == "adam", "'adam'"),
    "d_dropout": (lambda t: t.d_dropout == 0.0, "0 (no per-trial dropout masks)"),
    "loss": (lambda t: t.loss in PACK_LOSSES, f"one of {', '.join(PACK_LOSSES)}"),
    # the vectorised step runs eagerly; compile a study's trials with budget.pack_size 1
    "compile": (lambda t: not t.compile, "False (a pack's vectorised step is not compiled)"),
}


def pack_key(trial: TrialConfig) -> tuple[tuple[str, object], ...]:
    """(field, value) pairs that trials must share to train in one pack.
    Raises ConfigError naming the first field a pack cannot vary or implement."""
    for name, (allowed, need) in REQUIREMENTS.items():
        if not allowed(trial):
            raise ConfigError(
                f"trial cannot be packed: {name}={getattr(trial, name)!r}; a pack needs {need}"
            )
    return tuple((name, getattr(trial, name)) for name in KEY_FIELDS)


def check_pack_study(study: StudyConfig, path: object) -> None:
    """Every trial a study with budget.pack_size > 1 can ask for fits in one pack: the search
    varies no field of pack_key, and every value it can choose is one a pack implements."""
    size = study.budget.pack_size
    why = f"budget.pack_size={size} trains trials together in one vectorised step"
    for name in study.search:
        if name in KEY_FIELDS:
            raise ConfigError(
                f"{path}: search.{name}: {why}, and a pack's trials share {name}; "
                "search it with budget.pack_size 1"
            )
    try:
        pack_key(study.trial)
    except ConfigError as err:
        raise ConfigError(f"{path}: trial: {err} ({why})") from None
    for name, param in study.search.items():
        if name not in REQUIREMENTS:
            continue
        if param.kind != "choice":  # every requirement is a set of allowed values
            raise ConfigError(f"{path}: search.{name}: trial cannot be packed: a range over {name} ({why})")
        for value in param.values:
            try:
                pack_key(study.trial.model_copy(update={name: value}))
            except ConfigError as err:
                raise ConfigError(f"{path}: search.{name}: {err} ({why})") from None
