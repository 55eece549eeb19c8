"""The rules across fields: what no single field's type can say.

A trial's combinations (check_trial, run by TrialConfig's validator), a study's blocks
(check_study_fields, run by StudyConfig's), what the sampler needs of the search space, a
bounded generator output against a built-in 2D set's range in every trial the study can
produce, and what a pack can train (check_study, run by config.load once the search is
parsed, naming the file). The engine's packed execution relies on the pack rules (pack_key).

Each rule of a trial or of a study's blocks is a small function returning None or the
problem, listed with the field it names; the validators raise it as a RuleBroken, and
config.load names the file, the line of that field and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gansweep.config.comparable import incomparable_objective
from gansweep.config.conditions import reachable
from gansweep.config.theory import compose_real_count
from gansweep.config.names import (
    ARCHITECTURES, ENGINE_METRICS, LOSSES, METRICS, REGULARISERS, metric_direction, quality_metrics, reported_metrics,
)
from gansweep.errors import ConfigError

if TYPE_CHECKING:  # config.schema runs these rules in its validators
    from gansweep.config.schema import ObjectiveSpec, StudyConfig, TrialConfig


class RuleBroken(ValueError):
    """A rule across fields, broken; `field` is the key path of the field the message names
    (pydantic keeps the exception, so config.load can point at that field's line)."""

    def __init__(self, field: tuple[str, ...], problem: str) -> None:
        self.field = field
        super().__init__(problem)


# ---------------------------------------------------------------------------- one trial


def compose_leaves_both_kinds(trial: TrialConfig) -> str | None:
    if trial.alpha_mode != "compose":
        return None
    n_real = compose_real_count(trial.alpha, trial.batch_size)
    if 1 <= n_real <= trial.batch_size - 1:
        return None
    return (
        f"alpha={trial.alpha} with batch_size={trial.batch_size} puts {n_real} real "
        f"samples in a compose-mode minibatch; need 1 to {trial.batch_size - 1}"
    )


def _losses_where(key: str) -> list[str]:
    return [name for name in LOSSES if LOSSES.meta(name, key)]


def architecture_fits_the_data(trial: TrialConfig) -> str | None:
    if ARCHITECTURES.meta(trial.architecture, "images_only") and trial.is_toy:  # a 2D set or a file of points
        return f"architecture {trial.architecture!r} needs an image dataset, got dataset={trial.dataset!r}"
    return None


def smoothing_needs_a_real_target(trial: TrialConfig) -> str | None:
    if trial.label_smoothing == 1.0 or LOSSES.meta(trial.loss, "smoothable"):
        return None
    return (
        f"label_smoothing applies to {', '.join(_losses_where('smoothable'))}; "
        f"got label_smoothing={trial.label_smoothing} with loss={trial.loss!r}"
    )


def penalty_needs_a_per_sample_critic(trial: TrialConfig) -> str | None:
    # The penalty holds each input's gradient norm near 1; with batch norm D's output for one
    # sample depends on the rest of its batch, so that gradient is not the critic's
    # (Gulrajani et al. 2017, section 4: "no critic batch normalization").
    if LOSSES.meta(trial.loss, "input_gradient") and ARCHITECTURES.meta(trial.architecture, "batch_norm_critic"):
        fit = [a for a in ARCHITECTURES if not ARCHITECTURES.meta(a, "batch_norm_critic")]
        return (
            f"loss={trial.loss!r} penalises D's gradient per sample, and architecture="
            f"{trial.architecture!r} has batch norm in D, which mixes the samples of a batch; "
            f"use {' or '.join(fit)} with this loss"
        )
    return None


def penalty_needs_no_minibatch_features(trial: TrialConfig) -> str | None:
    # As batch norm above: minibatch discrimination makes D's output for a sample a function
    # of the other samples of its batch, so the per-sample gradient norm is not the critic's.
    if LOSSES.meta(trial.loss, "input_gradient") and trial.minibatch_discrimination:
        return (
            f"loss={trial.loss!r} penalises D's gradient per sample, and minibatch_discrimination="
            f"{trial.minibatch_discrimination} makes D's output for a sample depend on the rest of its "
            "batch; use minibatch_discrimination: 0 with this loss"
        )
    return None


def regularisers_read_a_per_sample_critic(trial: TrialConfig) -> str | None:
    # As the gradient penalty above: a regulariser that calls D itself (d, d_grad) reads
    # per-sample outputs and gradients, which batch norm or a minibatch layer would mix.
    calling = [n for n, weight in trial.regularisers
               if weight > 0 and {"d", "d_grad"} & set(REGULARISERS.meta(n, "inputs", ()))]
    if not calling:
        return None
    if ARCHITECTURES.meta(trial.architecture, "batch_norm_critic"):
        return (f"regularisers {calling} call D on their own inputs, and architecture={trial.architecture!r} "
                "has batch norm in D, which mixes the samples of a batch")
    if trial.minibatch_discrimination:
        return (f"regularisers {calling} call D on their own inputs, and minibatch_discrimination="
                f"{trial.minibatch_discrimination} makes D's output for a sample depend on the rest of its batch")
    return None


def batch_norm_is_new_to_the_generator(trial: TrialConfig) -> str | None:
    if trial.g_norm != "batch" or not ARCHITECTURES.meta(trial.architecture, "batch_norm_generator"):
        return None
    return (
        f"g_norm='batch' adds batch norm to G's hidden layers, and architecture={trial.architecture!r} "
        "has it there already (Radford et al.); use g_norm: none (its own) or virtual_batch"
    )


def feature_layer_needs_feature_matching(trial: TrialConfig) -> str | None:
    if trial.feature_layer is None or LOSSES.meta(trial.loss, "features"):
        return None
    return (f"feature_layer picks the features of {' and '.join(repr(n) for n in _losses_where('features'))}; "
            f"got feature_layer={trial.feature_layer} with loss={trial.loss!r}")


def feature_layer_is_a_hidden_layer(trial: TrialConfig) -> str | None:
    # dcgan's count of hidden layers follows the image size: models.feature_end checks it
    hidden = len(trial.d_hidden) if trial.architecture == "mlp" else ARCHITECTURES.meta(trial.architecture, "d_hidden_layers")
    if not LOSSES.meta(trial.loss, "features") or hidden is None:
        return None
    layer = -1 if trial.feature_layer is None else trial.feature_layer
    if -hidden <= layer < hidden:
        return None
    return (
        f"feature_layer={layer} (loss={trial.loss!r}) but architecture={trial.architecture!r} with d_hidden="
        f"{trial.d_hidden} gives D {hidden} hidden layers (valid: {-hidden} to {hidden - 1})"
    )


TRIAL_RULES: dict[Callable[[TrialConfig], str | None], str] = {  # rule -> the field it names
    compose_leaves_both_kinds: "alpha",
    architecture_fits_the_data: "architecture",
    smoothing_needs_a_real_target: "label_smoothing",
    feature_layer_needs_feature_matching: "feature_layer",
    feature_layer_is_a_hidden_layer: "feature_layer",
    penalty_needs_a_per_sample_critic: "loss",
    penalty_needs_no_minibatch_features: "minibatch_discrimination",
    batch_norm_is_new_to_the_generator: "g_norm",
    regularisers_read_a_per_sample_critic: "regularisers",
}


def check_trial(trial: TrialConfig) -> None:
    """Raises RuleBroken (a ValueError, pydantic's validator error) with the first rule the
    trial breaks."""
    for rule, field in TRIAL_RULES.items():
        problem = rule(trial)
        if problem:
            raise RuleBroken((field,), problem)


# ---------------------------------------------------------------------------- a study's blocks


def pruning_needs_one_objective(study: StudyConfig) -> str | None:
    if study.objective.second is None:
        return None
    if study.pruner.name == "none" and study.pruner.patience is None:
        return None
    return (
        f"pruner {study.pruner.name!r}: Optuna cannot prune a multi-objective study "
        "(objective.second is set); use pruner: {name: none}"
    )


def _objectives(study: StudyConfig, second: bool) -> list[tuple[str, ObjectiveSpec]]:
    if second:
        return [("objective.second", study.objective.second)] if study.objective.second else []
    return [("objective", study.objective)]


def objective_metric_is_reported(study: StudyConfig, second: bool = False) -> str | None:
    # refused here, not after every trial trained fully and FAILED for want of its objective
    for where, spec in _objectives(study, second):
        if spec.metric not in reported_metrics():
            return (
                f"{where}.metric={spec.metric!r} is no metric a trial reports; registered: "
                f"{', '.join(METRICS.names())}; the engine's: {', '.join(ENGINE_METRICS)}"
            )
    return None


def second_objective_metric_is_reported(study: StudyConfig) -> str | None:
    return objective_metric_is_reported(study, second=True)


def quality_objective_is_computed(study: StudyConfig, second: bool = False) -> str | None:
    # a quality metric is computed only when trial.metrics lists it (it costs an evaluation)
    for where, spec in _objectives(study, second):
        if spec.metric in quality_metrics() and spec.metric not in study.trial.metrics and "metrics" not in study.search:
            return (
                f"{where}.metric={spec.metric!r} is computed only when trial.metrics lists it "
                f"(trial.metrics: {list(study.trial.metrics)}); add it there"
            )
    return None


def quality_objective_has_its_direction(study: StudyConfig, second: bool = False) -> str | None:
    for where, spec in _objectives(study, second):
        expected = metric_direction(spec.metric)
        if spec.metric in quality_metrics() and spec.direction != expected:
            return (
                f"{where}.direction={spec.direction!r}, but {spec.metric} is better {expected[:3]}imised "
                f"({'lower' if expected == 'minimize' else 'higher'} is better): direction: {expected}, or leave it out"
            )
    return None


def second_quality_objective_is_computed(study: StudyConfig) -> str | None:
    return quality_objective_is_computed(study, second=True)


def second_quality_objective_has_its_direction(study: StudyConfig) -> str | None:
    return quality_objective_has_its_direction(study, second=True)


STUDY_RULES: dict[Callable[[StudyConfig], str | None], tuple[str, ...]] = {
    pruning_needs_one_objective: ("pruner", "name"),
    objective_metric_is_reported: ("objective", "metric"),
    second_objective_metric_is_reported: ("objective", "second", "metric"),
    quality_objective_is_computed: ("objective", "metric"),
    quality_objective_has_its_direction: ("objective", "direction"),
    second_quality_objective_is_computed: ("objective", "second", "metric"),
    second_quality_objective_has_its_direction: ("objective", "second", "direction"),
}


def check_study_fields(study: StudyConfig) -> None:
    """Raises RuleBroken with the first rule across the study's blocks that it breaks."""
    for rule, field in STUDY_RULES.items():
        problem = rule(study)
        if problem:
            raise RuleBroken(field, problem)


def check_study(study: StudyConfig, path: object) -> None:
    """The rules that need the parsed search space: the sampler's and the pack's.
    Raises ConfigError naming the file and the field."""
    ranged = [n for n, p in study.search.items() if p.kind != "choice"]
    if study.sampler.name == "grid":
        if ranged:
            raise ConfigError(
                f"{path}: sampler.name: the grid sampler needs value lists; "
                f"search.{ranged[0]} is a range"
            )
        conditional = [n for n, p in study.search.items() if p.when]
        if conditional:
            raise ConfigError(
                f"{path}: sampler.name: the grid sampler crosses every axis, so it cannot skip "
                f"a conditional one; search.{conditional[0]} has `when`"
            )
    if study.sampler.name == "cmaes" and not ranged:
        raise ConfigError(f"{path}: sampler.name: cmaes needs at least one numeric range in search")
    if study.budget.max_concurrent * study.budget.cpus_per_trial <= 0:
        raise ConfigError(f"{path}: budget: no CPU for any trial")
    check_output_ranges(study, path)
    incomparable = incomparable_objective(study)
    if incomparable:
        raise ConfigError(f"{path}: search.{incomparable[0]}: {incomparable[1]}")
    if study.budget.pack_size > 1:
        check_pack_study(study, path)


# ---------------------------------------------------------------------------- output ranges

# The open interval each bounded generator output covers (engine/evaluate.py reads these).
OUTPUT_RANGES: dict[str, tuple[float, float]] = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}
# The share of points a generator may leave out at each end of a coordinate's range: noise
# tails of a few points beyond a bound do not make a set unlearnable (the circle's Gaussian
# noise reaches 1.03 in some seeds while 99.9% of it lies within 0.96).
RANGE_TAIL = 0.001
# [low, high] holding all but RANGE_TAIL of a built-in 2D set's points at each end of either
# coordinate: the quantiles of the distributions engine/data.py samples, each symmetric about
# 0 (tests/engine/test_engine.py checks them against generated points). line: t ~ U[-1, 1] and
# t^2 sin t / sin 1 + N(0, 0.02^2), whose noise carries the curve's ends (exactly +-1) to
# 1.006; circle: 0.7 (cos, sin) + N(0, 0.08^2); ring8: 8 modes at radius 1, std 0.02
# (1 + 0.02 z with P(Z > z) = 8 RANGE_TAIL); grid25: modes at -1 .. 1, std 0.02 (P = 5 RANGE_TAIL).
TOY_EXTENTS: dict[str, tuple[float, float]] = {
    "line": (-1.006, 1.006), "circle": (-0.880, 0.880), "ring8": (-1.048, 1.048), "grid25": (-1.052, 1.052),
}


def output_range_problem(dataset: str, output: str, dataset_field: str = "dataset") -> str | None:
    """Why generator output `output` cannot cover built-in 2D set `dataset`, or None (an image
    set, a file of points: the engine checks those, or an unbounded output)."""
    bounds, extent = OUTPUT_RANGES.get(output), TOY_EXTENTS.get(dataset)
    if bounds is None or extent is None or bounds[0] < extent[0] and extent[1] < bounds[1]:
        return None
    return (
        f"g_output={output!r} covers ({bounds[0]:g}, {bounds[1]:g}), but {dataset_field}={dataset!r} spans "
        f"[{extent[0]:g}, {extent[1]:g}] ({1 - 2 * RANGE_TAIL:.1%} of its points; 2D points keep their "
        "coordinates): use g_output: identity, the default for 2D sets"
    )


def check_output_ranges(study: StudyConfig, path: object) -> None:
    """No trial of the study pairs a bounded g_output with a built-in 2D set it cannot cover."""
    where = {name: "search" if name in study.search else "trial" for name in ("g_output", "dataset")}
    for combo in reachable(study, ("dataset", "g_output")):
        problem = output_range_problem(str(combo["dataset"]), str(combo["g_output"]), f"{where['dataset']}.dataset")
        if problem:
            raise ConfigError(f"{path}: {where['g_output']}.g_output: {problem}")


# ---------------------------------------------------------------------------- packs

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
    "feature_layer",  # the features a pack's feature-matching members compare
    "minibatch_discrimination", "minibatch_dim", "g_norm",  # the networks' layers
)

def compose_reals(trial: TrialConfig) -> int | None:
    """The real samples of a compose-mode minibatch, round(alpha m): a shape members share."""
    return round(trial.alpha * trial.batch_size) if trial.alpha_mode == "compose" else None


def pack_key(trial: TrialConfig) -> tuple[tuple[str, object], ...]:
    """(field, value) pairs that trials must share to train in one pack: since the one
    iteration (gansweep.engine) every loss, alpha mode, optimiser, architecture and dropout
    packs, and what members share is the shapes."""
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

