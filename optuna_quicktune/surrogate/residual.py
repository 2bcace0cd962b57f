"""How much of a fresh configuration's unexplained score is shared with its neighbours on one task.

Notation (normalised scores; see gp.py, "Residual correlation")
--------
For the rows of one held-out task (fresh configurations, each at some budget), the meta-trained GP,
conditioned on the training tasks only, gives a mean ``m``, a posterior covariance ``S`` of the
latent function and a per-row noise ``n``. The residual model says

    y ~ N(m, S + omega * sqrt(n n') * rho(u, u'; ell) + diag((1 - omega) * n)),

``u`` = (configuration encoding, budget fraction), ``rho`` an RBF with one lengthscale for the
configuration and one for the budget. ``omega = 0`` is the meta-trained model as it is.

Why estimate it this way: the surrogate is used zero-shot, so nothing may be fitted on the target
task; but whether a run's miss is shared by its neighbours is a property of the *family* of tasks,
and the validation tasks that meta-training held out are target tasks of that family. The grid
maximum of their marginal likelihood is an empirical-Bayes estimate, with no benchmark in the loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["ResidualFit", "estimate_residual", "SHARES", "CONFIG_SCALES", "BUDGET_SCALES"]

# The grids end where more makes no difference: at share 0.99 a run keeps 1 % of its noise (never
# predicted exactly from its neighbours); at the largest lengthscales the correlation is nearly
# constant over the whole encoding (a task-level shift) and over the whole budget range.
SHARES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99)
CONFIG_SCALES = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)  # Euclidean, in the [0, 1] encoding of the space
BUDGET_SCALES = (0.1, 0.3, 1.0, 3.0, 10.0)  # in budget fractions
_ROWS = 128  # rows per validation task (a random subset of its runs)


class ResidualFit(NamedTuple):
    share: float
    config_scale: float
    budget_scale: float
    loglik_gain: float  # per row, against share 0 (how much the validation tasks prefer it)

    def inv_scale(self, dim_x: int) -> list[float]:
        return [1.0 / self.config_scale] * dim_x + [1.0 / self.budget_scale]

    def report(self) -> dict[str, Any]:
        return {"share": self.share, "config_lengthscale": self.config_scale,
                "budget_lengthscale": self.budget_scale, "loglik_gain_per_row": self.loglik_gain}


def _task_terms(perf: Any, b: Any, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """``m``, ``S``, ``n`` of the rows ``b`` under ``perf``'s context posterior, and their raw inputs."""
    with torch.no_grad():
        z = perf.embed(b)
        m, S = perf.posterior().latent(z)
        n = perf.gp.point_noise(z).numpy().astype(np.float64)
    u = torch.cat([b.x, b.budget], 1).double().numpy()
    return y - m.numpy(), S.numpy(), n, u


def _loglik(r: np.ndarray, S: np.ndarray, n: np.ndarray, corr: np.ndarray, share: float) -> float:
    C = S + share * np.sqrt(np.outer(n, n)) * corr + np.diag((1.0 - share) * n + 1e-6)
    try:
        L = np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        return -math.inf
    a = np.linalg.solve(L, r)
    return float(-0.5 * a @ a - np.log(np.diag(L)).sum() - 0.5 * len(r) * math.log(2 * math.pi))


def estimate_residual(perf: Any, rows: Sequence[tuple[Any, np.ndarray]]) -> ResidualFit:
    """The grid maximum of the summed marginal likelihood of each task's rows ``(batch, y)``.

    ``perf`` must hold its training context and the residual model off (``gp.lead == 0``).
    """
    if perf.gp.lead:
        raise ValueError("Estimate the residual model with it switched off (share 0).")
    terms = [_task_terms(perf, b, np.asarray(y, dtype=np.float64)) for b, y in rows if len(y) >= 2]
    if not terms:
        return ResidualFit(0.0, 1.0, 1.0, 0.0)
    n_rows = sum(len(t[0]) for t in terms)
    dx = [((u[:, None, :-1] - u[None, :, :-1]) ** 2).sum(-1) for *_, u in terms]
    db = [(u[:, None, -1] - u[None, :, -1]) ** 2 for *_, u in terms]
    base = sum(_loglik(r, S, n, np.zeros_like(S), 0.0) for r, S, n, _ in terms)
    best = (base, 0.0, 1.0, 1.0)
    for lc in CONFIG_SCALES:
        for lb in BUDGET_SCALES:
            corrs = [np.exp(-0.5 * (x / lc**2 + s / lb**2)) for x, s in zip(dx, db)]
            for share in SHARES[1:]:
                ll = sum(_loglik(r, S, n, c, share) for (r, S, n, _), c in zip(terms, corrs))
                if ll > best[0] + 1e-9:
                    best = (ll, share, lc, lb)
    ll, share, lc, lb = best
    return ResidualFit(share, lc, lb, (ll - base) / n_rows)


def validation_rows(data: Any, tasks: Sequence[int], seed: int) -> list[tuple[Any, np.ndarray]]:
    """Fresh rows of each task: up to ``_ROWS`` runs, half at their last step, half at a random one."""
    rng = np.random.default_rng(seed)
    return [data.fresh_rows(t, _ROWS, rng) for t in tasks]
