"""Study files: pydantic models, loading, --set overrides and error messages.

A study file has a `trial` block (fixed values of one GAN trial) and a `search` block
(the parameters a sweep varies). Every config object is frozen and rejects unknown keys.
Errors name the file, the line where known, the field path and the bad value.
"""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gansweep.errors import ConfigError

# The names of variants live in gansweep.names (shared with the pack rules); re-exported.
from gansweep.names import (  # noqa: F401
    IMAGE_DATASETS, SMOOTHABLE_LOSSES, TOY_DATASETS, Activation, ArchitectureName, DatasetName,
    GeneratorOutput, ImageDataset, LossName, ToyDataset,
)
from gansweep.packrules import check_pack_study

Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Unit = Annotated[float, Field(ge=0.0, lt=1.0)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrialConfig(Frozen):
    """Everything one GAN trial needs. Flat on purpose: each field is a searchable parameter
    and an MLflow param under the same name."""

    # data
    dataset: DatasetName = "circle"
    data_dir: str | None = None
    n_train: PositiveInt | None = None  # cap on training examples (None: the protocol's size)
    # architecture
    architecture: ArchitectureName = "mlp"
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
    loss: LossName = "non_saturating"
    alpha: Probability = 0.5
    alpha_mode: Literal["compose", "weight", "bernoulli"] = "compose"
    label_smoothing: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0  # real target s; 1 = none
    gp_weight: PositiveFloat = 10.0  # wasserstein_gp only
    k: PositiveInt = 1
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
    # into one torch.compile graph (gansweep/compiled.py). Off by default: it pays only once a
    # trial is long enough to repay its compile time, 13 to 30 s per process on a cold cache
    # (inductor's disk cache and reused actors share it across a sweep's trials). Measured on 2
    # CPU cores (benchmarks/train_bench.py --compile): 1.5x to 2x the eager fast paths on a 2D
    # toy, 1.04x to 1.3x on the Fashion-MNIST MLP, none on DCGAN; untested on GPUs.
    compile: bool = False
    # evaluation (Parzen protocol; full Goodfellow sizes by default)
    eval_every: PositiveInt = 1  # epochs; the last epoch is always evaluated
    eval_samples: PositiveInt = 10_000
    eval_valid: PositiveInt = 1_000
    eval_test: PositiveInt | None = None  # None: the whole test split
    parzen_sigmas: tuple[PositiveFloat, ...] | None = None  # None: the dataset's default grid
    sample_epochs: tuple[PositiveInt, ...] | None = None  # None: every evaluation epoch

    @property
    def effective_lr_g(self) -> float:
        return self.lr_d if self.lr_g is None else self.lr_g

    @property
    def is_toy(self) -> bool:
        return self.dataset in TOY_DATASETS

    @property
    def generator_output(self) -> str:
        if self.g_output != "auto":
            return self.g_output
        if self.is_toy:
            return "identity"
        return "sigmoid" if self.architecture == "maxout" else "tanh"

    @model_validator(mode="after")
    def _check_combinations(self) -> TrialConfig:
        if self.alpha_mode == "compose":
            n_real = round(self.alpha * self.batch_size)
            if not 1 <= n_real <= self.batch_size - 1:
                raise ValueError(
                    f"alpha={self.alpha} with batch_size={self.batch_size} puts {n_real} real "
                    f"samples in a compose-mode minibatch; need 1 to {self.batch_size - 1}"
                )
        if self.architecture == "dcgan" and self.is_toy:
            raise ValueError(
                f"architecture 'dcgan' needs an image dataset, got dataset={self.dataset!r}"
            )
        if self.label_smoothing != 1.0 and self.loss not in SMOOTHABLE_LOSSES:
            raise ValueError(
                f"label_smoothing applies to {', '.join(SMOOTHABLE_LOSSES)}; "
                f"got label_smoothing={self.label_smoothing} with loss={self.loss!r}"
            )
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
SAMPLERS = ("grid", "random", "tpe", "cmaes", "gp", "nsga2")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")


class SamplerConfig(Frozen):
    name: Literal["grid", "random", "tpe", "cmaes", "gp", "nsga2"] = "tpe"
    seed: int | None = 0


class PrunerConfig(Frozen):
    name: Literal["none", "median", "percentile", "successive_halving", "hyperband"] = "none"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0  # never prune before this many epochs
    startup_trials: Annotated[int, Field(ge=0)] = 2  # median/percentile: trials before pruning
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)] = 25.0
    min_resource: PositiveInt = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    patience: PositiveInt | None = None  # wrap in PatientPruner: tolerate this many bad reports


class BudgetConfig(Frozen):
    trials: PositiveInt | None = None  # None: the grid's size (grid sampler) or 10
    max_concurrent: PositiveInt = 2
    cpus_per_trial: PositiveFloat = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0.0)] = 0.0
    max_failures: Annotated[int, Field(ge=0)] = 1  # retries of a trial whose worker died
    # Trials trained together in one vectorised step (gansweep/pack.py) on one worker's cpus:
    # for the 2D toys, whose tiny networks leave a core mostly idle. 1: a worker per trial.
    pack_size: PositiveInt = 1

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"a trial takes a fraction of one GPU or whole GPUs, got {value}")
        return value


class ObjectiveSpec(Frozen):
    metric: str = "parzen_ll"
    direction: Literal["maximize", "minimize"] = "maximize"


class ObjectiveConfig(ObjectiveSpec):
    second: ObjectiveSpec | None = None  # a second objective makes the study multi-objective


class TrackingConfig(Frozen):
    experiment: str | None = None  # None: the study's name
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or a local store in output/


class StudyConfig(Frozen):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    output: str | None = None  # None: runs/<name>, relative to the working directory
    storage: str | None = None  # Optuna storage URL; None: SQLite in the output folder
    trial: TrialConfig = TrialConfig()
    search: dict[str, SearchParam] = {}
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
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

    @model_validator(mode="after")
    def _pruning_needs_one_objective(self) -> StudyConfig:
        if self.objective.second is not None and (
            self.pruner.name != "none" or self.pruner.patience is not None
        ):
            raise ValueError(
                f"pruner {self.pruner.name!r}: Optuna cannot prune a multi-objective study "
                "(objective.second is set); use pruner: {name: none}"
            )
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# ---------------------------------------------------------------------------- loading

TRIAL_FIELDS = tuple(TrialConfig.model_fields)


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read, override and validate a study file. Raises ConfigError naming file, field, value."""
    path = Path(path)
    text = _read_text(path)
    raw, line_of = _parse_yaml(text, path)
    for override in overrides:
        raw = apply_override(raw, override, path)
    return _validate(raw, path, line_of)


def trial_from_study(study: StudyConfig) -> TrialConfig:
    """The single trial `gansweep train` runs: fixed values, then the first value of each
    searched parameter (the middle of a range, geometric for log ranges) whose condition holds."""
    return TrialConfig.model_validate(resolve_values(study, lambda name, param: first_value(param)))


def resolve_values(study: StudyConfig, pick: Callable[[str, SearchParam], Any]) -> dict[str, Any]:
    """The one resolver of a study's search space, for `gansweep train` and `validate`
    (first values) and for the sweep (Optuna's suggestions, define-by-run): the fixed trial
    values, then each searched field in `search_order`, valued by pick(name, param) when its
    `when` holds on the values decided before it, else left at its fixed value."""
    values = study.trial.model_dump()
    for name in search_order(study.search):
        param = study.search[name]
        if param.when and any(values.get(field) != value for field, value in param.when.items()):
            continue
        values[name] = pick(name, param)
    return values


def search_order(search: dict[str, SearchParam]) -> list[str]:
    """The searched fields in the order their values are decided: a field after every searched
    field its `when` names, whatever order the file lists them in. Otherwise the file's order,
    unconditional fields first (so that Optuna's define-by-run asks as it always has)."""
    depth = _condition_depths(search)
    index = {name: i for i, name in enumerate(search)}
    return sorted(search, key=lambda name: (depth[name], index[name]))


class ConditionCycle(ValueError):
    """Searched fields whose `when` conditions depend on each other in a loop."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__(" -> ".join(cycle))


def _condition_depths(search: dict[str, SearchParam]) -> dict[str, int]:
    """0 for a field without `when`, else 1 + the deepest searched field it names. Raises
    ConditionCycle. (Recursive: a chain is at most as long as TrialConfig has fields.)"""
    depth: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> int:
        if name in chain:
            raise ConditionCycle(chain[chain.index(name):] + [name])
        if name not in depth:
            when = search[name].when
            deps = [visit(other, [*chain, name]) for other in (when or {}) if other in search]
            depth[name] = 1 + max(deps, default=0) if when else 0
        return depth[name]

    for name in search:
        visit(name, [])
    return depth


def first_value(param: SearchParam) -> Any:
    if isinstance(param, Choice):
        return param.values[0]
    if isinstance(param, IntRange):
        return (param.low + param.high) // 2
    if param.kind == "log_uniform":
        return math.sqrt(param.low * param.high)
    return (param.low + param.high) / 2


def apply_override(raw: dict[str, Any], override: str, path: Path) -> dict[str, Any]:
    """Apply one `key=value` to the raw study dict. A bare trial field (`alpha=0.3`) fixes
    that field and drops it from the search; a dotted key (`budget.trials=4`) sets any field.
    The value is parsed as YAML, so `k=2` is an int and `g_hidden=[64,64]` a list."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{path}: --set {override!r}: expected KEY=VALUE")
    value = load_yaml(text, f"{path}: --set {key}", lines=False)[0] if text.strip() else None
    raw = _deep_copy(raw)
    if "." not in key:
        if key not in TRIAL_FIELDS:
            raise ConfigError(
                f"{path}: --set {key}={text}: unknown trial field {key!r}; use a dotted path "
                f"(e.g. budget.trials=4) for study fields"
            )
        trial = raw.get("trial") or {}
        if not isinstance(trial, dict):
            raise ConfigError(f"{path}: trial: expected a mapping, got {trial!r}")
        raw["trial"] = {**trial, key: value}
        if isinstance(raw.get("search"), dict):
            raw["search"].pop(key, None)
        return raw
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: --set {key}: {part!r} is not a mapping")
        node = child
    node[leaf] = value
    return raw


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read study file: {err}") from None


# A study file is a few hundred YAML nodes. Anchors and aliases may repeat a value, but not
# multiply a 1 kB file into billions of nodes ("billion laughs": nine lists of nine aliases
# of the list before, eight deep): past this many nodes, counted with every alias expanded,
# the file is refused before anything walks or validates the expanded document.
MAX_YAML_NODES = 100_000


def _parse_yaml(text: str, path: Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """safe_load (no object construction) plus a map from key paths to 1-based line numbers."""
    raw, node = load_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping of fields, got {type(raw).__name__}")
    line_of: dict[tuple, int] = {}
    _index_lines(node, (), line_of)
    return raw, line_of


def load_yaml(text: str, where: str, lines: bool = True) -> tuple[Any, yaml.Node | None]:
    """yaml.safe_load's value and its node graph, in bounded time and memory: the graph is
    composed (an alias is a second reference to its anchor's node, nothing is copied), its
    expanded size counted (MAX_YAML_NODES), and only then is the value constructed (Python
    objects shared as the nodes are). Raises ConfigError naming `where` (and the line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, where, lines)
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None and lines else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str, lines: bool) -> None:
    """Count the nodes of `root` with every alias expanded, visiting each distinct node once
    (its size is remembered), so the count costs the file's size, not the expansion's."""
    size: dict[int, int] = {}  # id(node) -> nodes below it, itself included, expanded
    on_path: set[int] = set()  # the nodes whose children are being counted
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted = stack.pop()
        children = _children(node)
        at = f"{where}:{node.start_mark.line + 1}" if lines else where
        if counted:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise ConfigError(
                    f"{at}: invalid YAML: its aliases expand to more "
                    f"than {MAX_YAML_NODES:,} values (anchors of aliases of anchors, the 'billion "
                    "laughs' pattern); a study file needs far fewer: write the values out"
                )
            continue
        if id(node) in size:
            continue
        if id(node) in on_path:
            raise ConfigError(
                f"{at}: invalid YAML: an alias inside its own "
                "anchor (a value that contains itself)"
            )
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _index_lines(node: yaml.Node | None, prefix: tuple, line_of: dict[tuple, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            line_of[key] = key_node.start_mark.line + 1
            _index_lines(value_node, key, line_of)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, index)
            line_of[key] = item.start_mark.line + 1
            _index_lines(item, key, line_of)


def _validate(raw: dict[str, Any], path: Path, line_of: dict[tuple, int]) -> StudyConfig:
    raw = dict(raw)
    search_raw = raw.pop("search", None) or {}
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, path, line_of, ())) from None
    if not isinstance(search_raw, dict):
        raise ConfigError(f"{path}: search: expected a mapping of parameters, got {search_raw!r}")
    search = {
        name: _parse_param(name, spec, study.trial, path, line_of)
        for name, spec in search_raw.items()
    }
    for name, param in search.items():
        _check_condition(name, param, search, study.trial, path, line_of)
    try:
        search_order(search)
    except ConditionCycle as err:
        first = err.cycle[0]
        raise ConfigError(
            f"{_at(path, line_of, ('search', first, 'when'))}: search.{first}.when: conditions "
            f"form a cycle ({err}): none of these fields can be decided first"
        ) from None
    study = study.model_copy(update={"search": search})
    _check_study(study, path)
    return study


def _parse_param(
    name: str, spec: Any, trial: TrialConfig, path: Path, line_of: dict[tuple, int]
) -> SearchParam:
    """A list is a choice, a mapping names its kind ({uniform: [lo, hi]}, {log_uniform: ...},
    {int: [lo, hi]}, {values: [...]}), a scalar fixes the value."""
    where = ("search", name)
    if name not in TRIAL_FIELDS:
        raise ConfigError(
            f"{_at(path, line_of, where)}: search.{name}: unknown trial field {name!r}; "
            f"valid fields: {', '.join(TRIAL_FIELDS)}"
        )
    param = _param_from_spec(name, spec, path, line_of)
    if isinstance(param, Choice):
        if not param.values:
            raise ConfigError(f"{_at(path, line_of, where)}: search.{name}: empty list of values")
        for index, value in enumerate(param.values):
            _check_trial_value(trial, name, value, path, line_of, (*where, index))
        if len({repr(v) for v in param.values}) != len(param.values):
            raise ConfigError(
                f"{_at(path, line_of, where)}: search.{name}: repeated values {list(param.values)}"
            )
    else:
        if param.low >= param.high:
            raise ConfigError(
                f"{_at(path, line_of, where)}: search.{name}: low must be below high, "
                f"got low={param.low}, high={param.high}"
            )
        is_log = param.kind == "log_uniform" or (isinstance(param, IntRange) and param.log)
        if is_log and param.low <= 0:
            raise ConfigError(
                f"{_at(path, line_of, where)}: search.{name}: a log range needs low > 0, "
                f"got low={param.low}"
            )
        for end in (param.low, param.high):
            _check_trial_value(trial, name, end, path, line_of, where)
    return param


def _param_from_spec(name: str, spec: Any, path: Path, line_of: dict[tuple, int]) -> SearchParam:
    where = ("search", name)
    if isinstance(spec, list):
        return Choice(values=tuple(spec))
    if not isinstance(spec, dict):
        return Choice(values=(spec,))
    spec = dict(spec)
    when = spec.pop("when", None)
    kinds = [k for k in ("values", "uniform", "log_uniform", "int") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"{_at(path, line_of, where)}: search.{name}: give exactly one of values, uniform, "
            f"log_uniform, int (plus optional step, log, when); got keys {sorted(spec) or 'none'}"
        )
    kind = kinds[0]
    bounds = spec.pop(kind)
    try:
        if kind == "values":
            if not isinstance(bounds, list):
                raise ValueError(f"values must be a list, got {bounds!r}")
            return Choice(values=tuple(bounds), when=when, **spec)
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise ValueError(f"{kind} takes [low, high], got {bounds!r}")
        low, high = bounds
        if kind == "int":
            return IntRange(low=low, high=high, when=when, **spec)
        return FloatRange(kind=kind, low=low, high=high, when=when, **spec)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, path, line_of, where)) from None
    except ValueError as err:
        raise ConfigError(f"{_at(path, line_of, where)}: search.{name}: {err}") from None


def _check_condition(
    name: str,
    param: SearchParam,
    search: dict[str, SearchParam],
    trial: TrialConfig,
    path: Path,
    line_of: dict[tuple, int],
) -> None:
    where = f"{_at(path, line_of, ('search', name, 'when'))}: search.{name}.when"
    for other, value in (param.when or {}).items():
        if other not in TRIAL_FIELDS:
            raise ConfigError(
                f"{where}: condition on unknown field {other!r}; "
                f"valid fields: {', '.join(TRIAL_FIELDS)}"
            )
        if other == name:
            raise ConfigError(f"{where}: condition on {name} itself, got {other}={value!r}")
        if not _can_hold(search.get(other), getattr(trial, other), value):
            param_other = search.get(other)
            if isinstance(param_other, Choice):
                possible = f"possible: {list(param_other.values)}"
            elif param_other is not None:
                possible = f"possible: from {param_other.low} to {param_other.high}"
            else:
                possible = f"{other} is fixed at {getattr(trial, other)!r}"
            if param_other is not None and param_other.when:
                possible += f", or {getattr(trial, other)!r} when its own condition fails"
            raise ConfigError(f"{where}: {other}={value!r} can never hold ({possible})")


def _can_hold(searched: SearchParam | None, fixed: Any, value: Any) -> bool:
    """Whether a condition `field = value` can hold: the field's fixed value when it is not
    searched (or its own condition fails), else a value its search can give."""
    if searched is None or searched.when:
        if value == fixed:
            return True
        if searched is None:
            return False
    if isinstance(searched, Choice):
        return value in searched.values
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and searched.low <= value <= searched.high


def _check_trial_value(
    trial: TrialConfig, name: str, value: Any, path: Path, line_of: dict[tuple, int], where: tuple
) -> None:
    """A searched value must be valid for its field. Only field-level errors count here:
    cross-field combinations are checked per sampled trial, since other fields vary too."""
    try:
        TrialConfig.model_validate({**trial.model_dump(), name: value})
    except ValidationError as err:
        own = [e for e in err.errors() if e["loc"][:1] == (name,)]
        if own:
            dotted = ".".join(str(p) for p in where[1:])
            raise ConfigError(
                f"{_at(path, line_of, where)}: search.{dotted}: {own[0]['msg']}, got {value!r}"
            ) from None


def _check_study(study: StudyConfig, path: Path) -> None:
    if study.sampler.name == "grid":
        ranged = [n for n, p in study.search.items() if not isinstance(p, Choice)]
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
    if study.sampler.name == "cmaes" and not any(
        not isinstance(p, Choice) for p in study.search.values()
    ):
        raise ConfigError(f"{path}: sampler.name: cmaes needs at least one numeric range in search")
    if study.budget.max_concurrent * study.budget.cpus_per_trial <= 0:
        raise ConfigError(f"{path}: budget: no CPU for any trial")
    if study.budget.pack_size > 1:
        check_pack_study(study, path)


def _at(path: Path, line_of: dict[tuple, int], loc: tuple) -> str:
    """'file:line' for the deepest key path with a known line."""
    for depth in range(len(loc), 0, -1):
        line = line_of.get(tuple(loc[:depth]))
        if line is not None:
            return f"{path}:{line}"
    return str(path)


def _format_errors(err: ValidationError, path: Path, line_of: dict[tuple, int], prefix: tuple) -> str:
    lines = []
    for item in err.errors():
        loc = (*prefix, *(p for p in item["loc"] if not _is_union_tag(p)))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parent = TrialConfig if loc[:1] == ("trial",) else None
            valid = f"; valid fields: {', '.join(parent.model_fields)}" if parent else ""
            lines.append(f"{_at(path, line_of, loc)}: {dotted}: unknown field{valid}")
            continue
        got = "" if item["type"] == "missing" else f", got {item.get('input')!r}"
        if item["type"] == "value_error":
            got = ""  # our own validators already name the values
        lines.append(f"{_at(path, line_of, loc)}: {dotted}: {msg}{got}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in ("Choice", "FloatRange", "IntRange")
