"""How a surrogate does on held-out meta-training tasks, zero-shot: the figures early stopping,
the task effect and the training report read.

A validation task is predicted from a context of training tasks only, as a new dataset would be.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from optuna_quicktune.surrogate.model import PerformanceSurrogate
from optuna_quicktune.surrogate.tuples import TrainingTuples

__all__ = ["validation_nll", "estimate_task_effect", "validation_report"]


def validation_nll(perf: PerformanceSurrogate, val_sets: list[Any]) -> float:
    """Mean negative log predictive density of held-out query rows given a training-task context (early stopping)."""
    total = 0.0
    with torch.no_grad():
        for (cb, cy), (qb, qy) in val_sets:
            post = perf.gp.condition(perf.embed(cb), torch.as_tensor(cy, dtype=torch.float64))
            mean, var = post.predict(perf.embed(qb))
            y = torch.as_tensor(qy, dtype=torch.float64)
            total += float((0.5 * torch.log(2 * math.pi * var) + 0.5 * (y - mean) ** 2 / var).mean())
    return total / len(val_sets)


def estimate_task_effect(perf: PerformanceSurrogate, data: TrainingTuples, val: list[int]) -> float:
    """Variance of a held-out task's offset from the zero-shot predictions (method of moments).

    Each validation task's final scores are predicted zero-shot from the training tasks' context;
    the spread of the per-task mean residuals, less what their within-task noise explains, is the
    variance of the offset a new task's level has. 0 with fewer than two validation tasks.
    """
    perf.task_effect = 0.0
    perf.invalidate()
    means, noise = [], []
    for t in val:
        qb, qy = data.all_finals(t)
        if len(qy) < 2:
            continue
        with torch.no_grad():
            m, _ = perf.posterior().predict(perf.embed(qb))
        r = np.asarray(qy, dtype=np.float64) - m.numpy()
        means.append(float(r.mean()))
        noise.append(float(r.var(ddof=1)) / len(r))
    if len(means) < 2:
        return 0.0
    return float(max(0.0, np.var(means, ddof=1) - np.mean(noise)))


def validation_report(perf: PerformanceSurrogate, data: TrainingTuples, val: list[int]) -> dict[str, float]:
    """Zero-shot Spearman and 90 % coverage of the validation tasks' final scores, with the calibration used."""
    from scipy.stats import spearmanr

    rhos, covered, n = [], 0, 0
    for t in val:
        qb, qy = data.all_finals(t)
        m, s = perf.predict_z(qb)
        if len(qy) > 2:
            rhos.append(float(spearmanr(m, qy).statistic))
        covered += int(np.sum(np.abs(qy - m) <= 1.6449 * s))
        n += len(qy)
    return {
        "spearman_final_zero_shot": float(np.nanmean(rhos)) if rhos else float("nan"),
        "coverage90_final": covered / max(n, 1),
        "std_scale": perf.std_scale,
        "std_scales": list(perf.std_scales),
        "task_effect": perf.task_effect,
    }
