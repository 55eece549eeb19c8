"""Live sweep progress: trials by state, best so far, elapsed and remaining time.

A rich live table on a terminal; one plain line per finished trial otherwise (CI logs).
Where the study searches a field that changes the objective's scale (config.space.
SCALE_FIELDS: the data set), the best so far and the final table are per value of it."""

from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.table import Table


class SweepProgress:
    def __init__(self, total: int, done: int, metric: str, direction: str, groups: tuple[str, ...] = ()) -> None:
        self.total = total
        self.done_before = done
        self.metric = metric
        self.direction = direction
        self.groups = groups  # the scale fields the study searches: a best per value of them
        self.states: dict[int, str] = {}
        self.group_of: dict[int, str] = {}  # trial -> its group's label ("" without groups)
        self.bests: dict[str, tuple[float, float | None]] = {}  # group -> best objective, its stderr
        self.started_at = time.monotonic()
        self.console = Console()
        if not self.console.is_terminal:
            self.console = Console(width=200)  # logs: keep table rows on one line
        self._live: Live | None = None

    @property
    def best(self) -> float | None:
        """The best objective so far, when the study has one scale (else see `bests`)."""
        return self.bests[""][0] if "" in self.bests else None

    def started(self, number: int, values: dict[str, Any] | None = None) -> None:
        self.states[number] = "RUNNING"
        self.group_of[number] = group_label(self.groups, values or {})
        self.refresh()

    def finished(self, number: int, state: str, objective: float | None = None, stderr: float | None = None) -> None:
        """A trial ended; its objective (complete trials only) may be the new best of its group."""
        self.states[number] = state
        if objective is not None and math.isfinite(objective):
            group = self.group_of.get(number, "")
            best = self.bests.get(group)
            if best is None or (objective > best[0] if self.direction == "maximize" else objective < best[0]):
                self.bests[group] = (objective, stderr)
        if self._live is None:
            done = self.done_before + sum(s != "RUNNING" for s in self.states.values())
            self.console.print(f"trial {number} {state.lower()}  ({done}/{self.total} done, best {self._best_text()})")
        self.refresh()

    def _best_text(self) -> str:
        if not self.bests:
            return "-"
        return ", ".join(f"{group + ': ' if group else ''}{value:.4g}" + (f" ± {stderr:.2g}" if stderr else "")
                         for group, (value, stderr) in sorted(self.bests.items()))

    def table(self) -> Table:
        counts = Counter(self.states.values())
        finished = sum(counts[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
        elapsed = time.monotonic() - self.started_at
        left = self.total - self.done_before - finished
        eta = f"{elapsed / finished * left:.0f}s" if finished else "-"
        table = Table(title=f"sweep: {self.done_before + finished}/{self.total} trials done")
        for column in ("running", "complete", "pruned", "failed", f"best {self.metric}", "elapsed", "remaining"):
            table.add_column(column, justify="right")
        table.add_row(
            str(counts["RUNNING"]), str(counts["COMPLETE"]), str(counts["PRUNED"]), str(counts["FAIL"]),
            self._best_text(), f"{elapsed:.0f}s", eta,
        )
        return table

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.table())

    @contextmanager
    def live(self) -> Iterator[None]:
        if not self.console.is_terminal:
            yield
            return
        with Live(self.table(), console=self.console, refresh_per_second=2) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def close(self, results: pd.DataFrame) -> None:
        """The final table of trials, sorted by the objective."""
        if results.empty:
            self.console.print("no trials recorded")
            return
        parts = [("", results)] if not self.groups else [
            (group_label(self.groups, dict(zip(self.groups, key if isinstance(key, tuple) else (key,), strict=True))), part)
            for key, part in results.groupby(list(self.groups), sort=False, dropna=False)
        ]
        for group, part in parts:  # results.csv ranks within each group already
            shown = part.drop(columns=["tune_trial_id"], errors="ignore").head(20)
            table = Table(title=f"trials by {self.metric} ({self.direction})" + (f", {group}" if group else ""))
            for column in shown.columns:
                table.add_column(str(column), overflow="fold")
            for row in shown.itertuples(index=False):
                table.add_row(*(_cell(v) for v in row))
            self.console.print(table)
            if len(part) > len(shown):
                self.console.print(f"... {len(part) - len(shown)} more in results.csv")


def group_label(groups: tuple[str, ...], values: dict[str, Any]) -> str:
    """`dataset=circle`: the values of the scale fields a trial's objective is ranked within."""
    return " ".join(f"{name}={values.get(name)}" for name in groups)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
