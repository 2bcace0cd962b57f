"""Search spaces made of Optuna distributions, and their encoding as vectors in [0, 1].

Notation
--------
A configuration ``c`` is a ``dict[str, value]``; its encoding ``x = encode(c)`` is a float vector of
length ``dim`` in which

* a float or int distribution is one coordinate: ``(v - low) / (high - low)``, computed on
  ``log(v)`` when the distribution is ``log=True`` (a zero-width range encodes to 0.5);
* a categorical distribution with ``k`` choices is ``k`` coordinates, one-hot.

Surrogates are trained on ``x`` and a saved surrogate carries the space's ``fingerprint`` so that it
refuses to score configurations of another space.
"""

from __future__ import annotations

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

__all__ = ["SearchSpace", "lora_space", "LORA_SPACE_NAME", "TARGET_MODULE_PRESETS"]

LORA_SPACE_NAME = "lora-v1"

#: What each ``target_modules`` choice of the LoRA space means, per architecture family.  Names
#: cover Llama/Mistral/SmolLM (q_proj...) and Phi-3 (qkv_proj, gate_up_proj) module naming.
TARGET_MODULE_PRESETS: dict[str, list[str] | str] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"],
    "attention_mlp": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate_up_proj",
    ],
    "all_linear": "all-linear",
}


class SearchSpace:
    """An ordered mapping of parameter names to Optuna distributions, with a vector encoding.

    The order of ``distributions`` is kept as given: it fixes the layout of encoded vectors, and the
    fingerprint is computed over the sorted JSON so that two equal spaces always match.

    Args:
        distributions: Parameter name -> Optuna distribution.
        name: A human-readable name stored with the fingerprint (``quicktune.space``).
    """

    def __init__(self, distributions: Mapping[str, BaseDistribution], name: str = "custom") -> None:
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
        self._slices: dict[str, slice] = {}
        start = 0
        for key, dist in self.distributions.items():
            width = len(dist.choices) if isinstance(dist, CategoricalDistribution) else 1
            self._slices[key] = slice(start, start + width)
            start += width
        self.dim = start

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """A short, stable hash of the distributions (names, types, bounds, choices)."""
        payload = json.dumps(
            {k: json.loads(distribution_to_json(d)) for k, d in sorted(self.distributions.items())},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def names(self) -> list[str]:
        return list(self.distributions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.fingerprint == other.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"SearchSpace(name={self.name!r}, params={self.names}, fingerprint={self.fingerprint})"

    def to_json(self) -> dict[str, Any]:
        # "order" fixes the encoding layout: JSON writers may sort the keys of "distributions".
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "order": self.names,
            "distributions": {k: distribution_to_json(d) for k, d in self.distributions.items()},
        }

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
        space = cls(dists, name=data.get("name", "custom"))
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
        missing = [k for k in self.distributions if k not in config]
        if missing:
            raise ValueError(f"Configuration lacks parameters {missing} of space {self.name!r}.")
        for key, dist in self.distributions.items():
            value = config[key]
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
        for key, dist in self.distributions.items():
            sl = self._slices[key]
            try:
                values = [c[key] for c in configs]
            except KeyError:
                raise ValueError(
                    f"A configuration lacks parameter {key!r} of space {self.name!r}."
                ) from None
            if isinstance(dist, CategoricalDistribution):
                for i, v in enumerate(values):
                    try:
                        idx = dist.to_internal_repr(v)
                    except ValueError:
                        raise ValueError(
                            f"Value {v!r} of {key!r} is not one of {list(dist.choices)}."
                        ) from None
                    out[i, sl.start + int(idx)] = 1.0
            else:
                out[:, sl.start] = _scale(np.asarray(values, dtype=np.float64), dist)
        return out

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """Map a vector back to the nearest valid configuration (rounded to steps, argmax choice)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"Expected a vector of length {self.dim}, got shape {x.shape}.")
        config: dict[str, Any] = {}
        for key, dist in self.distributions.items():
            sl = self._slices[key]
            if isinstance(dist, CategoricalDistribution):
                config[key] = dist.choices[int(np.argmax(x[sl]))]
            else:
                config[key] = _unscale(float(np.clip(x[sl.start], 0.0, 1.0)), dist)
        return config

    def config_id(self, config: Mapping[str, Any]) -> str:
        """A stable id of a configuration in this space (the same config gets the same id anywhere)."""
        canon = {k: _canonical(self.distributions[k], config[k]) for k in self.distributions}
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
        return configs

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an ``optuna.Trial`` for every parameter, so the trial records these distributions."""
        config: dict[str, Any] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                config[key] = trial.suggest_categorical(key, dist.choices)
            elif isinstance(dist, IntDistribution):
                config[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                config[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        return config

    def subset(self, names: Iterable[str]) -> "SearchSpace":
        names = list(names)
        return SearchSpace({k: self.distributions[k] for k in names}, name=f"{self.name}[subset]")


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


def lora_space() -> SearchSpace:
    """The default LoRA finetuning space (``lora-v1``).

    The ranges follow common practice for LoRA SFT of 0.1B-4B models (and the Phi-3 runs of
    Strangmann et al. 2024): the learning rate is log-uniform because its effect is multiplicative;
    alpha is a multiple of the rank because that ratio, not alpha itself, sets the update scale.
    """
    return SearchSpace(
        {
            "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
            "lora_r": IntDistribution(4, 128, log=True),
            "lora_alpha_ratio": CategoricalDistribution([0.5, 1.0, 2.0, 4.0]),
            "lora_dropout": FloatDistribution(0.0, 0.2),
            "target_modules": CategoricalDistribution(list(TARGET_MODULE_PRESETS)),
            "weight_decay": FloatDistribution(0.0, 0.1),
            "warmup_ratio": FloatDistribution(0.0, 0.2),
            "lr_scheduler_type": CategoricalDistribution(["linear", "cosine", "constant_with_warmup"]),
            "per_device_train_batch_size": CategoricalDistribution([2, 4, 8, 16]),
            "gradient_accumulation_steps": CategoricalDistribution([1, 2, 4, 8]),
            "max_grad_norm": FloatDistribution(0.1, 2.0, log=True),
            "use_dora": CategoricalDistribution([False, True]),
            "use_rslora": CategoricalDistribution([False, True]),
        },
        name=LORA_SPACE_NAME,
    )


#: The default configuration of the LoRA space: what PEFT/TRL tutorials use when nobody tunes.
DEFAULT_LORA_CONFIG: dict[str, Any] = {
    "learning_rate": 2e-4,
    "lora_r": 16,
    "lora_alpha_ratio": 2.0,
    "lora_dropout": 0.05,
    "target_modules": "attention",
    "weight_decay": 0.0,
    "warmup_ratio": 0.03,
    "lr_scheduler_type": "linear",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_grad_norm": 1.0,
    "use_dora": False,
    "use_rslora": False,
}
__all__.append("DEFAULT_LORA_CONFIG")
