"""The meta-dataset as a portfolio table, and the (dataset-aware) greedy portfolio built from it.

Notation
--------
T meta-training tasks, N configurations (the union of the configurations run on them).
``R[t, j]`` is configuration j's normalised regret on task t: its best (sign-adjusted) score over its
curve, mapped to [0, 1] per task (the task's best configuration 0, its worst 1; NaN where task t
never ran j). Per-task normalisation makes tasks with different score levels count alike: the
table says *which configurations win on a task*, not how high a task's scores are.

A greedy portfolio with task weights ``w`` picks, one member at a time, the configuration that most
lowers ``sum_t w_t * min_{j in portfolio} R[t, j]`` (ties broken by the weighted mean regret).
Uniform weights give the static best-on-average portfolio (Wistuba et al. 2015; Feurer et al.
2015); meta-feature kernel weights make it *dataset-aware*: tasks that look like the target count
more. The same table and the same greedy rule serve the benchmark's ``portfolio`` baseline and
:class:`~optuna_quicktune.sampler.QuickTuneSampler`, so both see exactly the same meta-dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.space import SearchSpace

__all__ = ["PortfolioTable", "greedy_order", "metafeature_weights"]


@dataclass(frozen=True)
class PortfolioTable:
    """Normalised regret of every meta-dataset configuration on every meta-training task."""

    X: np.ndarray  # (N, D) encoded configurations
    R: np.ndarray  # (T, N) normalised regret in [0, 1], NaN where not run
    metafeatures: np.ndarray  # (T, M) raw meta-feature values (M may be 0)
    metafeature_names: tuple[str, ...]
    tasks: tuple[str, ...]

    @classmethod
    def from_metadataset(cls, md: MetaDataset) -> "PortfolioTable":
        ids: dict[str, int] = {}
        configs: list[Mapping[str, object]] = []
        best: dict[tuple[int, int], float] = {}
        for r in md.runs:
            cid = md.space.config_id(r.config)
            j = ids.setdefault(cid, len(ids))
            if j == len(configs):
                configs.append(r.config)
            curve = np.asarray(r.curve, dtype=np.float64)
            finite = curve[np.isfinite(curve)]
            if finite.size == 0:
                continue
            sign = 1.0 if md.tasks[r.task].direction == "maximize" else -1.0
            v = float(np.max(sign * finite))
            key = (r.task, j)
            best[key] = max(best.get(key, -np.inf), v)
        T, N = len(md.tasks), len(configs)
        S = np.full((T, N), np.nan)
        for (t, j), v in best.items():
            S[t, j] = v
        names = tuple(md.metafeature_names)
        mf = np.array([[float(t.metafeatures[k]) for k in names] for t in md.tasks]).reshape(T, len(names))
        X = md.space.encode_many(configs) if configs else np.zeros((0, md.space.dim))
        return cls(X=X, R=_normalise(S), metafeatures=mf, metafeature_names=names, tasks=tuple(t.name for t in md.tasks))

    def without_tasks(self, names: Sequence[str]) -> "PortfolioTable":
        keep = [i for i, t in enumerate(self.tasks) if t not in set(names)]
        return PortfolioTable(self.X, self.R[keep], self.metafeatures[keep], self.metafeature_names,
                              tuple(self.tasks[i] for i in keep))

    def configs(self, space: SearchSpace) -> list[dict[str, object]]:
        return [space.decode(x) for x in self.X]

    def weights(self, metafeatures: Mapping[str, float] | None) -> np.ndarray:
        """Task weights for a target: meta-feature kernel weights, or uniform without meta-features."""
        if metafeatures is None or not self.metafeature_names or len(self.tasks) < 2:
            return np.ones(len(self.tasks))
        target = np.array([float(metafeatures[k]) for k in self.metafeature_names])
        return metafeature_weights(self.metafeatures, target)

    def order(self, weights: np.ndarray | None = None, size: int | None = None) -> list[int]:
        """Greedy portfolio (column indices), best first."""
        w = np.ones(len(self.tasks)) if weights is None else np.asarray(weights, dtype=np.float64)
        return greedy_order(self.R, w, self.R.shape[1] if size is None else size)

    def task_bests(self) -> list[int]:
        """Each task's best configuration (column indices, duplicates once), in greedy order.

        RUSH's warm start: the configurations that won on earlier tasks.
        """
        R = np.where(np.isfinite(self.R), self.R, np.inf)
        cols = sorted({int(np.argmin(row)) for row in R if np.isfinite(row).any()})
        sub = greedy_order(self.R[:, cols], np.ones(len(self.tasks)), len(cols))
        return [cols[i] for i in sub]


def _normalise(S: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        best = np.nanmax(np.where(np.isfinite(S), S, -np.inf), axis=1, keepdims=True)
        worst = np.nanmin(np.where(np.isfinite(S), S, np.inf), axis=1, keepdims=True)
        R = (best - S) / np.maximum(best - worst, 1e-12)
    return np.where(np.isfinite(S), np.clip(R, 0.0, 1.0), np.nan)


def greedy_order(R: np.ndarray, weights: np.ndarray, size: int) -> list[int]:
    """Greedy weighted portfolio over the columns of ``R`` (tasks x candidates, NaN = not run).

    A configuration a task never ran earns no credit there (regret 1). Ties (once the weighted
    portfolio regret is 0) are broken by the weighted mean regret, then by column order.
    """
    R = np.asarray(R, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(R.shape[0], 1.0 / max(R.shape[0], 1))
    filled = np.where(np.isfinite(R), R, 1.0)
    observed = np.isfinite(R)
    denom = (w[:, None] * observed).sum(0)
    mean_r = np.where(denom > 0, (w[:, None] * np.where(observed, R, 0.0)).sum(0) / np.maximum(denom, 1e-12), 1.0)
    current = np.ones(R.shape[0])
    chosen: list[int] = []
    for _ in range(min(size, R.shape[1])):
        gain = (w[:, None] * np.minimum(current[:, None], filled)).sum(0)
        gain[chosen] = np.inf
        j = int(np.lexsort((mean_r, np.round(gain, 12)))[0])
        chosen.append(j)
        current = np.minimum(current, filled[:, j])
    return chosen


def metafeature_weights(task_mf: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Gaussian-kernel similarity of each task to the target in standardised signed-log space.

    Meta-features span orders of magnitude (instances, features), hence the log; standardising per
    feature over the meta-training tasks makes each count alike. The bandwidth is the median
    distance between meta-training tasks (the median heuristic), so no constant is tuned: a target
    as far from every task as tasks are from each other gets near-uniform weights.
    """
    Z = _signed_log(np.asarray(task_mf, dtype=np.float64))
    z = _signed_log(np.asarray(target, dtype=np.float64))
    mu, sd = Z.mean(0), Z.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Z, z = (Z - mu) / sd, (z - mu) / sd
    d = np.sqrt(((Z - z) ** 2).sum(1))
    pair = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(2))
    h = float(np.median(pair[pair > 0])) if (pair > 0).any() else 1.0
    return np.exp(-0.5 * (d / h) ** 2)


def _signed_log(a: np.ndarray) -> np.ndarray:
    return np.sign(a) * np.log1p(np.abs(a))
