"""The inputs of a study's paused runs, built once per run and gathered by index after.

Why: a long study pauses most of its runs (freeze-thaw), and every decision scores each paused
run as a resumption under the newest view of the surrogate. The predictions must follow the view,
but what goes into them does not change while a run is paused: its encoding, the network inputs
of its curve, their row keys in the surrogate's query cache, and the predicted cost of the steps
that resuming it would take. Rebuilt for every paused run at every decision, they made each trial
of a study cost more than the one before (hundreds of paused runs, each walked in Python several
times per decision); kept here, a decision walks the paused runs once, to look them up.

A table belongs to one study, one surrogate's networks and one task setting (meta-features,
maximum fidelity, direction, horizon): the caller keeps one per such key. Rows are named by the
trial's number and the length of its curve: a paused trial is finished, and Optuna refuses every
change to a finished trial, so within one study that pair names one configuration and one curve
(the same name the surrogate's conditioned views use for their points).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from optuna_quicktune.study_state import TrialView
from optuna_quicktune.surrogate.preprocessing import Batch

__all__ = ["PausedInputs", "PausedRows"]

_TOKENS = itertools.count()


class PausedInputs(NamedTuple):
    """What scoring a set of paused runs reads, one row per run (the caller builds them for new runs)."""

    batch: Batch  # the performance network's inputs at each run's target fidelity
    keys: list[bytes]  # their row keys in the surrogate's query cache
    target: np.ndarray  # (q,) the fidelity each resumption is scored at
    cost: np.ndarray  # (q,) predicted cost of the steps from the end of the curve to the target


class PausedRows:
    """A growing table of :class:`PausedInputs`, with an index from run to row.

    Args:
        max_extra: Rows kept beyond those of the latest request; past that the table keeps only
            the latest request's rows (resumed runs are never asked for again).
    """

    def __init__(self, max_extra: int = 1024) -> None:
        self.max_extra = int(max_extra)
        self._index: dict[tuple[int, int], int] = {}
        self._rows: PausedInputs | None = None
        self._lock = threading.Lock()  # threads of one process share the decision's cache
        self._last: tuple[tuple[tuple[int, int], ...], tuple[PausedInputs, tuple[int, bytes]]] | None = None
        # Names this table's row numbering: a new token whenever rows are renumbered, so that a
        # cached prediction keyed by row numbers is never read for other rows.
        self.token = next(_TOKENS)

    def __len__(self) -> int:
        return len(self._index)

    def lookup(
        self, views: Sequence[TrialView], build: Callable[[list[TrialView]], PausedInputs],
        names: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[PausedInputs, tuple[int, bytes]]:
        """The inputs of ``views`` (building, with ``build``, those of views not seen before), and a
        name of this exact row set (equal names, equal rows) for caching predictions of it.

        ``names``: each view's ``(number, len(prefix))``, when the caller has them.
        """
        names = tuple((v.number, len(v.prefix)) for v in views) if names is None else tuple(names)
        with self._lock:
            # The pruner asks for the same paused runs at every rung of a trial: answered as before.
            if self._last is not None and (names is self._last[0] or names == self._last[0]):
                return self._last[1]
            idx = self._rows_of(names, views, build)
            out = self._gather(idx), (self.token, idx.tobytes())
            self._last = (names, out)
            return out

    def _rows_of(
        self, names: Sequence[tuple[int, int]], views: Sequence[TrialView], build: Callable[[list[TrialView]], PausedInputs],
    ) -> np.ndarray:
        index = self._index
        new: dict[tuple[int, int], int] = {}
        for i, name in enumerate(names):
            if name not in index and name not in new:
                new[name] = i
        if new:
            fresh = build([views[i] for i in new.values()])
            base = len(index)
            index.update({name: base + j for j, name in enumerate(new)})
            self._rows = fresh if self._rows is None else _cat(self._rows, fresh)
        idx = np.fromiter((index[name] for name in names), dtype=np.int64, count=len(names))
        if len(index) > len(names) + self.max_extra:
            idx = self._keep(idx)
        return idx

    def _gather(self, idx: np.ndarray) -> PausedInputs:
        assert self._rows is not None
        r, t = self._rows, torch.as_tensor(idx, dtype=torch.long)
        return PausedInputs(r.batch.select(t), [r.keys[i] for i in idx.tolist()], r.target[idx], r.cost[idx])

    def _keep(self, idx: np.ndarray) -> np.ndarray:
        """Keep only the rows ``idx`` (renumbered in their old order); the new row of each entry of ``idx``."""
        keep, inverse = np.unique(idx, return_inverse=True)
        old = self._gather(keep)
        by_row = {row: name for name, row in self._index.items()}
        self._index = {by_row[int(row)]: new for new, row in enumerate(keep)}
        self._rows = old
        self.token = next(_TOKENS)
        return inverse.astype(np.int64)


def _cat(a: PausedInputs, b: PausedInputs) -> PausedInputs:
    return PausedInputs(a.batch.cat(b.batch), a.keys + b.keys, np.concatenate([a.target, b.target]),
                        np.concatenate([a.cost, b.cost]))
