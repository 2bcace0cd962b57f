"""The candidates a decision scores as new configurations: the seeded pool, and the neighbours of
a study's best runs.

Why apart from :mod:`.decision`: they are built from the search space and a seed alone (no
surrogate, no study), once per seed or per set of best runs, and the decision only reads them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optuna_quicktune.space import SearchSpace

__all__ = ["Pool", "local_candidates"]


@dataclass(frozen=True)
class Pool:
    """Candidate configurations, their encodings and ids (built once per seed)."""

    configs: list[dict[str, Any]]
    X: np.ndarray
    ids: list[str]

    @classmethod
    def build(cls, space: SearchSpace, configs: Sequence[Mapping[str, Any]], exclude: set[str] = frozenset()) -> "Pool":  # type: ignore[assignment]
        keep, ids, seen = [], [], set(exclude)
        for c in configs:
            cid = space.config_id(c)
            if cid not in seen:
                seen.add(cid)
                ids.append(cid)
                keep.append(dict(c))
        X = space.encode_many(keep) if keep else np.zeros((0, space.dim))
        return cls(keep, X, ids)

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Each configuration id's row."""
        return {cid: i for i, cid in enumerate(self.ids)}

    def free(self, used: set[str]) -> np.ndarray:
        """Mask of the rows whose configuration is not in ``used``.

        Walks ``used`` (the study's configurations), not the pool: a decision asks this several
        times per trial, and a study has far fewer configurations than the pool has rows.
        """
        mask = np.ones(len(self.ids), dtype=bool)
        pos = self.position
        mask[[pos[c] for c in used if c in pos]] = False
        return mask

    @functools.cached_property
    def key(self) -> str:
        """A digest of the pool's configuration ids: names its rows for the surrogate's query cache."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()[:16]


def local_candidates(space: SearchSpace, centres: Sequence[Mapping[str, Any]], n: int, scale: float, seed: Sequence[int]) -> list[dict[str, Any]]:
    """``n`` Gaussian perturbations (std ``scale`` in the [0, 1] encoding) spread over ``centres``."""
    if not centres or n < 1:
        return []
    rng = np.random.default_rng(list(seed))
    X = space.encode_many(list(centres))
    # One draw of (n, d) is the same stream as n draws of d: the candidates do not depend on this.
    steps = rng.normal(0.0, scale, (n, X.shape[1]))
    return [space.decode(np.clip(X[i % len(centres)] + steps[i], 0.0, 1.0)) for i in range(n)]
