"""results.csv: one row per trial, built from the Optuna study (the sweep's source of truth)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gansweep.files import write_csv_atomically
from gansweep.service import protocol as p
from gansweep.service.search import OptunaStudy

SUMMARY_ATTRS = ("d_loss", "g_loss", "wall_time", p.ATTR_PRUNED_AT, p.ATTR_FAILURE_REASON, p.ATTR_TUNE_TRIAL_ID)


def results_table(study: OptunaStudy) -> pd.DataFrame:
    config = study.config
    rows = []
    for frozen in study.trials():
        if frozen.user_attrs.get(p.ATTR_EXCLUDED):
            continue  # an invalid sampled combination, never run
        values = study.values_of(frozen.number)
        objectives = frozen.values or []
        row = {"trial": frozen.number, "state": frozen.state.name}
        row.update({name: values.get(name) for name in config.search})
        row["objective"] = objectives[0] if objectives else _last_intermediate(frozen)
        if config.objective.second is not None:
            row["objective_2"] = objectives[1] if len(objectives) > 1 else math.nan
        row["epochs"] = frozen.user_attrs.get(p.ATTR_EPOCH, max(frozen.intermediate_values, default=0))
        row.update({attr: frozen.user_attrs.get(attr) for attr in SUMMARY_ATTRS})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.astype({"epochs": "Int64", "pruned_at": "Int64"})
    ascending = config.objective.direction == "minimize"
    return table.sort_values("objective", ascending=ascending, na_position="last").reset_index(drop=True)


def _last_intermediate(frozen) -> float:
    """A pruned trial's objective is its last evaluation (what the pruner judged)."""
    if not frozen.intermediate_values:
        return math.nan
    return frozen.intermediate_values[max(frozen.intermediate_values)]


def write_results(study: OptunaStudy, path: Path) -> pd.DataFrame:
    table = results_table(study)
    write_csv_atomically(table, path)
    return table
