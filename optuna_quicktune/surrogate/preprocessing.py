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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from optuna_quicktune.contract import METAFEATURES
from optuna_quicktune.errors import MetaFeatureError

__all__ = ["Preprocessing", "Batch", "slog"]


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
        return cls(
            x=torch.as_tensor(x, dtype=torch.float32),
            curve=torch.as_tensor(curve, dtype=torch.float32),
            budget=torch.as_tensor((target / fmax)[:, None], dtype=torch.float32),
            mf=torch.as_tensor(np.array(mf_u, dtype=np.float32)).reshape(q, -1),
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def cat(self, other: "Batch") -> "Batch":
        return Batch(
            torch.cat([self.x, other.x]),
            torch.cat([self.curve, other.curve]),
            torch.cat([self.budget, other.budget]),
            torch.cat([self.mf, other.mf]),
        )
