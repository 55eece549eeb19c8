"""results.csv: one row per trial, built from the Optuna study (the sweep's source of truth).

With seed replicates (budget.replicates > 1) each configuration's row (its replicates' mean,
`objective_stderr`, `replicates_completed`; `replicate` empty) is followed by a row per
replicate (`replicate` = r, its `seed`, its own objective). Where the study searches a field
that changes the objective's scale (config.space.SCALE_FIELDS: the data set), the rows are
ranked within each of its values, never across them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from gansweep.config.schema import Choice
from gansweep.config.space import scale_fields
from gansweep.files import write_csv_atomically
from gansweep.service import protocol as p
from gansweep.service import replicates as rep
from gansweep.service.search import OptunaStudy

SUMMARY_ATTRS = ("d_loss", "g_loss", "wall_time", p.EQUILIBRIUM, p.ATTR_PRUNED_AT, p.ATTR_FAILURE_REASON, p.ATTR_TUNE_TRIAL_ID)
REPLICATE_COLUMN = p.REPLICATE_COLUMN  # empty on a configuration's row, r on its replicates' rows


def results_table(study: OptunaStudy) -> pd.DataFrame:
    config = study.config
    replicates = config.budget.replicates
    rows, replicate_rows = [], []
    for frozen in study.trials():
        if frozen.user_attrs.get(p.ATTR_EXCLUDED):
            continue  # an invalid sampled combination, never run
        values = study.values_of(frozen.number)
        objectives = frozen.values or []
        row: dict[str, Any] = {"trial": frozen.number, "state": frozen.state.name}
        row.update({name: values.get(name) for name in config.search})
        row["objective"] = objectives[0] if objectives else _last_intermediate(frozen)
        if config.objective.second is not None:
            row["objective_2"] = objectives[1] if len(objectives) > 1 else math.nan
        if replicates > 1:
            row[rep.ATTR_OBJECTIVE_STDERR] = frozen.user_attrs.get(rep.ATTR_OBJECTIVE_STDERR)
            row[rep.ATTR_REPLICATES_COMPLETED] = frozen.user_attrs.get(rep.ATTR_REPLICATES_COMPLETED)
            row[REPLICATE_COLUMN] = None
            row["seed"] = values["seed"]
        if config.objective.select == "best":
            row[rep.ATTR_BEST_EPOCH] = frozen.user_attrs.get(rep.ATTR_BEST_EPOCH)
        row["epochs"] = frozen.user_attrs.get(p.ATTR_EPOCH, max(frozen.intermediate_values, default=0))
        row.update({attr: frozen.user_attrs.get(attr) for attr in SUMMARY_ATTRS})
        rows.append(row)
        for replicate, record in sorted(rep.records_of(frozen.user_attrs, replicates).items()):
            replicate_rows.append(replicate_row(row, replicate, record, config.objective.second is not None))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = ranked(table, group_orders(config), config.objective.direction == "minimize")
    if replicate_rows:
        table = with_replicates(table, pd.DataFrame(replicate_rows, columns=table.columns))
    integer = {"epochs": "Int64", "pruned_at": "Int64"}
    integer.update({c: "Int64" for c in (REPLICATE_COLUMN, rep.ATTR_BEST_EPOCH, rep.ATTR_REPLICATES_COMPLETED)
                    if c in table.columns})
    return table.astype(integer)


def replicate_row(configuration: dict[str, Any], replicate: int, record: dict[str, Any], second: bool) -> dict[str, Any]:
    """A replicate's row: its configuration's swept values, its own state, seed and objective."""
    objective = record.get("objective") or []
    row = dict(configuration)
    row.update({
        "state": record["state"], "objective": objective[0] if objective else math.nan,
        rep.ATTR_OBJECTIVE_STDERR: None, rep.ATTR_REPLICATES_COMPLETED: None,
        REPLICATE_COLUMN: replicate, "seed": record.get("seed"), "epochs": record.get("epoch"),
        p.ATTR_PRUNED_AT: configuration.get(p.ATTR_PRUNED_AT) if record["state"] == "PRUNED" else None,
    })
    if second:
        row["objective_2"] = objective[1] if len(objective) > 1 else math.nan
    if rep.ATTR_BEST_EPOCH in row:
        row[rep.ATTR_BEST_EPOCH] = record.get(rep.ATTR_BEST_EPOCH)
    row.update({name: record.get(name) for name in ("d_loss", "g_loss", "wall_time", p.EQUILIBRIUM, p.ATTR_FAILURE_REASON)})
    return row


def group_orders(config: Any) -> dict[str, list[str]]:
    """Each searched scale field and its values in the study file's order (a range: sorted)."""
    orders = {}
    for name in scale_fields(config):
        param = config.search[name]
        orders[name] = [str(v) for v in param.values] if isinstance(param, Choice) else []
    return orders


def ranked(table: pd.DataFrame, groups: dict[str, list[str]], ascending: bool) -> pd.DataFrame:
    """Best first within each value of the scale fields (in the order the study lists them),
    never across them."""
    def order(column: pd.Series) -> pd.Series:
        if column.name not in groups:
            return column
        listed = {value: index for index, value in enumerate(groups[str(column.name)])}
        return column.astype(str).map(lambda value: listed.get(value, len(listed)))

    by = [*groups, "objective"]
    return table.sort_values(by, ascending=[True] * len(groups) + [ascending], na_position="last",
                             key=order, kind="mergesort").reset_index(drop=True)


def with_replicates(configurations: pd.DataFrame, replicate_rows: pd.DataFrame) -> pd.DataFrame:
    """Each configuration's row followed by its replicates' rows, in replicate order."""
    rank = {trial: index for index, trial in enumerate(configurations["trial"])}
    table = pd.concat([configurations, replicate_rows.astype({"objective": float})], ignore_index=True)
    order = pd.DataFrame({"rank": table["trial"].map(rank), "replicate": table[REPLICATE_COLUMN].fillna(-1)})
    return table.loc[order.sort_values(["rank", "replicate"], kind="mergesort").index].reset_index(drop=True)


def _last_intermediate(frozen) -> float:
    """A pruned trial's objective is its last evaluation (what the pruner judged)."""
    if not frozen.intermediate_values:
        return math.nan
    return frozen.intermediate_values[max(frozen.intermediate_values)]


def write_results(study: OptunaStudy, path: Path) -> pd.DataFrame:
    table = results_table(study)
    write_csv_atomically(table, path)
    return table
