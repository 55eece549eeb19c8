"""Reading a study file: YAML (bounded in time and memory), --set overrides, validation, and
errors that name the file, the line, the field and the value (`file:line: field: message,
got value`), raised as ConfigError (the CLI prints it and exits 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gansweep.config import datafile, plugins
from gansweep.config.rules import RuleBroken, check_study
from gansweep.config.schema import (
    TRIAL_FIELDS, Choice, FloatRange, IntRange, SearchParam, StudyConfig, TrialConfig,
)
from gansweep.config.conditions import ConditionCycle, search_order
from gansweep.config.space import check_condition
from gansweep.config.yaml_keys import first_duplicate_key
from gansweep.errors import ConfigError

def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read, override and validate a study file. Raises ConfigError naming file, field, value."""
    path = Path(path)
    text = _read_text(path)
    raw, line_of = _parse_yaml(text, path)
    # A data file named in the study is found beside it; one given with --set, from where
    # the command runs (a path already absolute stays as it is).
    raw = plugins.resolve(resolve_datasets(raw, path.parent.resolve()), path.parent.resolve())
    for override in overrides:
        raw = apply_override(raw, override, path)
    raw = plugins.resolve(resolve_datasets(raw, Path.cwd()), Path.cwd())
    check_data_files(raw, path, line_of)
    # Before the schema: a plugin's names are valid values of trial, search and objective.
    plugins.load(raw.get("plugins") or [], f"{_at(path, line_of, ('plugins',))}: plugins")
    return _validate(raw, path, line_of)


def resolve_datasets(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """trial.dataset and the values search.dataset chooses from, each a built-in name as it
    is or a path made absolute against `folder` (config.datafile.resolve)."""
    raw = _deep_copy(raw)
    trial, search = raw.get("trial"), raw.get("search")
    if isinstance(trial, dict) and isinstance(trial.get("dataset"), str):
        trial["dataset"] = datafile.resolve(trial["dataset"], folder)
    choice = search.get("dataset") if isinstance(search, dict) else None
    values = choice.get("values") if isinstance(choice, dict) else choice
    if isinstance(values, list):
        values[:] = [datafile.resolve(v, folder) if isinstance(v, str) else v for v in values]
    return raw


def check_data_files(raw: dict[str, Any], path: Path, line_of: dict[tuple, int]) -> None:
    """Each data file the study names is read and checked before anything else (and before
    any output is written): ConfigError naming the study's line, the field, the data file
    and what is wrong with it."""
    trial, search = raw.get("trial"), raw.get("search")
    named: list[tuple[tuple, Any]] = []
    if isinstance(trial, dict) and "dataset" in trial:
        named.append((("trial", "dataset"), trial["dataset"]))
    choice = search.get("dataset") if isinstance(search, dict) else None
    values = choice.get("values") if isinstance(choice, dict) else choice
    for index, value in enumerate(values if isinstance(values, list) else []):
        named.append((("search", "dataset", index), value))
    for loc, value in named:
        if not isinstance(value, str) or not value or datafile.is_built_in(value):
            continue  # the schema names what is wrong with a non-string
        try:
            datafile.inspect(value)
        except datafile.DataFileProblem as err:
            field = ".".join(str(part) for part in loc)
            missing = "" if Path(value).exists() else (
                f" (nor is it a built-in data set: {', '.join(datafile.BUILT_IN)})"
            )
            raise ConfigError(f"{_at(path, line_of, loc)}: {field}: {err}{missing}") from None


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
            _refuse_duplicate_keys(node, where, lines)
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


def _refuse_duplicate_keys(root: yaml.Node, where: str, lines: bool) -> None:
    duplicate = first_duplicate_key(root)
    if duplicate is not None:
        at = f"{where}:{duplicate.line}" if lines else where
        raise ConfigError(
            f"{at}: invalid YAML: duplicate key {duplicate.dotted} (first at line "
            f"{duplicate.first_line}); give each key once"
        )


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
    for name in search:
        try:
            check_condition(name, search, study.trial)
        except ValueError as err:
            where = _at(path, line_of, ("search", name, "when"))
            raise ConfigError(f"{where}: search.{name}.when: {err}") from None
    try:
        search_order(search)
    except ConditionCycle as err:
        first = err.cycle[0]
        raise ConfigError(
            f"{_at(path, line_of, ('search', first, 'when'))}: search.{first}.when: conditions "
            f"form a cycle ({err}): none of these fields can be decided first"
        ) from None
    study = study.model_copy(update={"search": search})
    check_study(study, path)
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
        broken = (item.get("ctx") or {}).get("error")
        if isinstance(broken, RuleBroken):  # a rule across fields: at the field it names
            loc = (*loc, *broken.field)
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
