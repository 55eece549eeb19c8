"""The order in which a study's searched fields are decided, and the combinations of values a
trial can have: what the `when` conditions allow. Plain functions of the search blocks'
`when` maps and values, importing no schema, so that both config.schema's rules and
config.space (the resolver, which builds trials from the schema) can use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gansweep.config.schema import SearchParam, StudyConfig


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


ANY = object()  # a ranged field's value in reachable(): it may equal any value a condition names


def reachable(study: StudyConfig, names: tuple[str, ...]) -> list[dict[str, object]]:
    """Every combination of the fields `names` that a trial of the study can have: fixed
    values, and each value of a searched choice whose `when` can hold (a condition on a range
    may hold or not), following the conditions through the fields they name."""
    need, todo = set(names), list(names)
    while todo:
        param = study.search.get(todo.pop())
        for other in (param.when or {}) if param else ():
            if other not in need:
                need.add(other)
                todo.append(other)
    combos: list[dict[str, object]] = [{name: getattr(study.trial, name) for name in need}]
    for name in (n for n in search_order(study.search) if n in need):
        param, grown = study.search[name], []
        values = param.values if param.kind == "choice" else (ANY,)
        for combo in combos:
            conditions = [(combo[f], v) for f, v in (param.when or {}).items()]
            if all(got is ANY or got == v for got, v in conditions):
                grown += [{**combo, name: value} for value in values]
            if not all(got is not ANY and got == v for got, v in conditions):
                grown.append(combo)  # the condition may fail: the fixed value stays
        combos = grown
    return combos
