"""Conditions of a define-by-run search space: which parameters exist for a given configuration.

A conditional parameter exists only when its parent parameter exists and takes one of a set of
values (``EqualsCondition`` is a set of one, ``InCondition`` a larger set, as in ConfigSpace).
Chains are allowed (a child of a conditional parent exists only when the parent does). This is the
shape an Optuna objective has when it writes ``if booster == "gbtree": eta = trial.suggest_...``.

Parents must come before their children in the space's order, as they do in a define-by-run
objective; then one pass over the order decides every parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution

__all__ = ["Condition", "ConditionLike", "parse_conditions", "active_names", "infer_conditions"]


@dataclass(frozen=True)
class Condition:
    """``child`` exists iff ``parent`` exists and its value is one of ``values``."""

    parent: str
    values: tuple[Any, ...]

    def holds(self, value: Any) -> bool:
        return any(_same(value, v) for v in self.values)

    def to_json(self) -> dict[str, Any]:
        return {"parent": self.parent, "values": list(self.values)}


#: What a caller may write for a condition: a Condition, ``(parent, value or values)`` or
#: ``{"parent": ..., "values": [...]}`` (the JSON form).
ConditionLike = Condition | tuple[str, Any] | Mapping[str, Any]


def _same(a: Any, b: Any) -> bool:
    # bools are ints in Python: True must not satisfy a condition on 1 (or the reverse).
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _as_condition(child: str, c: ConditionLike) -> Condition:
    if isinstance(c, Condition):
        return c
    if isinstance(c, Mapping):
        if "parent" not in c or "values" not in c:
            raise ValueError(f"Condition of {child!r} needs 'parent' and 'values', got {dict(c)}.")
        parent, values = c["parent"], c["values"]
    elif isinstance(c, tuple) and len(c) == 2:
        parent, values = c
    else:
        raise ValueError(
            f"Condition of {child!r} must be (parent, values), e.g. ('optimizer', ['adamw']), got {c!r}."
        )
    if isinstance(values, (list, tuple, set, frozenset)):
        values = tuple(values)
    else:
        values = (values,)
    if not values:
        raise ValueError(f"Condition of {child!r} on {parent!r} lists no value: the parameter could never exist.")
    return Condition(str(parent), values)


def parse_conditions(
    conditions: Mapping[str, ConditionLike] | None, distributions: Mapping[str, BaseDistribution]
) -> dict[str, Condition]:
    """Checked conditions: parents exist, come before their children, and the values are theirs."""
    out: dict[str, Condition] = {}
    order = list(distributions)
    for child, raw in (conditions or {}).items():
        cond = _as_condition(child, raw)
        if child not in distributions:
            raise ValueError(f"Condition on {child!r}, which is not a parameter of the space {order}.")
        if cond.parent not in distributions:
            raise ValueError(f"Parameter {child!r} is conditioned on {cond.parent!r}, which is not in the space {order}.")
        if order.index(cond.parent) >= order.index(child):
            raise ValueError(
                f"Parameter {child!r} is conditioned on {cond.parent!r}, which comes after it: list parents "
                "before their children, as a define-by-run objective suggests them."
            )
        parent_dist = distributions[cond.parent]
        for v in cond.values:
            try:
                ok = parent_dist._contains(parent_dist.to_internal_repr(v))  # noqa: SLF001 - Optuna's own check
            except Exception:  # noqa: BLE001 - any conversion error means "not a value of the parent"
                ok = False
            if not ok:
                raise ValueError(f"Condition of {child!r}: {v!r} is not a value of {cond.parent!r} ({parent_dist}).")
        # One order for the values (the parent's), so that equal conditions hash alike.
        values = sorted(_distinct(cond.values), key=lambda v: float(parent_dist.to_internal_repr(v)))
        out[child] = Condition(cond.parent, tuple(values))
    return out


def active_names(order: Sequence[str], conditions: Mapping[str, Condition], config: Mapping[str, Any]) -> list[str]:
    """The parameters that exist for ``config``, in ``order`` (a missing parent makes its child inactive)."""
    active: list[str] = []
    seen: set[str] = set()
    for name in order:
        cond = conditions.get(name)
        if cond is None or (cond.parent in seen and cond.parent in config and cond.holds(config[cond.parent])):
            active.append(name)
            seen.add(name)
    return active


def infer_conditions(
    configs: Sequence[Mapping[str, Any]], order: Sequence[str], distributions: Mapping[str, BaseDistribution]
) -> dict[str, Condition] | None:
    """Conditions that explain which parameters each configuration has, or ``None`` if none do.

    For a parameter missing from some configurations, the parent is the first earlier categorical
    parameter that is present whenever the child is and whose values with the child never occur
    without it; the condition is the set of those values. ``None`` when any parameter has no such
    parent, or when the result does not reproduce every configuration's parameter set exactly.
    """
    conditions: dict[str, Condition] = {}
    for i, child in enumerate(order):
        with_child = [c for c in configs if child in c]
        if len(with_child) == len(configs):
            continue
        found = None
        for parent in order[:i]:
            if not isinstance(distributions[parent], CategoricalDistribution):
                continue
            if any(parent not in c for c in with_child):
                continue
            choices = distributions[parent].choices  # type: ignore[attr-defined]
            on = [ch for ch in choices if any(_same(ch, c[parent]) for c in with_child)]
            off = _distinct(c[parent] for c in configs if child not in c and parent in c)
            if not any(_same(a, b) for a in on for b in off):
                found = Condition(parent, tuple(on))
                break
        if found is None:
            return None
        conditions[child] = found
    for c in configs:
        if set(active_names(order, conditions, c)) != set(c):
            return None
    return conditions


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not any(_same(v, u) for u in out):
            out.append(v)
    return out
