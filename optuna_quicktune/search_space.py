"""Search spaces made of Optuna distributions, and their encoding as vectors in [0, 1].

Notation
--------
A configuration ``c`` is a ``dict[str, value]``; its encoding ``x = encode(c)`` is a float vector of
length ``dim`` in which

* a float or int distribution is one coordinate: ``(v - low) / (high - low)``, computed on
  ``log(v)`` when the distribution is ``log=True`` (a zero-width range encodes to 0.5);
* a categorical distribution with ``k`` choices is ``k`` coordinates, one-hot.

Conditional parameters
----------------------
A parameter may carry a condition on an earlier parameter (see :mod:`optuna_quicktune.conditions`):
it exists only when the parent exists and takes one of the listed values, as in a define-by-run
objective. A configuration holds its *active* parameters only. Each conditional parameter adds one
more coordinate after its own, an **active indicator** (1 active, 0 inactive); an inactive
parameter's own coordinates take a **neutral value**: 0.5 (mid-range) for a float or int, all zeros
(no choice) for a categorical. So a surrogate tells "inactive" from "at its lower bound" by the
indicator, and an inactive value sits at equal distance from every active one. Spaces without
conditions encode, hash and sample exactly as before (existing surrogates stay valid).

Surrogates are trained on ``x`` and a saved surrogate carries the space's ``fingerprint`` so that it
refuses to score configurations of another space.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from optuna_quicktune.conditions import Condition, ConditionLike, active_names, infer_conditions, parse_conditions

__all__ = ["SearchSpace", "Condition", "INACTIVE_VALUE"]

#: Encoded value of an inactive float/int parameter (mid-range: no bound is favoured).
INACTIVE_VALUE = 0.5

class SearchSpace:
    """An ordered mapping of parameter names to Optuna distributions, with a vector encoding.

    The order of ``distributions`` is kept as given: it fixes the layout of encoded vectors, and the
    fingerprint is computed over the sorted JSON so that two equal spaces always match.

    Args:
        distributions: Parameter name -> Optuna distribution.
        name: A human-readable name stored with the fingerprint (``quicktune.space``).
        conditions: Child name -> condition on an earlier parameter: ``(parent, value)`` or
            ``(parent, [values])`` or a :class:`Condition`. The child exists only when the parent
            does and has one of the values.
    """

    def __init__(
        self,
        distributions: Mapping[str, BaseDistribution],
        name: str = "custom",
        conditions: Mapping[str, ConditionLike] | None = None,
    ) -> None:
        if not isinstance(distributions, Mapping) or len(distributions) == 0:
            raise ValueError(
                "A SearchSpace needs a non-empty dict of Optuna distributions, e.g. "
                "{'learning_rate': optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}."
            )
        for key, dist in distributions.items():
            if not isinstance(dist, BaseDistribution):
                raise TypeError(
                    f"Parameter {key!r} maps to {type(dist).__name__}, not an Optuna distribution. "
                    "Use FloatDistribution, IntDistribution or CategoricalDistribution."
                )
        self.distributions: dict[str, BaseDistribution] = dict(distributions)
        self.name = name
        self.conditions: dict[str, Condition] = parse_conditions(conditions, self.distributions)
        self._slices: dict[str, slice] = {}
        self._indicator: dict[str, int] = {}
        start = 0
        for key, dist in self.distributions.items():
            width = len(dist.choices) if isinstance(dist, CategoricalDistribution) else 1
            self._slices[key] = slice(start, start + width)
            start += width
            if key in self.conditions:
                self._indicator[key] = start
                start += 1
        self.dim = start

    # ------------------------------------------------------------------ identity
    @functools.cached_property
    def fingerprint(self) -> str:
        """A short, stable hash of the distributions (names, types, bounds, choices); computed once."""
        obj: dict[str, Any] = {k: json.loads(distribution_to_json(d)) for k, d in sorted(self.distributions.items())}
        if self.conditions:  # only then: unconditional spaces keep the fingerprints they always had
            obj = {"distributions": obj, "conditions": self._conditions_json()}
        payload = json.dumps(obj, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _conditions_json(self) -> dict[str, Any]:
        return {k: c.to_json() for k, c in self.conditions.items()}

    @property
    def is_conditional(self) -> bool:
        return bool(self.conditions)

    def active(self, config: Mapping[str, Any]) -> list[str]:
        """The parameters that exist for ``config`` (every one, in a space without conditions)."""
        return active_names(self.names, self.conditions, config) if self.conditions else self.names

    def project(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` without the parameters that are inactive for it (or not in the space)."""
        return {k: config[k] for k in self.active(config) if k in config}

    def active_distributions(self, config: Mapping[str, Any]) -> dict[str, BaseDistribution]:
        """The distributions a define-by-run objective declares for ``config``."""
        return {k: self.distributions[k] for k in self.active(config)}

    def relative_space_for(self, declared: Mapping[str, BaseDistribution]) -> dict[str, BaseDistribution]:
        """The parameters a sampler may own: those the objective declared with our distribution.

        ``declared`` is what the study's trials declared so far (name -> distribution). A name
        declared with another distribution (another kind, range, log scale or choices) is left to
        the independent sampler, so Optuna never sees two distributions for one name.
        """
        return {k: d for k, d in self.distributions.items() if k in declared and declared[k] == d}

    def fallback_reason(self, name: str, dist: BaseDistribution, config: Mapping[str, Any]) -> str | None:
        """Why a sampler cannot give ``name`` its value from ``config`` (``None``: it can)."""
        ours = self.distributions.get(name)
        if ours is None:
            return f"is not in the surrogate's space {self.name!r}"
        if ours != dist:
            return f"is declared as {dist}, but the surrogate's space {self.name!r} has {ours}"
        if name not in config:
            return "is inactive in the proposed configuration (its condition does not hold there)"
        return None

    @staticmethod
    def declared(trials: Iterable[Any]) -> dict[str, BaseDistribution]:
        """What a study's objective declared so far: name -> distribution (the latest trial's wins)."""
        out: dict[str, BaseDistribution] = {}
        for t in trials:
            out.update(t.distributions)
        return out

    def declared_last(self, trials: Sequence[Any]) -> dict[str, BaseDistribution]:
        """:meth:`declared` restricted to this space's parameters (what :meth:`relative_space_for` reads).

        Read from the latest trial back, stopping once every parameter has been seen: a long study
        asks this before every trial, and the earlier trials cannot change the answer then.
        """
        out: dict[str, BaseDistribution] = {}
        want = len(self.distributions)
        for t in reversed(trials):
            for k, d in t.distributions.items():
                if k in self.distributions and k not in out:
                    out[k] = d
            if len(out) == want:
                break
        return out

    @classmethod
    def infer(
        cls, configs: Sequence[Mapping[str, Any]], distributions: Mapping[str, BaseDistribution], name: str = "custom"
    ) -> "SearchSpace | None":
        """The conditional space whose conditions explain which parameters each config has.

        ``distributions`` is the union of what the configurations declared, parents first.
        ``None`` if no set of equality/in-set conditions on categorical parents explains them.
        """
        conditions = infer_conditions(configs, list(distributions), distributions)
        return None if conditions is None else cls(distributions, name=name, conditions=conditions)

    @property
    def names(self) -> list[str]:
        return list(self.distributions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        cond = f", conditions={ {k: (c.parent, list(c.values)) for k, c in self.conditions.items()} }" if self.conditions else ""
        return f"SearchSpace(name={self.name!r}, params={self.names}{cond}, fingerprint={self.fingerprint})"

    def to_json(self) -> dict[str, Any]:
        # "order" fixes the encoding layout: JSON writers may sort the keys of "distributions".
        out: dict[str, Any] = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "order": self.names,
            "distributions": {k: distribution_to_json(d) for k, d in self.distributions.items()},
        }
        if self.conditions:
            out["conditions"] = self._conditions_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SearchSpace":
        try:
            dists = {k: json_to_distribution(v) for k, v in data["distributions"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Not a serialised SearchSpace ({e}); expected SearchSpace.to_json().") from e
        order = data.get("order")
        if order is not None:
            if sorted(order) != sorted(dists):
                raise ValueError(
                    f"Serialised space {data.get('name', 'custom')!r}: 'order' {order} does not name the same "
                    f"parameters as 'distributions' {sorted(dists)}: the file was edited or is corrupted."
                )
            dists = {k: dists[k] for k in order}
        space = cls(dists, name=data.get("name", "custom"), conditions=data.get("conditions"))
        expected = data.get("fingerprint")
        if expected is not None and expected != space.fingerprint:
            raise ValueError(
                f"Serialised space {space.name!r} has fingerprint {expected} but its distributions "
                f"hash to {space.fingerprint}: the file was edited or is corrupted."
            )
        return space

    # ------------------------------------------------------------------ checks
    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` sets every parameter to a value its distribution allows."""
        try:
            self.validate(config)
        except ValueError:
            return False
        return True

    def validate(self, config: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless every active parameter is set to a value it allows.

        Inactive parameters (and names outside the space) are ignored: they do not exist.
        """
        active = self.active(config)
        missing = [k for k in active if k not in config]
        if missing:
            raise ValueError(f"Configuration lacks parameters {missing} of space {self.name!r}.")
        for key in active:
            dist, value = self.distributions[key], config[key]
            try:
                internal = dist.to_internal_repr(value)
                ok = dist._contains(internal)
            except Exception:  # noqa: BLE001 - any conversion error means "not in the space"
                ok = False
            if not ok:
                raise ValueError(f"Value {value!r} of {key!r} is outside {dist} of space {self.name!r}.")

    # ------------------------------------------------------------------ encoding
    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """Encode one configuration; raises ``ValueError`` naming the parameter that is off."""
        return self.encode_many([config])[0]

    def encode_many(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = np.zeros((len(configs), self.dim), dtype=np.float64)
        if self.conditions:
            actives = [set(self.active(c)) for c in configs]
        for key, dist in self.distributions.items():
            sl = self._slices[key]
            rows = list(range(len(configs)))
            if key in self.conditions:
                rows = [i for i in rows if key in actives[i]]
                out[rows, self._indicator[key]] = 1.0
                if not isinstance(dist, CategoricalDistribution):
                    out[:, sl.start] = INACTIVE_VALUE  # overwritten below for the active rows
            try:
                values = [configs[i][key] for i in rows]
            except KeyError:
                raise ValueError(
                    f"A configuration lacks parameter {key!r} of space {self.name!r}."
                ) from None
            if isinstance(dist, CategoricalDistribution):
                for i, v in zip(rows, values):
                    try:
                        idx = dist.to_internal_repr(v)
                    except ValueError:
                        raise ValueError(
                            f"Value {v!r} of {key!r} is not one of {list(dist.choices)}."
                        ) from None
                    out[i, sl.start + int(idx)] = 1.0
            elif rows:
                out[rows, sl.start] = _scale(np.asarray(values, dtype=np.float64), dist)
        return out

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """Map a vector back to the nearest valid configuration (rounded to steps, argmax choice)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"Expected a vector of length {self.dim}, got shape {x.shape}.")
        config: dict[str, Any] = {}
        for key, dist in self.distributions.items():
            sl = self._slices[key]
            cond = self.conditions.get(key)
            if cond is not None and not (cond.parent in config and cond.holds(config[cond.parent])):
                continue  # inactive given the decoded parents, whatever the vector says
            if isinstance(dist, CategoricalDistribution):
                config[key] = dist.choices[int(np.argmax(x[sl]))]
            else:
                config[key] = _unscale(float(np.clip(x[sl.start], 0.0, 1.0)), dist)
        return config

    def config_id(self, config: Mapping[str, Any]) -> str:
        """A stable id of a configuration in this space (the same config gets the same id anywhere)."""
        canon = {k: _canonical(self.distributions[k], config[k]) for k in self.active(config)}
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int | np.random.Generator | None = 0) -> list[dict[str, Any]]:
        """Draw ``n`` configurations uniformly in the encoded space (log-uniform for log params)."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        configs: list[dict[str, Any]] = [{} for _ in range(n)]
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                idx = rng.integers(0, len(dist.choices), size=n)
                for c, i in zip(configs, idx):
                    c[key] = dist.choices[int(i)]
            else:
                u = rng.random(n)
                for c, ui in zip(configs, u):
                    c[key] = _unscale(float(ui), dist)
        # Every parameter is drawn for every configuration (the same draws as without conditions),
        # then the inactive ones are dropped: the result is what a define-by-run objective records.
        return [self.project(c) for c in configs] if self.conditions else configs

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an ``optuna.Trial`` for every active parameter, parents first, as a define-by-run objective does."""
        config: dict[str, Any] = {}
        for key, dist in self.distributions.items():
            cond = self.conditions.get(key)
            if cond is not None and not (cond.parent in config and cond.holds(config[cond.parent])):
                continue  # a define-by-run objective would not ask for it
            if isinstance(dist, CategoricalDistribution):
                config[key] = trial.suggest_categorical(key, dist.choices)
            elif isinstance(dist, IntDistribution):
                config[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                config[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        return config

    def subset(self, names: Iterable[str]) -> "SearchSpace":
        names = list(names)
        orphans = [k for k in names if k in self.conditions and self.conditions[k].parent not in names]
        if orphans:
            raise ValueError(f"A subset keeping {orphans} must keep their parents {[self.conditions[k].parent for k in orphans]}.")
        conditions = {k: c for k, c in self.conditions.items() if k in names}
        return SearchSpace({k: self.distributions[k] for k in names}, name=f"{self.name}[subset]", conditions=conditions)


def _bounds(dist: FloatDistribution | IntDistribution) -> tuple[float, float]:
    if dist.log:
        return math.log(dist.low), math.log(dist.high)
    return float(dist.low), float(dist.high)


def _scale(values: np.ndarray, dist: BaseDistribution) -> np.ndarray:
    if not isinstance(dist, (FloatDistribution, IntDistribution)):
        raise TypeError(f"Unsupported distribution {dist!r}.")
    lo, hi = _bounds(dist)
    v = np.log(np.maximum(values, 1e-300)) if dist.log else values
    if hi == lo:
        return np.full_like(values, 0.5)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


def _unscale(u: float, dist: BaseDistribution) -> float | int:
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    lo, hi = _bounds(dist)
    v = lo + u * (hi - lo)
    if dist.log:
        v = math.exp(v)
    step = dist.step
    if step is not None:
        v = dist.low + round((v - dist.low) / step) * step
    v = min(max(v, dist.low), dist.high)
    if isinstance(dist, IntDistribution):
        return int(round(v))
    return float(v)


def _canonical(dist: BaseDistribution, value: Any) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return int(dist.to_internal_repr(value))
    if isinstance(dist, IntDistribution):
        return int(value)
    return float(f"{float(value):.8g}")
