"""A study's identity, stored with its Optuna study: what makes two runs' trials comparable.

Running a study again resumes or extends it. If its search space, objective or fixed trial
fields changed in between, the new trials would be ranked against the old ones as if they
were one study (and Optuna keeps the direction it was created with). So the first run stores
the identity in the Optuna study's user attributes, and a later run whose study differs is
refused, listing what changed, unless `--allow-changed` accepts a change that keeps the
trials comparable (a wider range, another choice, more epochs). The objective never changes
within a study: the trials' values would not compare.
"""

from __future__ import annotations

import json
from typing import Any

from gansweep.config.schema import StudyConfig, TrialConfig
from gansweep.errors import ConfigError

ATTR_IDENTITY = "gansweep.identity"
NEVER_ALLOWED = "objective"  # its changes are refused even with --allow-changed
# How a trial runs, not what it trains: a study begun on CPUs may go on on a GPU machine.
HOW_IT_RUNS = ("device", "compile")


def study_identity(study: StudyConfig) -> dict[str, Any]:
    """The study's search space, objective and fixed trial fields, as JSON values (as Optuna
    stores them: tuples become lists). A field searched in every trial is not fixed: its
    value in `trial` is never used; nor are the fields of HOW_IT_RUNS part of it."""
    left_out = {name for name, param in study.search.items() if param.when is None} | set(HOW_IT_RUNS)
    identity = {
        "objective": study.objective.model_dump(mode="json", exclude={"select"}),
        "search": {name: param.model_dump(mode="json", exclude_none=True) for name, param in study.search.items()},
        "trial": {k: v for k, v in study.trial.model_dump(mode="json").items() if k not in left_out},
    }
    return json.loads(json.dumps(identity))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} as {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def across_releases(stored: dict[str, Any], current: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two identities with the trial fields only one release knows set aside: a field
    this release added trains, at its default, as before it existed; one it dropped or
    leaves out (HOW_IT_RUNS) cannot be set. Neither is a change of the study."""
    defaults = json.loads(json.dumps(TrialConfig().model_dump(mode="json")))
    before, now = stored.get("trial", {}), current["trial"]
    now = {k: v for k, v in now.items() if k in before or v != defaults.get(k)}
    before = {k: v for k, v in before.items() if k in current["trial"]}
    return {**stored, "trial": before}, {**current, "trial": now}


def identity_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per dotted field that differs: `search.alpha.low: 0.2 -> 0.6`."""
    before, after = flatten(stored), flatten(current)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            lines.append(f"{key}: {before[key]!r} -> (removed)")
        elif key not in before:
            lines.append(f"{key}: (new) -> {after[key]!r}")
        elif before[key] != after[key]:
            lines.append(f"{key}: {before[key]!r} -> {after[key]!r}")
    return lines


def refusal(name: str, changes: list[str], objective_changed: bool) -> str:
    """The message of a run whose study differs from the one its Optuna study holds."""
    listed = "".join(f"\n  {line}" for line in changes)
    new_name = ("give the study a new name (`name:` in the study file), or run it into a new "
                "--output (a study in its output folder's optuna.db)")
    if objective_changed:
        return (f"study {name!r} was run with another objective:{listed}\nwithin one study the "
                f"trials' values would not compare, and Optuna keeps its direction: {new_name}")
    return (f"study {name!r} was run with another search space or trial fields:{listed}\nits trials "
            f"would be ranked with the earlier ones as one study: {new_name}; or, for a change that "
            "keeps them comparable (a wider range, another choice, more epochs), run it again with "
            "--allow-changed")


def objective_directions(study: StudyConfig) -> list[str]:
    second = study.objective.second
    return [study.objective.direction] + ([second.direction] if second is not None else [])


def check_identity(stored: dict[str, Any] | None, study: StudyConfig, stored_directions: list[str],
                   allow_changed: bool) -> dict[str, Any] | None:
    """The identity to store now (None: the stored one stands), or ConfigError when the study
    differs from the one stored. A study from before identities were stored is checked on
    its directions alone, which Optuna keeps."""
    current = study_identity(study)
    if stored is None:
        wanted = objective_directions(study)
        if stored_directions != wanted:
            changes = [f"objective directions: {stored_directions} -> {wanted}"]
            raise ConfigError(refusal(study.name, changes, objective_changed=True))
        return current
    changes = identity_changes(*across_releases(stored, current))
    if not changes:
        return None
    objective_changed = any(line.startswith(NEVER_ALLOWED + ".") for line in changes)
    if objective_changed or not allow_changed:
        raise ConfigError(refusal(study.name, changes, objective_changed))
    return current
