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

# Fields that fix the tensors' shapes, the data or the iteration's code (gansweep.engine's
# Spec and networks): members of one pack share them. Everything else (alpha, label
# smoothing, the learning rates, Adam's betas, SGD's momentum and its schedule, gp_weight, the
# loss, the seed, the evaluation settings) may differ between members: the iteration takes
# them per trial.
KEY_FIELDS: tuple[str, ...] = (
    "dataset", "data_dir", "n_train", "architecture", "g_hidden", "d_hidden", "g_activation",
    "d_activation", "generator_output", "dcgan_width", "maxout_units", "maxout_pieces",
    "noise_dim", "noise", "batch_size", "k", "epochs", "steps_per_epoch", "device",
    "alpha_mode", "optimizer", "d_dropout", "compile",
)

# What a pack cannot train, field -> (test, what a packed trial needs). Empty since the one
# iteration (gansweep.engine): every loss, alpha mode, optimiser, architecture and dropout
# packs; what remains is shapes, checked by pack_key and compose_reals.
REQUIREMENTS: dict[str, tuple[Callable[[TrialConfig], bool], str]] = {}


def compose_reals(trial: TrialConfig) -> int | None:
    """The real samples of a compose-mode minibatch, round(alpha m): a shape members share."""
    return round(trial.alpha * trial.batch_size) if trial.alpha_mode == "compose" else None


def pack_key(trial: TrialConfig) -> tuple[tuple[str, object], ...]:
    """(field, value) pairs that trials must share to train in one pack.
    Raises ConfigError naming the first field a pack cannot vary or implement."""
    for name, (allowed, need) in REQUIREMENTS.items():
        if not allowed(trial):
            raise ConfigError(
                f"trial cannot be packed: {name}={getattr(trial, name)!r}; a pack needs {need}"
            )
    key = tuple((name, getattr(trial, name)) for name in KEY_FIELDS)
    return key + (("round(alpha * batch_size)", compose_reals(trial)),)


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
    alpha = study.search.get("alpha")
    if alpha is not None and study.trial.alpha_mode == "compose":
        m = study.trial.batch_size
        values = alpha.values if alpha.kind == "choice" else (alpha.low, alpha.high)
        reals = sorted({round(float(v) * m) for v in values})
        if len(reals) > 1:
            raise ConfigError(
                f"{path}: search.alpha: {why}, and compose-mode members share round(alpha * "
                f"batch_size) real samples per minibatch; these values give {reals} (batch_size "
                f"{m}): use alpha_mode weight or bernoulli, or budget.pack_size 1"
            )
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
