"""How raw meta-dataset values become network inputs, and back; stored as JSON with the weights.

Notation
--------
F: the surrogate's largest fidelity (curves are zero-padded to it).
s: a fidelity step in 1..fidelity_max of the task.
z = (sign * y - y_mean) / y_std: a score normalised so that higher is better on every task.
u = (slog(m) - mf_mean) / mf_std with slog(v) = sign(v) * log1p(|v|): meta-features, so that
    counts spanning orders of magnitude (instances, features) enter on a comparable scale.
The inputs of one query are the encoded configuration x, the curve prefix z_1..z_p (zero-padded
to F, with a mask), the prefix length p / fidelity_max, the target fidelity s / fidelity_max and u.

Conditional parameters
----------------------
x is :meth:`SearchSpace.encode <optuna_quicktune.space.SearchSpace.encode>`: each conditional
parameter adds an active indicator (1/0) after its own coordinates, and an inactive parameter's
coordinates hold a neutral value (0.5 for a float/int, an all-zero one-hot for a categorical). The
networks need nothing else: the indicator lets them tell "inactive" from "at its lower bound".

Missing meta-features
---------------------
``mf_train_mean`` holds, per meta-feature, the arithmetic mean of the meta-training tasks' values
(raw units; stored with the weights since this version). :func:`impute_metafeatures` fills missing
or non-finite meta-features of a new dataset with it, but only when asked (``impute="train_mean"``):
by default a missing name stays an error, since a guessed value silently changes every prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import logging
import math

import numpy as np
import torch

from optuna_quicktune.contract import METAFEATURES
from optuna_quicktune.errors import MetaFeatureError

__all__ = ["Preprocessing", "Batch", "slog", "impute_metafeatures", "MetafeatureImputer", "IMPUTE_CHOICES"]

_logger = logging.getLogger(__name__)

#: What ``QuickTuneSampler(impute=...)`` accepts: ``None`` (missing meta-features are an error)
#: or ``"train_mean"`` (fill them with the surrogate's meta-training mean).
IMPUTE_CHOICES = (None, "train_mean")


def slog(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.log1p(np.abs(v))


@dataclass
class Preprocessing:
    max_fidelity: int
    y_mean: float
    y_std: float
    metafeature_names: list[str]
    mf_mean: list[float]
    mf_std: list[float]
    logc_mean: float
    logc_std: float
    mf_train_mean: list[float] | None = None  # raw-unit mean over the training tasks; None: saved before it existed

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, arrays: Mapping[str, np.ndarray], metafeature_names: Sequence[str]) -> "Preprocessing":
        Y = arrays["Y"] * arrays["sign"][arrays["task"]][:, None]
        finite = Y[np.isfinite(Y)]
        M = slog(arrays["M"])
        C = arrays["C"]
        logc = np.log(C[np.isfinite(C) & (C > 0)])
        return cls(
            max_fidelity=int(arrays["Y"].shape[1]),
            y_mean=float(finite.mean()),
            y_std=float(finite.std() or 1.0),
            metafeature_names=list(metafeature_names),
            mf_mean=M.mean(0).tolist() if M.size else [],
            mf_std=[float(s) if s > 1e-12 else 1.0 for s in (M.std(0) if M.size else [])],
            logc_mean=float(logc.mean()) if logc.size else 0.0,
            logc_std=float(logc.std() or 1.0) if logc.size else 1.0,
            mf_train_mean=arrays["M"].mean(0).tolist() if arrays["M"].size else [],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Preprocessing":
        return cls(**data)

    # ----------------------------------------------------------------- transforms
    def z(self, y: np.ndarray, sign: float | np.ndarray = 1.0) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) * sign - self.y_mean) / self.y_std

    def y(self, z: np.ndarray, sign: float = 1.0) -> np.ndarray:
        return (np.asarray(z) * self.y_std + self.y_mean) * sign

    def metafeatures(self, mf: Mapping[str, float] | np.ndarray | None) -> np.ndarray:
        """Transform one task's meta-features; a dict must have exactly the trained names."""
        names = self.metafeature_names
        if mf is None:
            if names:
                raise MetaFeatureError(
                    f"This surrogate needs the meta-features {names}; pass metafeatures={{...}} or set "
                    f"the study's {METAFEATURES!r} user attribute."
                )
            return np.zeros(0)
        if isinstance(mf, Mapping):
            missing = [k for k in names if k not in mf]
            unknown = [k for k in mf if k not in names]
            if missing or unknown:
                raise MetaFeatureError(
                    f"Meta-features do not match the surrogate: missing {missing}, unknown {unknown}. "
                    f"It was trained with {names}."
                )
            values = np.array([float(mf[k]) for k in names])
        else:
            values = np.asarray(mf, dtype=np.float64).reshape(-1)
            if values.shape[0] != len(names):
                raise MetaFeatureError(f"Expected {len(names)} meta-features {names}, got {values.shape[0]}.")
        if not np.all(np.isfinite(values)):
            raise MetaFeatureError(f"Meta-features must be finite numbers, got {values.tolist()}.")
        return (slog(values) - np.array(self.mf_mean)) / np.array(self.mf_std)

    def log_cost(self, cost: np.ndarray) -> np.ndarray:
        return (np.log(cost) - self.logc_mean) / self.logc_std

    def cost(self, normalised_log_cost: np.ndarray) -> np.ndarray:
        return np.exp(np.asarray(normalised_log_cost) * self.logc_std + self.logc_mean)


def impute_metafeatures(
    prep: Preprocessing, mf: Mapping[str, float] | None, impute: str | None
) -> tuple[dict[str, float] | None, list[str]]:
    """``mf`` with missing or non-finite names filled (``impute="train_mean"``), and those names.

    With ``impute=None`` nothing changes (the surrogate then refuses incomplete meta-features).
    Names the surrogate does not know are left in place, so the usual error still names them.
    """
    if impute not in IMPUTE_CHOICES:
        raise ValueError(f"impute must be one of {list(IMPUTE_CHOICES)}, not {impute!r}.")
    names = prep.metafeature_names
    if impute is None or not names:
        return (None if mf is None else dict(mf)), []
    given = dict(mf or {})
    missing = [n for n in names if not _finite(given.get(n))]
    if not missing:
        return given, []
    if prep.mf_train_mean is None or len(prep.mf_train_mean) != len(names):
        raise MetaFeatureError(
            f"impute='train_mean' needs the meta-feature means of the surrogate's training tasks, and this "
            f"surrogate was saved without them (before they were stored). Retrain it with meta_train(...), or "
            f"pass all of {names} (missing: {missing})."
        )
    means = dict(zip(names, prep.mf_train_mean))
    filled = {**given, **{n: float(means[n]) for n in missing}}
    return filled, missing


class MetafeatureImputer:
    """:func:`impute_metafeatures` for a sampler: checked once, logged once per dataset.

    A sampler meets the same meta-features on every trial; it logs which names it imputed the
    first time, and can say later which values of a filled dict are guesses (for the record).
    """

    def __init__(self, prep: Preprocessing, impute: str | None) -> None:
        if impute not in IMPUTE_CHOICES:
            raise ValueError(f"impute must be one of {list(IMPUTE_CHOICES)}, not {impute!r}.")
        self.prep = prep
        self.impute = impute
        self._seen: dict[tuple[Any, ...], tuple[dict[str, float] | None, list[str]]] = {}
        self._names: dict[tuple[Any, ...], list[str]] = {}

    def __call__(self, mf: Mapping[str, float] | None) -> dict[str, float] | None:
        key = _key(mf)
        if key not in self._seen:
            filled, names = impute_metafeatures(self.prep, mf, self.impute)
            if names:
                assert filled is not None
                _logger.warning(
                    "Imputed meta-features %s with the surrogate's training means %s: predictions for "
                    "this dataset rest on a guess for them.", names, {n: round(filled[n], 6) for n in names},
                )
                self._names[_key(filled)] = names
            self._seen[key] = (filled, names)
        return self._seen[key][0]

    def imputed(self, filled: Mapping[str, float] | None) -> list[str]:
        """The names of ``filled`` (a result of this imputer) that hold imputed values."""
        return list(self._names.get(_key(filled), []))


def _key(mf: Mapping[str, float] | None) -> tuple[Any, ...]:
    return ("none",) if mf is None else tuple(sorted((str(k), repr(v)) for k, v in mf.items()))


def _finite(v: object) -> bool:
    try:
        return v is not None and math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass
class Batch:
    """Network inputs for ``q`` queries (all float32 tensors)."""

    x: torch.Tensor  # (q, d)
    curve: torch.Tensor  # (q, 2F + 2): prefix z (padded), mask, last value, prefix length fraction
    budget: torch.Tensor  # (q, 1) target fidelity fraction
    mf: torch.Tensor  # (q, m)

    @classmethod
    def build(
        cls,
        x: np.ndarray,
        prefix_z: np.ndarray,
        prefix_len: np.ndarray,
        target: np.ndarray,
        fidelity_max: np.ndarray,
        mf_u: np.ndarray,
        max_fidelity: int,
    ) -> "Batch":
        """``prefix_z`` is ``(q, F)`` with anything beyond ``prefix_len`` ignored."""
        q = x.shape[0]
        F = max_fidelity
        steps = np.arange(F)[None, :]
        mask = (steps < prefix_len[:, None]).astype(np.float64)
        pz = np.where(mask > 0, np.nan_to_num(prefix_z[:, :F]), 0.0)
        last = np.where(
            prefix_len > 0, pz[np.arange(q), np.clip(prefix_len - 1, 0, F - 1)], 0.0
        )
        fmax = np.asarray(fidelity_max, dtype=np.float64)
        curve = np.concatenate(
            [pz, mask, last[:, None], (prefix_len / fmax)[:, None]], axis=1
        )
        base = cls.without_curve(x, target, fmax, mf_u)
        return cls(base.x, torch.as_tensor(curve, dtype=torch.float32), base.budget, base.mf)

    @classmethod
    def without_curve(cls, x: np.ndarray, target: np.ndarray, fidelity_max: np.ndarray, mf_u: np.ndarray) -> "Batch":
        """The inputs of configurations at a budget, with no curve columns: what the cost network reads.

        Why: the cost of every step of every candidate (thousands of rows) would otherwise build
        ``2F + 2`` curve columns per row that the cost network never reads.
        """
        q = x.shape[0]
        fmax = np.asarray(fidelity_max, dtype=np.float64)
        return cls(
            x=torch.as_tensor(x, dtype=torch.float32),
            curve=torch.zeros((q, 0), dtype=torch.float32),
            budget=torch.as_tensor((target / fmax)[:, None], dtype=torch.float32),
            mf=torch.as_tensor(np.array(mf_u, dtype=np.float32)).reshape(q, -1),
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, idx: torch.Tensor | slice) -> "Batch":
        return Batch(self.x[idx], self.curve[idx], self.budget[idx], self.mf[idx])

    def cat(self, other: "Batch") -> "Batch":
        return Batch(
            torch.cat([self.x, other.x]),
            torch.cat([self.curve, other.curve]),
            torch.cat([self.budget, other.budget]),
            torch.cat([self.mf, other.mf]),
        )
