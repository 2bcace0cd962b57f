"""How wide the predictive interval is, by how much of the run the prediction already knows.

Why: one scale for every prediction (``std_scale``, the 0.9 quantile of the validation tasks'
``|error| / std`` over a mixture of rows) is right on average and wrong in a way the decision rule
feels. On the 24 LCBench folds (zero-shot, each fold's held-out task, the final score of all 128
configurations given the first ``p`` of 50 epochs) the 90 % interval covered 0.80 of fresh
predictions, 0.61 at ``p = 1``, 0.78 at ``p = 4``, 0.93 at ``p = 16`` and 0.99 at ``p = 45``: too sure
of a short curve's end, too unsure of a long one's. The pruner's tests read exactly these
intervals (a portfolio member is protected while ``mean + 1.645 std`` reaches the best run; a run
is continued while its expected improvement does), so a member whose long curve already shows it
loses ran on, and a run whose short curve starts low was stopped too soon.

The fix is the same calibration, done separately for rows grouped by the share of the target
budget the prefix covers, ``f = prefix length / target``: fresh rows (``f = 0``), then the
geometric bins ``(0, 1/8]``, ``(1/8, 1/4]``, ``(1/4, 1/2]``, ``(1/2, 1)``, geometric because what a
curve says about its end grows with the log of its length (the pruner's rungs are geometric for
the same reason). A bin with too few validation rows keeps the global scale. On the same 24 folds
the coverage became 0.82 (fresh), 0.81 (``p = 1``), 0.89 (``p = 4``), 0.91 (``p = 16``) and 0.93
(``p = 45``). QuickTune's regret did not fall with it (docs/benchmarks.md, stop 23), so it is
``meta_train(calibration="prefix")``, not the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from optuna_quicktune.surrogate.preprocessing import Batch

if TYPE_CHECKING:  # the model imports this module (row_scales), so these names are for type checkers only
    from optuna_quicktune.surrogate.model import PerformanceSurrogate
    from optuna_quicktune.surrogate.tuples import TrainingTuples

__all__ = ["CALIBRATIONS", "EDGES", "Z90", "MIN_ROWS", "calibrate", "prefix_bins", "fit_scales", "row_scales"]

#: ``meta_train(calibration=...)``: one factor for every row, or one per prefix bin.
CALIBRATIONS = ("global", "prefix")

#: Upper edges of the bins with a prefix; bin 0 holds fresh rows, the last bin ``(1/2, 1)``.
EDGES = (0.125, 0.25, 0.5)
#: The standard normal's 0.95 quantile: a 90 % two-sided interval is ``mean +- Z90 * std``.
Z90 = 1.6449
#: Validation rows a bin needs before it gets its own scale.
MIN_ROWS = 30
_CLIP = (0.5, 5.0)


def prefix_bins(b: Batch) -> np.ndarray:
    """Each row's bin: 0 without a prefix, then by ``prefix length / target`` (see :data:`EDGES`)."""
    if b.curve.shape[1] == 0:
        return np.zeros(len(b), dtype=np.int64)
    p = b.curve[:, -1].double().numpy()  # prefix length / fidelity max
    s = b.budget[:, 0].double().numpy()  # target / fidelity max
    f = np.where(s > 0, p / np.where(s > 0, s, 1.0), 0.0)
    return np.where(p > 0, 1 + np.searchsorted(np.asarray(EDGES), f, side="left"), 0).astype(np.int64)


def fit_scales(z_abs: np.ndarray, bins: np.ndarray, fallback: float) -> tuple[float, ...]:
    """Per bin, the factor that makes ``Z90 * std`` cover 90 % of the validation rows' errors."""
    out = []
    for k in range(len(EDGES) + 2):
        z = z_abs[bins == k]
        out.append(float(np.clip(np.quantile(z, 0.9) / Z90, *_CLIP)) if len(z) >= MIN_ROWS else float(fallback))
    return tuple(out)


def row_scales(b: Batch, scales: Sequence[float] | None, fallback: float) -> np.ndarray | float:
    """The std factor of each row of ``b`` (the single ``fallback`` when there are no bins)."""
    if not scales:
        return fallback
    return np.asarray(scales, dtype=np.float64)[prefix_bins(b)]


def calibrate(perf: "PerformanceSurrogate", data: "TrainingTuples", val: Sequence[int], seed: int, *,
              per_bin: bool = False) -> None:
    """Set ``perf``'s std factors from the validation tasks ``val`` (context from the training tasks).

    The global factor comes from 256 tuples per task (the model before stop 23 used it alone); with
    ``per_bin`` each bin of :func:`prefix_bins` also gets its own from 1,024 more.
    """
    perf.set_calibration(1.0)
    z, _ = _errors(perf, data, val, 256, np.random.default_rng(seed + 4), cache=True)
    scale = float(np.clip(np.quantile(z, 0.9) / Z90, *_CLIP))
    if not per_bin:
        perf.set_calibration(scale)
        return
    z, bins = _errors(perf, data, val, 1024, np.random.default_rng(seed + 6), cache=False)
    perf.set_calibration(scale, fit_scales(z, bins, scale))


def _errors(perf: "PerformanceSurrogate", data: "TrainingTuples", val: Sequence[int], n: int,
            rng: np.random.Generator, cache: bool) -> tuple[np.ndarray, np.ndarray]:
    """``|error| / std`` and the prefix bin of ``n`` sampled tuples per validation task."""
    zs, bins = [], []
    for t in val:
        qb, qy = data.sample([t], n, rng)
        m, s = perf.predict_z(qb, cache=cache)
        zs.append(np.abs(qy - m) / s)
        bins.append(prefix_bins(qb))
    return np.concatenate(zs), np.concatenate(bins)
