"""Learning curves of paused and resumed runs, stitched one way for every reader.

A run paused by the pruner and continued later is a *chain* of trials linked by
``quicktune.resume_of``; each child reports the global steps that follow its parent's. Both the
meta-dataset (finished chains of earlier studies) and the sampler's view of the running study read
chains through :func:`continue_curve`, so a curve means the same thing wherever it is read.

The rule: a chain's curve is the longest run of consecutive steps ``1, 2, ..., L`` (at most the
task's fidelity maximum). A child contributes the steps after its parent's last one; steps it
re-reports are ignored; the curve ends at the first gap. Why not fill gaps or accept any step:
carrying a value forward invents data, and a step far beyond the fidelity maximum (Optuna accepts
any non-negative step) must not make a reader allocate an array as long as that step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from optuna.trial import FrozenTrial

from optuna_quicktune import contract

__all__ = ["continue_curve", "diverged", "beyond", "best_by_step", "warn_beyond"]

_logger = logging.getLogger(__name__)


def continue_curve(
    prefix: np.ndarray,
    prefix_cost: np.ndarray | None,
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    cost: Sequence[float] | np.ndarray | None = None,
    fidelity_max: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The chain's curve and cumulative cost after appending one trial's reports.

    ``prefix``/``prefix_cost``: the curve so far (empty for the first trial of a chain). ``steps``
    (sorted), ``values`` and ``cost`` (seconds since *this* trial started, aligned with ``steps``;
    None if unknown) are the trial's own reports. The child's costs are offset by the parent's last
    cumulative cost; unknown costs are NaN.
    """
    prefix = np.asarray(prefix, dtype=np.float64)
    n = prefix.shape[0]
    prefix_cost = np.full(n, np.nan) if prefix_cost is None else np.asarray(prefix_cost, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    cost_arr = np.full(steps.shape[0], np.nan) if cost is None else np.asarray(cost, dtype=np.float64)
    limit = np.iinfo(np.int64).max if fidelity_max is None else int(fidelity_max)
    new = np.flatnonzero((steps > n) & (steps <= limit))
    # Consecutive from n + 1: stop at the first step that is not the next one.
    take = 0
    while take < new.shape[0] and steps[new[take]] == n + 1 + take:
        take += 1
    idx = new[:take]
    offset = prefix_cost[-1] if n else 0.0
    return (np.concatenate([prefix, values[idx]]), np.concatenate([prefix_cost, cost_arr[idx] + offset]))


def diverged(values: Sequence[float] | np.ndarray) -> bool:
    """Whether a curve holds NaN or +-inf: the run diverged, and no later step can undo that."""
    arr = np.asarray(values, dtype=np.float64)
    return bool(arr.size) and not bool(np.all(np.isfinite(arr)))


def beyond(steps: Sequence[int] | np.ndarray, fidelity_max: int) -> list[int]:
    """Reported steps outside ``1..fidelity_max`` (ignored by every reader; worth a warning)."""
    return [int(s) for s in np.asarray(steps, dtype=np.int64) if s < 1 or s > fidelity_max]


def best_by_step(reports: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[int, float]:
    """The largest finite value reported at each step over ``(steps, values)`` pairs.

    A dict keyed by the steps that occur: memory grows with the number of reports, never with the
    step numbers (a trial reporting step 10**9 once must not allocate 10**9 floats).
    """
    if not reports:
        return {}
    steps = np.concatenate([np.asarray(s, dtype=np.int64) for s, _ in reports])
    values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in reports])
    ok = np.isfinite(values) & (steps >= 0)
    steps, values = steps[ok], values[ok]
    if steps.size == 0:
        return {}
    order = np.lexsort((values, steps))  # by step, then value: the last of each step is its best
    steps, values = steps[order], values[order]
    last = np.flatnonzero(np.append(steps[1:] != steps[:-1], True))
    return {int(b): float(v) for b, v in zip(steps[last], values[last])}


_warned_beyond: set[tuple[int, object]] = set()


def warn_beyond(trial: FrozenTrial, fidelity_max: int) -> None:
    """Log once per trial that it reported steps outside ``1..fidelity_max`` (they are ignored)."""
    last = trial.last_step
    key = (trial.number, trial.datetime_start)
    if last is None or 1 <= last <= fidelity_max or key in _warned_beyond:
        return
    _warned_beyond.add(key)
    _logger.warning(
        "Trial %d reported step %d, outside 1..%d (the study's fidelity range): steps beyond it are "
        "ignored. Report step k for the k-th fidelity step, or raise the study's %s 'max'.",
        trial.number, last, fidelity_max, contract.FIDELITY,
    )
