"""Read a ConfigSpace JSON (``config_space.json`` of a YAHPO-Gym folder) as a :class:`SearchSpace`.

Hyperparameters: ``uniform_float``, ``uniform_int``, ``categorical``, ``ordinal`` and ``constant``.
Conditions (ConfigSpace's JSON, format 0.2): ``EQ`` and ``IN``; ``NE`` on a categorical or ordinal
parent (the other values); and ``AND`` / ``OR`` of those when they all name the same parent and child
(the intersection / union of the value sets). Chains (a condition on a conditional parent) work.
``GT``/``LT`` conditions, conjunctions over several parents and forbidden clauses are refused with a
message: they do not fit the equality/in-set conditions of :mod:`optuna_quicktune.conditions`.

ConfigSpace writes hyperparameters in alphabetical order, so a child can come before its parent;
the space is reordered so that every parent comes first (stable otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_quicktune.conditions import Condition
from optuna_quicktune.space import SearchSpace

__all__ = ["configspace_to_space", "SUPPORTED_CONDITIONS"]

SUPPORTED_CONDITIONS = ("EQ", "IN", "NE", "AND/OR of those on one parent")


def configspace_to_space(
    cs_json: Mapping[str, Any], *, exclude: Sequence[str] = (), name: str = "yahpo"
) -> tuple[SearchSpace, dict[str, Any], dict[str, Any]]:
    """Optuna distributions (and conditions) from a ConfigSpace JSON.

    Returns the space (without ``exclude``), the ConfigSpace defaults and the excluded entries
    (``{name: {"distribution", "raw"}}``). An excluded parameter may not be the parent of a kept
    conditional one (its children would have nothing to depend on).
    """
    if cs_json.get("forbiddens"):
        raise ValueError("This config_space.json has forbidden clauses; the replay does not support them.")
    dists: dict[str, BaseDistribution] = {}
    defaults: dict[str, Any] = {}
    excluded: dict[str, Any] = {}
    for hp in cs_json["hyperparameters"]:
        n, kind = hp["name"], hp["type"]
        d = _distribution(hp)
        if n in exclude:
            excluded[n] = {"distribution": d, "raw": hp}
            continue
        dists[n] = d
        if "default" in hp:
            defaults[n] = hp["default"]
        elif kind == "constant":
            defaults[n] = hp["value"]
    conditions: dict[str, Condition] = {}
    for raw in cs_json.get("conditions") or []:
        child, cond = _condition(raw, {**dists, **{k: v["distribution"] for k, v in excluded.items()}})
        if child in excluded:
            continue
        if cond.parent in excluded:
            raise ValueError(
                f"{child!r} is conditioned on {cond.parent!r}, which is the instance, the fidelity or a constant "
                "here; hold the child constant too, or keep the parent in the search space."
            )
        if child in conditions:
            raise ValueError(f"{child!r} has two conditions in config_space.json; combine them with AND/OR on one parent.")
        conditions[child] = cond
    order = _parents_first(list(dists), conditions)
    space = SearchSpace({k: dists[k] for k in order}, name=name, conditions=conditions)
    return space, defaults, excluded


def _distribution(hp: Mapping[str, Any]) -> BaseDistribution:
    n, kind = hp["name"], hp["type"]
    if kind == "uniform_int":
        return IntDistribution(int(hp["lower"]), int(hp["upper"]), log=bool(hp.get("log", False)))
    if kind == "uniform_float":
        return FloatDistribution(float(hp["lower"]), float(hp["upper"]), log=bool(hp.get("log", False)))
    if kind == "categorical":
        return CategoricalDistribution(list(hp["choices"]))
    if kind == "ordinal":
        return CategoricalDistribution(list(hp["sequence"]))
    if kind == "constant":
        return CategoricalDistribution([hp["value"]])
    raise ValueError(f"Hyperparameter {n!r} has type {kind!r}, which the replay does not support.")


def _unsupported(raw: Any) -> ValueError:
    return ValueError(
        f"config_space.json has a condition the replay does not support: {raw}. Supported conditions: "
        f"{', '.join(SUPPORTED_CONDITIONS)}."
    )


def _condition(raw: Mapping[str, Any], dists: Mapping[str, BaseDistribution]) -> tuple[str, Condition]:
    """``(child, Condition)`` of one ConfigSpace condition (a conjunction collapses to one set)."""
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind in ("AND", "OR"):
        parts = [_condition(c, dists) for c in raw.get("conditions") or []]
        if not parts or len({(ch, c.parent) for ch, c in parts}) != 1:
            raise _unsupported(raw)
        child, parent = parts[0][0], parts[0][1].parent
        sets = [list(c.values) for _, c in parts]
        if kind == "OR":
            values = [v for s in sets for v in s]
        else:
            values = [v for v in sets[0] if all(v in s for s in sets[1:])]
        if not values:
            raise ValueError(f"The AND condition of {child!r} on {parent!r} can never hold: {raw}.")
        return child, Condition(parent, tuple(dict.fromkeys(values)))
    if kind not in ("EQ", "IN", "NE") or "child" not in raw or "parent" not in raw:
        raise _unsupported(raw)
    child, parent = raw["child"], raw["parent"]
    if parent not in dists or child not in dists:
        raise ValueError(f"The condition {raw} names a hyperparameter that config_space.json does not define.")
    if kind == "EQ":
        return child, Condition(parent, (raw["value"],))
    if kind == "IN":
        return child, Condition(parent, tuple(raw["values"]))
    pd = dists[parent]
    if not isinstance(pd, CategoricalDistribution):
        raise _unsupported(raw)
    return child, Condition(parent, tuple(c for c in pd.choices if c != raw["value"]))


def _parents_first(names: list[str], conditions: Mapping[str, Condition]) -> list[str]:
    """``names`` reordered so that each parent comes before its children (a stable depth-first order)."""
    out: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in out:
            return
        if n in visiting:
            raise ValueError(f"The conditions of config_space.json form a cycle through {n!r}.")
        visiting.add(n)
        if n in conditions:
            visit(conditions[n].parent)
        visiting.discard(n)
        out.append(n)

    for n in names:
        visit(n)
    return out
