"""The study file's schema: frozen pydantic models that reject unknown keys.

A study (StudyConfig) has a `trial` block (TrialConfig: the fixed values of one GAN training
run) and a `search` block (the parameters a sweep varies: Choice, FloatRange, IntRange).
Field-level constraints live here; the rules across fields in config.rules; reading the file
and naming file, line, field and value in an error in config.load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, field_serializer, ConfigDict, Field, field_validator, model_validator

from gansweep.config.names import (
    TOY_DATASETS, Activation, DatasetName, FeatureKind, GeneratorOutput, GNorm, metric_direction, quality_metrics,
)
from gansweep.config.datafile import data_kind, is_built_in
from gansweep.config.rules import check_study_fields, check_trial
from gansweep.config.storage_url import storage_url_problem
from gansweep.config.names import ARCHITECTURES, LOSSES, PRUNERS, REGULARISERS, SAMPLERS, SCHEDULERS
from gansweep.extend import Registry

Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
def _quality_metric(name: str) -> str:
    if name not in quality_metrics():
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(quality_metrics())}")
    return name


QualityMetric = Annotated[str, AfterValidator(_quality_metric)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Unit = Annotated[float, Field(ge=0.0, lt=1.0)]
MINIBATCH_DIM = 5  # C of minibatch discrimination when minibatch_dim is left out (Salimans et al.'s code)


# The study's name names its folder (runs/<name>), its Optuna study and MLflow experiment,
# and prefixes Tune's trial folders: a filesystem allows 255 bytes per folder name, and Tune
# adds its own suffixes, so names stay well short of that.
MAX_NAME_LENGTH = 100
NAME_CHARACTERS = re.compile(r"[A-Za-z0-9_.-]+")


def folder_name(name: str) -> str:
    """`name` when it can be a folder of its own: letters, digits, _ . - only, not only dots
    (`.` and `..` name the folder itself or its parent), at most MAX_NAME_LENGTH characters."""
    if not NAME_CHARACTERS.fullmatch(name):
        raise ValueError(f"a study name takes letters, digits, '_', '.' and '-' only, got {name!r}")
    if set(name) == {"."}:
        raise ValueError(f"a study name names its own folder, so it cannot be only dots, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"a study name names its folder, so at most {MAX_NAME_LENGTH} characters, got "
            f"{len(name)}: {name[:20]!r}..."
        )
    return name


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def registered(registry: Registry, name: str) -> str:
    """`name` when the registry (built-ins and the study's plugins) has it; else the error
    lists the valid names."""
    if name not in registry:
        raise ValueError(registry.unknown(name))
    return name


def name_in(registry: Registry) -> Any:
    """A field whose value is a name `registry` holds when the study is validated."""
    return Annotated[str, AfterValidator(lambda name: registered(registry, name))]


LossName = name_in(LOSSES)
ArchitectureName = name_in(ARCHITECTURES)
SamplerName = name_in(SAMPLERS)
PrunerName = name_in(PRUNERS)
SchedulerName = name_in(SCHEDULERS)


class TrialConfig(Frozen):
    """Everything one GAN training run needs, whatever runs it (`gansweep train`, an Optuna
    trial's Tune unit, a member of a pack). Flat on purpose: each field is a searchable
    parameter and an MLflow param under the same name."""

    # data
    # a built-in name, or a path to the researcher's own data (config.datafile: .npy, .csv,
    # .npz, a folder of images), made absolute against the study file's folder on loading
    dataset: DatasetName | Annotated[str, Field(min_length=1)] = "circle"
    data_dir: str | None = None
    n_train: PositiveInt | None = None  # cap on training examples (None: the protocol's size)
    # architecture
    architecture: ArchitectureName = "mlp"  # extend.ARCHITECTURES: mlp maxout dcgan, and the plugins'
    g_hidden: tuple[PositiveInt, ...] = (128, 128)
    d_hidden: tuple[PositiveInt, ...] = (128, 128)
    g_activation: Activation = "relu"
    d_activation: Activation = "leaky_relu"
    d_dropout: Unit = 0.0
    g_output: GeneratorOutput = "auto"  # auto: identity on 2D sets, sigmoid for maxout, else tanh
    dcgan_width: PositiveInt = 64  # channels of the widest-resolution DCGAN layer
    maxout_units: PositiveInt = 240
    maxout_pieces: PositiveInt = 5
    noise_dim: PositiveInt = 100
    noise: Literal["normal", "uniform"] = "normal"
    # the game
    loss: LossName = "non_saturating"  # extend.LOSSES: the built-ins and the plugins'
    alpha: Probability = 0.5
    alpha_mode: Literal["compose", "weight", "bernoulli"] = "compose"
    label_smoothing: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # real target s; 1 = none
    gp_weight: PositiveFloat = 10.0  # wasserstein_gp only
    k: PositiveInt = 1
    # loss feature_matching: which of D's hidden layers G matches, indexed as a Python list
    # (0 the first, -1 the last); None: the last hidden layer (Salimans et al. 2016)
    feature_layer: int | None = None
    # lambda of historical averaging (Salimans et al. 2016): lambda || theta - mean of theta's
    # history ||^2 added to each player's cost; 0: off
    historical_averaging: Annotated[float, Field(ge=0.0)] = 0.0
    # minibatch discrimination (Salimans et al. 2016): B kernels of width C (minibatch_dim)
    # whose features of each sample's closeness to the rest of D's minibatch join D's last
    # hidden layer before its head (engine/layers.py); 0: off. C is read only when B > 0, so
    # that a study may fix C and search B over 0 and more.
    minibatch_discrimination: Annotated[int, Field(ge=0)] = 0
    minibatch_dim: PositiveInt = MINIBATCH_DIM
    # a plugin's regularisers (gansweep.extend.regulariser) and their weights, a mapping in
    # the study ({name: weight}): each adds weight x its value to its player's cost; 0 or
    # absent: off. Kept as sorted (name, weight) pairs, so that a trial stays hashable.
    regularisers: tuple[tuple[str, Annotated[float, Field(ge=0.0)]], ...] = ()
    # normalisation in G's hidden layers: none, batch norm, or virtual batch norm (each
    # example normalised with a reference batch of noise drawn once per trial, plus itself)
    g_norm: GNorm = "none"
    # optimisation
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_d: PositiveFloat = 2e-4
    lr_g: PositiveFloat | None = None  # None: same as lr_d
    adam_beta1: Unit = 0.5
    adam_beta2: Unit = 0.999
    momentum: Unit = 0.5  # sgd only
    momentum_final: Unit | None = None  # sgd only: ramped linearly to this over the epochs
    batch_size: Annotated[int, Field(ge=2)] = 64
    epochs: PositiveInt = 10
    steps_per_epoch: PositiveInt | None = None  # generator steps; None: n_train // batch_size
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Compile each training iteration (k D steps and the G step: forward, backward, optimiser)
    # into one torch.compile graph (gansweep/engine/executions.py). Off by default: it pays
    # only once a trial is long enough to repay its compile time (inductor's disk cache and
    # reused actors share it across a sweep's trials); figures in benchmarks/README.md.
    compile: bool = False
    # evaluation (Parzen protocol; full Goodfellow sizes by default)
    eval_every: PositiveInt = 1  # epochs; the last epoch is always evaluated
    eval_samples: PositiveInt = 10_000
    eval_valid: PositiveInt = 1_000
    eval_test: PositiveInt | None = None  # None: the whole test split
    parzen_sigmas: tuple[PositiveFloat, ...] | None = None  # None: the dataset's default grid
    sample_epochs: tuple[PositiveInt, ...] | None = None  # None: every evaluation epoch
    # Sample-quality metrics computed at each evaluation beside Parzen (engine/quality.py):
    # fid, kid, precision, recall, c2st_accuracy, d_auc. None by default: today's cost.
    metrics: tuple[QualityMetric, ...] = ()  # extend.METRICS but parzen_ll (always computed), plugins' too
    # Their feature space on images: domain (a CNN gansweep trains on the set's own labels,
    # offline) or inception (Inception-v3 weights on disk). 2D sets use their points.
    features: FeatureKind = "domain"
    # The equilibrium verdict of each evaluation (settled | blind | unsettled; n/a for a loss
    # without equilibrium values, config/theory.py): C2ST in `features` and D's AUC and logit
    # spread are computed for it whatever `metrics` lists. false: none, and "no verdict".
    equilibrium_check: bool = True

    @property
    def effective_lr_g(self) -> float:
        return self.lr_d if self.lr_g is None else self.lr_g

    @property
    def is_toy(self) -> bool:
        """Points rather than images: a built-in 2D set or a file of points."""
        return self.dataset in TOY_DATASETS or (
            not is_built_in(self.dataset) and data_kind(self.dataset) == "points"
        )

    @property
    def generator_output(self) -> str:
        if self.g_output != "auto":
            return self.g_output
        if self.is_toy:
            return "identity"
        return "sigmoid" if self.architecture == "maxout" else "tanh"

    @field_validator("regularisers", mode="before")
    @classmethod
    def _weights_by_name(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name in value:
                registered(REGULARISERS, name)
            return tuple(sorted(value.items()))
        return value

    @field_validator("regularisers")
    @classmethod
    def _registered_regularisers(cls, value: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
        for name, _ in value:
            registered(REGULARISERS, name)
        return tuple(sorted(value))

    @field_serializer("regularisers")
    def _as_mapping(self, value: tuple[tuple[str, float], ...]) -> dict[str, float]:
        return dict(value)

    @field_validator("metrics")
    @classmethod
    def _each_metric_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({m for m in value if value.count(m) > 1})
        if repeated:
            raise ValueError(f"each metric once, got {', '.join(repeated)} more than once")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> TrialConfig:
        check_trial(self)  # config.rules: the rules across a trial's fields
        return self


# ---------------------------------------------------------------------------- search space

Scalar = bool | int | float | str


class Choice(Frozen):
    kind: Literal["choice"] = "choice"
    values: tuple[Any, ...]
    when: dict[str, Scalar] | None = None


class FloatRange(Frozen):
    kind: Literal["uniform", "log_uniform"]
    low: float
    high: float
    step: PositiveFloat | None = None
    when: dict[str, Scalar] | None = None


class IntRange(Frozen):
    kind: Literal["int"] = "int"
    low: int
    high: int
    step: PositiveInt = 1
    log: bool = False
    when: dict[str, Scalar] | None = None


SearchParam = Choice | FloatRange | IntRange


class SamplerConfig(Frozen):
    name: SamplerName = "tpe"
    seed: int | None = 0


class PrunerConfig(Frozen):
    name: PrunerName = "none"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0  # never prune before this many epochs
    startup_trials: Annotated[int, Field(ge=0)] = 2  # median/percentile: trials before pruning
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)] = 25.0
    min_resource: PositiveInt = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    patience: PositiveInt | None = None  # wrap in PatientPruner: tolerate this many bad reports
    # wilcoxon: prune when a signed-rank test of the trial's evaluations against the best
    # trial's at the same epochs gives a p-value below this (service/search.py)
    p_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1


class SchedulerConfig(Frozen):
    name: SchedulerName = "none"


class BudgetConfig(Frozen):
    trials: PositiveInt | None = None  # None: the grid's size (grid sampler) or 10
    max_concurrent: PositiveInt = 2
    cpus_per_trial: PositiveFloat = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0.0)] = 0.0
    max_failures: Annotated[int, Field(ge=0)] = 1  # retries of a trial whose worker died
    # Trials trained together in one vectorised step (the engine's packed execution) on one
    # worker's cpus: for small networks, which leave a core mostly idle. 1: a worker per trial.
    pack_size: PositiveInt = 1
    # Seeds each configuration trains with (seed, seed + 1, ...): Optuna sees, and the results
    # rank, their mean (service/replicates.py). 1: one seed, as before replicates existed.
    replicates: PositiveInt = 1

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"a trial takes a fraction of one GPU or whole GPUs, got {value}")
        return value


class ObjectiveSpec(Frozen):
    metric: str = "parzen_ll"
    direction: Literal["maximize", "minimize"] = "maximize"  # unset: the metric's (extend.METRICS)

    @model_validator(mode="before")
    @classmethod
    def _direction_of_the_metric(cls, data: Any) -> Any:
        # `objective: {metric: fid}` minimises; config.rules refuses the other direction
        direction = metric_direction(data.get("metric")) if isinstance(data, dict) else None
        if direction is not None and "direction" not in data:
            return {**data, "direction": direction}
        return data


class ObjectiveConfig(ObjectiveSpec):
    second: ObjectiveSpec | None = None  # a second objective makes the study multi-objective
    # last: the final evaluation's value; best: the best evaluation's (by `direction`), whose
    # generator is kept and logged to MLflow as a model with the epoch it came from.
    select: Literal["last", "best"] = "last"


class TrackingConfig(Frozen):
    experiment: str | None = None  # None: the study's name
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or a local store in output/


class StudyConfig(Frozen):
    """A study file, validated (config.load.load_study): what to train and how to search.
    Not the Optuna study, the service's record of a sweep's trials (its name is `name`)."""

    name: Annotated[str, AfterValidator(folder_name)]
    description: str = ""
    output: str | None = None  # None: runs/<name>, relative to the working directory
    storage: str | None = None  # Optuna storage URL; None: SQLite in the output folder
    # Python files that register losses, metrics and architectures (gansweep.extend), made
    # absolute against the study file's folder; config.plugins imports them before the rest
    # of the study is validated
    plugins: tuple[str, ...] = ()
    trial: TrialConfig = TrialConfig()
    search: dict[str, SearchParam] = {}
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    budget: BudgetConfig = BudgetConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("output")
    @classmethod
    def _inside_working_directory(cls, value: str | None) -> str | None:
        # A study file is shared and re-run by others: it may only name a folder below the
        # working directory. Writing elsewhere is the caller's explicit choice (--output).
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
            raise ValueError(
                f"output must be a relative path below the working directory (use --output "
                f"for another place), got {value!r}"
            )
        return value

    @field_validator("storage")
    @classmethod
    def _a_database_url(cls, value: str | None) -> str | None:
        problem = storage_url_problem(value) if value else None  # "" means the default, as None
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> StudyConfig:
        check_study_fields(self)  # config.rules: the rules across a study's blocks
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


TRIAL_FIELDS = tuple(TrialConfig.model_fields)
