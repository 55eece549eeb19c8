"""The search space: the one resolver of a study's searched fields, and their conditions.

`gansweep train` and `validate` (first values) and the sweep's define-by-run (Optuna's
suggestions) all ask resolve_values, so a conditional field is decided the same way
everywhere: after the fields its `when` names, whatever order the study file lists them in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from gansweep.config.conditions import search_order
from gansweep.config.schema import Choice, IntRange, SearchParam, StudyConfig, TrialConfig


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


# The fields whose value changes the objective's scale: Parzen nats, or a FID, on one data
# set are not comparable with another's. Where a study searches them, the results table, the
# live progress and the report rank and plot per value of these fields, never on one axis.
SCALE_FIELDS: tuple[str, ...] = ("dataset",)


def scale_fields(study: StudyConfig) -> list[str]:
    """The searched fields among SCALE_FIELDS: what a study's rankings are grouped by."""
    return [name for name in SCALE_FIELDS if name in study.search]


def trial_from_study(study: StudyConfig) -> TrialConfig:
    """The single trial `gansweep train` runs: fixed values, then the first value of each
    searched parameter (the middle of a range, geometric for log ranges) whose condition holds."""
    return TrialConfig.model_validate(resolve_values(study, lambda name, param: first_value(param)))


def first_value(param: SearchParam) -> Any:
    if isinstance(param, Choice):
        return param.values[0]
    if isinstance(param, IntRange):
        return (param.low + param.high) // 2
    if param.kind == "log_uniform":
        return math.sqrt(param.low * param.high)
    return (param.low + param.high) / 2


def check_condition(name: str, search: dict[str, SearchParam], trial: TrialConfig) -> None:
    """Raises ValueError when search[name]'s `when` names an unknown field, the field itself,
    or a value its field can never take (config.load adds the file, line and field)."""
    fields = tuple(TrialConfig.model_fields)
    for other, value in (search[name].when or {}).items():
        if other not in fields:
            raise ValueError(
                f"condition on unknown field {other!r}; valid fields: {', '.join(fields)}"
            )
        if other == name:
            raise ValueError(f"condition on {name} itself, got {other}={value!r}")
        searched, fixed = search.get(other), getattr(trial, other)
        if _can_hold(searched, fixed, value):
            continue
        if isinstance(searched, Choice):
            possible = f"possible: {list(searched.values)}"
        elif searched is not None:
            possible = f"possible: from {searched.low} to {searched.high}"
        else:
            possible = f"{other} is fixed at {fixed!r}"
        if searched is not None and searched.when:
            possible += f", or {fixed!r} when its own condition fails"
        raise ValueError(f"{other}={value!r} can never hold ({possible})")


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


# ---------------------------------------------------------------------------- Optuna's encoding


def encode_choice(value: Any) -> bool | int | float | str | None:
    """Optuna's categorical choices must be scalars: lists (e.g. g_hidden) travel as JSON."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def decode_choice(param: Choice, value: Any) -> Any:
    """The study file's value of an encoded choice (the value itself when none encodes to it)."""
    for original in param.values:
        if encode_choice(original) == value:
            return original
    return value
