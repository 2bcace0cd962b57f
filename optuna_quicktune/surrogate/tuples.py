"""The meta-training tuples: what one optimisation step of :func:`~.training.meta_train` draws.

A tuple is (run r, target step s, prefix length p < s): inputs are r's configuration, its curve up
to p, the budget s and its task's meta-features; the target is r's normalised score at s. Kept apart
from the training loop because calibration and validation draw the same tuples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from optuna_quicktune.surrogate.preprocessing import Batch, Preprocessing

__all__ = ["TrainingTuples"]


class TrainingTuples:
    """Draws training tuples from the dense arrays of a MetaDataset."""

    def __init__(self, arrays: dict[str, np.ndarray], prep: Preprocessing) -> None:
        self.prep = prep
        self.X = arrays["X"]
        sign = arrays["sign"][arrays["task"]][:, None]
        self.Z = prep.z(arrays["Y"], sign)  # NaN beyond each run's end
        self.lengths = np.isfinite(self.Z).cumprod(axis=1).sum(axis=1).astype(np.int64)
        self.task = arrays["task"]
        self.fmax = arrays["fidelity_max"].astype(np.float64)
        self.mf_u = np.stack([prep.metafeatures(m) for m in arrays["M"]]) if arrays["M"].shape[1] else np.zeros((len(arrays["M"]), 0))
        C = arrays["C"]
        self.logc = np.where(np.isfinite(C) & (C > 0), prep.log_cost(np.where(C > 0, C, 1.0)), np.nan)
        self.runs_by_task = {
            int(t): np.flatnonzero((self.task == t) & (self.lengths > 0)) for t in np.unique(self.task)
        }
        self.tasks = [t for t, r in self.runs_by_task.items() if len(r)]

    def sample(self, tasks: Sequence[int], n: int, rng: np.random.Generator) -> tuple[Batch, np.ndarray]:
        """``n`` tuples from runs of ``tasks`` (uniform over tasks, then runs)."""
        chosen_tasks = rng.choice(np.asarray(tasks), size=n)
        runs = np.array([rng.choice(self.runs_by_task[int(t)]) for t in chosen_tasks])
        L = self.lengths[runs]
        final = rng.random(n) < 0.3
        s = np.where(final, L, rng.integers(1, L + 1))  # target step, 1-based
        fresh = rng.random(n) < 0.4
        p = np.where(fresh, 0, np.floor(rng.random(n) * s).astype(np.int64))  # prefix length < s
        return self._build(runs, s, p), self.Z[runs, s - 1]

    def _build(self, runs: np.ndarray, s: np.ndarray, p: np.ndarray) -> Batch:
        t = self.task[runs]
        return Batch.build(
            self.X[runs], self.Z[runs], p, s.astype(np.float64), self.fmax[t], self.mf_u[t], self.prep.max_fidelity
        )

    def sample_cost(self, tasks: Sequence[int], n: int, rng: np.random.Generator) -> tuple[Batch, np.ndarray] | None:
        mask = np.isin(self.task, np.asarray(tasks))[:, None] & np.isfinite(self.logc)
        idx = np.argwhere(mask)
        if len(idx) == 0:
            return None
        pick = idx[rng.integers(0, len(idx), size=n)]
        runs, s = pick[:, 0], pick[:, 1] + 1
        return self._build(runs, s, np.zeros(n, dtype=np.int64)), self.logc[runs, s - 1]

    def fresh_rows(self, task: int, n: int, rng: np.random.Generator) -> tuple[Batch, np.ndarray]:
        """Up to ``n`` runs of ``task`` with no prefix, half at their last step, half at a random one."""
        runs = self.runs_by_task[task]
        if len(runs) > n:
            runs = np.sort(rng.choice(runs, size=n, replace=False))
        L = self.lengths[runs]
        s = np.where(rng.random(len(runs)) < 0.5, L, rng.integers(1, L + 1))
        return self._build(runs, s, np.zeros(len(runs), dtype=np.int64)), self.Z[runs, s - 1]

    def all_finals(self, task: int) -> tuple[Batch, np.ndarray]:
        """Zero-shot queries of a task: every run at its last step with no prefix."""
        runs = self.runs_by_task[task]
        s = self.lengths[runs]
        return self._build(runs, s, np.zeros(len(runs), dtype=np.int64)), self.Z[runs, s - 1]
