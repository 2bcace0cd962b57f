"""Predictions that follow the posterior as a study's runs are added to it.

Why: the sampler scores the same candidates (the pool, the neighbours of the best runs, the
paused trials) after every finished trial, and each finished trial extends the GP's conditioning
set. Scoring them from scratch costs ``O(q n^2)`` per decision; bringing the previous predictions
up to date through the extension blocks costs ``O(q n m)`` (:meth:`Posterior.advance`), and each
row's embedding is computed once. Rows are keyed by their network inputs, so any caller that
predicts the same row again hits the cache, whichever view of the surrogate it holds. A caller
that predicts a fixed set of rows again and again (the sampler's candidate pool) names the set
with a key instead, and then not even the network inputs are rebuilt.

The cache belongs to one network (one set of weights): conditioned views share it, a deep copy
(a refit surrogate) starts empty, and a posterior outside the lineage of the cached one (new
weights, a new meta-context) starts it over.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

from optuna_quicktune.surrogate.gp import Posterior, QueryState
from optuna_quicktune.surrogate.preprocessing import Batch

__all__ = ["QueryCache", "row_keys", "task_rows"]


class QueryCache:
    """Row-keyed :class:`QueryState` of one network, advanced along the posterior's extensions.

    Args:
        max_rows: Rows kept beyond those of the latest request (least recently requested dropped).
    """

    def __init__(self, max_rows: int = 8192, max_states: int = 3) -> None:
        self.max_rows = int(max_rows)
        self.max_states = int(max_states)
        self._lock = threading.Lock()
        # One state per recently used posterior (a study's latest view, the view before it, the
        # unconditioned surrogate), each with its row index; least recently used dropped.
        self._states: OrderedDict[int, tuple[_Chunks, dict[bytes, int]]] = OrderedDict()
        # Named row sets: key -> the set's states by posterior uid (a few keys, a few states each).
        self._sets: OrderedDict[Hashable, OrderedDict[int, QueryState]] = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> "QueryCache":
        return QueryCache(self.max_rows, self.max_states)  # a copy may get other weights: share no rows

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._sets.clear()

    def __len__(self) -> int:
        return sum(len(index) for _, index in self._states.values())

    def _start(self, post: Posterior) -> tuple["_Chunks | None", dict[bytes, int]]:
        """The cached state for ``post``: its own, else the newest ancestor's advanced, else none."""
        if post.uid in self._states:
            return self._states[post.uid]
        for state, index in reversed(self._states.values()):
            advanced = state.advanced(post)
            if advanced is not None:
                return advanced, index
        return None, {}

    def predict_set(
        self, post: Posterior, key: Hashable, make_batch: Callable[[], Batch], embed: Callable[[Batch], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`predict` for a fixed set of rows named by ``key`` (the caller's promise:
        the same key always means the same network inputs); ``make_batch`` runs only on a miss."""
        with self._lock:
            states = self._sets.pop(key, None) or OrderedDict()
            state = states.get(post.uid)
            if state is None:
                state = next((a for a in map(post.advance, reversed(states.values())) if a is not None), None)
            if state is None:
                b = make_batch()
                state = post.query(embed(b), task_rows(b))
            states[post.uid] = state
            states.move_to_end(post.uid)
            while len(states) > self.max_states:
                states.popitem(last=False)
            self._sets[key] = states
            while len(self._sets) > 4 * self.max_states:
                self._sets.popitem(last=False)
        return state.mean, state.var.clamp_min(1e-9)

    def predict(
        self, post: Posterior, b: Batch, embed: Callable[[Batch], torch.Tensor], keys: list[bytes] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (noisy) variance of every row of ``b`` under ``post``.

        ``keys``: ``row_keys(b)``, when the caller kept them from an earlier call.
        """
        if keys is None:
            keys = row_keys(b)
        elif len(keys) != len(b):
            raise ValueError(f"Got {len(keys)} row keys for {len(b)} rows.")
        with self._lock:
            state, index = self._start(post)
            missing: dict[bytes, int] = {}
            for i, k in enumerate(keys):
                if k not in index and k not in missing:
                    missing[k] = i
            if missing:
                rows = torch.as_tensor(list(missing.values()), dtype=torch.long)
                sub = b.select(rows)
                fresh = _Chunks((post.query(embed(sub), task_rows(sub)),))
                base = 0 if state is None else len(state)
                state = fresh if state is None else state.cat(fresh)
                index = dict(index)
                index.update({k: base + j for j, k in enumerate(missing)})
            assert state is not None
            idx = torch.as_tensor([index[k] for k in keys], dtype=torch.long)
            mean, var = state.mean[idx], state.var[idx]
            if len(index) > self.max_rows + len(keys):
                # Keep the rows of this request only; the others are recomputed if asked again.
                keep = torch.unique(idx)
                state = state.rows(keep)
                remap = {int(old): new for new, old in enumerate(keep.tolist())}
                index = {k: remap[i] for k, i in index.items() if i in remap}
            self._states[post.uid] = (state, index)
            self._states.move_to_end(post.uid)
            while len(self._states) > self.max_states:
                self._states.popitem(last=False)
        return mean, var.clamp_min(1e-9)


class _Chunks:
    """The row cache's state: query states of consecutive row blocks, each advanced on its own.

    Why blocks: a long study adds one or two rows at a time (each newly paused run), and joining
    them to one state copies all its ``k(z, Z)`` columns, ``O(q n)`` per added row. Blocks are
    joined like a binary counter instead (a block absorbs the next while that one is at least
    as large), so a row is copied ``O(log q)`` times and there are ``O(log q)`` blocks to advance.
    """

    def __init__(self, blocks: tuple[QueryState, ...]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    @functools.cached_property
    def mean(self) -> torch.Tensor:
        return self.blocks[0].mean if len(self.blocks) == 1 else torch.cat([b.mean for b in self.blocks])

    @functools.cached_property
    def var(self) -> torch.Tensor:
        return self.blocks[0].var if len(self.blocks) == 1 else torch.cat([b.var for b in self.blocks])

    def advanced(self, post: Posterior) -> "_Chunks | None":
        """Every block brought up to ``post`` (None when ``post`` does not descend from their posterior)."""
        out = []
        for b in self.blocks:
            a = post.advance(b)
            if a is None:
                return None
            out.append(a)
        return _Chunks(tuple(out))

    def cat(self, other: "_Chunks") -> "_Chunks":
        blocks = list(self.blocks)
        for b in other.blocks:
            while blocks and len(blocks[-1]) <= len(b):
                b = blocks.pop().cat(b)
            blocks.append(b)
        return _Chunks(tuple(blocks))

    def rows(self, idx: torch.Tensor) -> "_Chunks":
        """The rows ``idx`` (increasing positions) as one block."""
        return _Chunks((self.blocks[0].cat(*self.blocks[1:]).rows(idx),))


def task_rows(b: Batch) -> torch.Tensor:
    """1.0 for rows without an observed curve prefix: they share the target task's effect.

    A row with a prefix has already seen this task's level in its own curve, so the task effect
    (learned from prefix-free points) is not added to it a second time.
    """
    return (b.curve[:, -1] == 0).to(torch.float64)


def row_keys(b: Batch) -> list[bytes]:
    """Each row's key in the cache: the bytes of its network inputs (equal keys, equal inputs)."""
    rows = np.ascontiguousarray(torch.cat([b.x, b.curve, b.budget, b.mf], 1).numpy())
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel().tolist()

