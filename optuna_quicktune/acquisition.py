"""Cost-aware expected improvement at the next fidelity (Quick-Tune / DyHPO).

Notation
--------
mu, sigma: predicted mean and std of the (sign-adjusted, higher is better) score at the target
fidelity b of a candidate; y_b: the incumbent, the best score observed at b (or at the closest
lower fidelity); c: the predicted cost of the steps needed to reach b.

    EI = (mu - y_b) * Phi(u) + sigma * phi(u),   u = (mu - y_b) / sigma
    acquisition = EI / c ** cost_exponent

With no observation yet (y_b = -inf) EI is undefined; the acquisition then ranks by mu alone, which
is the zero-shot portfolio order. ``cost_exponent = 0`` ignores cost.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = ["expected_improvement", "cost_aware_score"]

_SQRT_2PI = float(np.sqrt(2 * np.pi))


def expected_improvement(mean: np.ndarray, std: np.ndarray, incumbent: np.ndarray | float) -> np.ndarray:
    mean, std = np.asarray(mean, dtype=np.float64), np.maximum(np.asarray(std, dtype=np.float64), 1e-12)
    inc = np.broadcast_to(np.asarray(incumbent, dtype=np.float64), mean.shape)
    u = (mean - inc) / std
    ei = (mean - inc) * ndtr(u) + std * np.exp(-0.5 * u * u) / _SQRT_2PI
    return np.where(np.isfinite(inc), np.maximum(ei, 0.0), np.nan)


def cost_aware_score(
    mean: np.ndarray,
    std: np.ndarray,
    incumbent: np.ndarray | float,
    cost: np.ndarray | None,
    cost_exponent: float = 1.0,
) -> np.ndarray:
    """EI per unit of predicted cost; falls back to the mean where there is no incumbent.

    Where some candidates have an incumbent and others do not (a fidelity nobody reached yet),
    the latter get their EI against the lowest finite incumbent so that the two stay comparable.
    ``cost=None`` (not predicted) is allowed with ``cost_exponent=0``, where any cost divides by 1.
    """
    if cost is None and cost_exponent != 0:
        raise ValueError("cost_aware_score needs the predicted cost when cost_exponent is not 0.")
    mean = np.asarray(mean, dtype=np.float64)
    inc = np.broadcast_to(np.asarray(incumbent, dtype=np.float64), mean.shape).copy()
    finite = np.isfinite(inc)
    if not finite.any():
        return mean.copy()
    inc[~finite] = inc[finite].min()
    ei = expected_improvement(mean, std, inc)
    if cost is None:
        return ei
    cost = np.maximum(np.asarray(cost, dtype=np.float64), 1e-12)
    return ei / cost**cost_exponent
