"""Per-task score scales: a surrogate meta-trained on each task's *standardised* scores.

Notation
--------
v = (y - m_t) / s_t: a score ``y`` of meta-training task ``t`` standardised by the mean ``m_t`` and
standard deviation ``s_t`` of all its finite scores (every run, every step), in the metric's own
direction. A surrogate meta-trained on ``v`` (``meta_train(targets="task")``) learns which
configurations win on a task, not each task's score level: zero-shot it ranks a held-out task's
configurations better than one meta-trained on scores normalised once over all tasks
(docs/benchmarks.md, stop 26: Spearman 0.669 with the level removed against 0.621).

Levels are kept *higher-is-better*: ``M = sign * m``. A new task's ``(M, s)`` is unknown. Its prior
is the spread of the meta-training tasks' values, ``M ~ N(M0, tau_m^2)`` and
``log s ~ N(l0, tau_s^2)``; a surrogate on its own (no study) predicts in metric units at the prior's
mode, with the prior's spread added to its variance (:meth:`TaskScalePrior.widen`), so its
zero-shot intervals also cover a task whose level is not the average one. Given a study's observed
scores ``y_i`` and the surrogate's zero-shot predictions ``v_i ~ N(mu_i, sd_i^2)`` (standardised
units, no curve seen) of the same configurations at the same fidelities, ``sign * y_i = M + s v_i``
and :func:`estimate_scale` returns the posterior mode of ``(M, s)``. The sampler re-estimates it
when the number of finished runs doubles (:class:`~optuna_quicktune.views.SurrogateViews`), so a
study pays ``O(log n)`` re-conditionings and every worker derives the same map from the storage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from optuna_quicktune.metadataset import MetaDataset

__all__ = ["TARGETS", "TaskScalePrior", "remap_tasks", "standardise_tasks", "estimate_scale"]

#: ``meta_train(targets=...)``: ``"global"`` normalises scores once over every task; ``"task"`` per task.
TARGETS = ("global", "task")

_MIN_SD = 1e-3  # a prior spread below this (one meta-training task, or equal tasks) is widened to it


@dataclass(frozen=True)
class TaskScalePrior:
    """Where a new task's score level ``m`` and spread ``s`` are expected, from the meta-training tasks."""

    m0: float  # mean of the tasks' higher-is-better levels sign * m_t
    tau_m: float
    l0: float  # mean of log s
    tau_s: float

    @property
    def mode(self) -> tuple[float, float]:
        """The prior's ``(M, s)``: the map a surrogate uses before a study has finished a run."""
        return self.m0, math.exp(self.l0)

    def widen(self, mean: np.ndarray, std: np.ndarray, sign: float) -> np.ndarray:
        """``std`` (metric units, at the prior's map) with the map's own uncertainty added.

        With ``s = s0 (1 + e)``, ``e ~ N(0, tau_s^2)`` (first order in ``log s``):
        ``var = tau_m^2 + std^2 (1 + tau_s^2) + tau_s^2 (sign * mean - M0)^2``.
        """
        dev = sign * np.asarray(mean, dtype=np.float64) - self.m0
        return np.sqrt(self.tau_m**2 + np.square(std) * (1 + self.tau_s**2) + self.tau_s**2 * dev**2)

    @classmethod
    def from_stats(cls, stats: Sequence[tuple[float, float]], signs: Sequence[float]) -> "TaskScalePrior":
        """From each task's ``(m_t, s_t)`` in the metric's units and its direction (+1 maximise)."""
        m = np.array([g * a for (a, _), g in zip(stats, signs)], dtype=np.float64)
        ls = np.log(np.array([b for _, b in stats], dtype=np.float64))
        return cls(float(m.mean()), max(float(m.std()), _MIN_SD * max(1.0, abs(float(m.mean())))),
                   float(ls.mean()), max(float(ls.std()), _MIN_SD))

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TaskScalePrior":
        return cls(float(data["m0"]), float(data["tau_m"]), float(data["l0"]), float(data["tau_s"]))


def remap_tasks(
    md: MetaDataset, per_task: Callable[[np.ndarray, float], Callable[[np.ndarray], np.ndarray]],
) -> MetaDataset:
    """``md`` with each task's finite scores ``v`` replaced by ``f(v)``, ``f = per_task(pooled, sign)``.

    ``per_task`` is called once per task, in order, with every finite score of the task (all runs,
    all steps) and its sign (+1 when higher is better); the runs keep their order.
    """
    by_task: dict[int, list[int]] = {}
    for i, r in enumerate(md.runs):
        by_task.setdefault(r.task, []).append(i)
    out = list(md.runs)
    for t, task in enumerate(md.tasks):
        idx = by_task.get(t, [])
        curves = [np.asarray(md.runs[i].curve, dtype=np.float64).copy() for i in idx]
        f = per_task(np.concatenate([c[np.isfinite(c)] for c in curves]) if idx else np.zeros(0), task.sign)
        for i, c in zip(idx, curves):
            ok = np.isfinite(c)
            c[ok] = f(c[ok])
            out[i] = dataclasses.replace(md.runs[i], curve=c)
    return MetaDataset(md.space, md.tasks, out)


def standardise_tasks(md: MetaDataset) -> tuple[MetaDataset, list[tuple[float, float]]]:
    """``md`` with each task's finite scores standardised by its own mean and std, and those ``(m_t, s_t)``.

    Tasks without finite scores keep ``(0, 1)``; a task whose scores are all equal keeps ``s_t = 1``.
    """
    stats: list[tuple[float, float]] = []

    def standardise(pooled: np.ndarray, sign: float) -> Callable[[np.ndarray], np.ndarray]:
        m = float(pooled.mean()) if pooled.size else 0.0
        s = float(pooled.std()) if pooled.size else 1.0
        s = s if s > 0 else 1.0
        stats.append((m, s))
        return lambda v: (v - m) / s

    return remap_tasks(md, standardise), stats


def estimate_scale(
    prior: TaskScalePrior, y: np.ndarray, mu: np.ndarray, sd: np.ndarray, *, iterations: int = 50,
) -> tuple[float, float]:
    """Posterior mode of ``(m, s)`` given scores ``y`` and their zero-shot predictions ``N(mu, sd^2)``.

    ``-log p = sum_i [(y_i - m - s mu_i)^2 / (2 s^2 sd_i^2) + log s] + prior``; for a fixed ``s`` the
    best ``m`` is a weighted mean, so the search is one-dimensional in ``log s`` (golden section
    over the prior's +-4 tau_s, then the closed-form ``m``). Without scores it is the prior's mode.
    """
    y, mu, sd = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (y, mu, sd))
    ok = np.isfinite(y) & np.isfinite(mu) & np.isfinite(sd) & (sd > 0)
    y, mu, sd = y[ok], mu[ok], sd[ok]
    if y.size == 0:
        return prior.m0, math.exp(prior.l0)
    w = 1.0 / sd**2

    def best_m(s: float) -> float:
        # d/dm: sum w (y - m - s mu) / s^2 = (m - m0) / tau_m^2
        a = w.sum() / s**2 + 1.0 / prior.tau_m**2
        b = (w * (y - s * mu)).sum() / s**2 + prior.m0 / prior.tau_m**2
        return b / a

    def nlp(ls: float) -> float:
        s = math.exp(ls)
        m = best_m(s)
        r = y - m - s * mu
        return float((w * r**2).sum() / (2 * s**2) + y.size * ls
                     + (m - prior.m0) ** 2 / (2 * prior.tau_m**2) + (ls - prior.l0) ** 2 / (2 * prior.tau_s**2))

    lo, hi = prior.l0 - 4 * prior.tau_s, prior.l0 + 4 * prior.tau_s
    g = (math.sqrt(5.0) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = nlp(c), nlp(d)
    for _ in range(iterations):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = nlp(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = nlp(d)
    ls = (lo + hi) / 2
    s = math.exp(ls)
    return float(best_m(s)), float(s)
