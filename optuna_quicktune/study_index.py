"""What every decision asks of a study's finished trials, kept as they join the study's head.

Why: the sampler and the pruner ask the study state the same questions at every call (which
configurations are taken, which runs are paused, which finished runs are best, whether a running
trial leads at its step), and each answer walked every trial in Python. A long study (a thousand
trials, most of them paused runs) spent a growing share of each decision there. The answers over
the study's *head* (its leading run of finished trials, see :class:`~.study_state.StudyState`)
change only when trials join the head, so they are brought up to date then, once per new trial,
and a decision walks only the trials after the head.

Every answer equals the full walk's: the head's views never change, except that a later trial may
*continue* one (``TrialView.continued``), which the queries check against the current views.

Notation
--------
A *candidate* is a finished run in the space with a finite best score that nobody continues
(what the neighbour search starts from); *ranked* holds the head's candidates as
``(-best, number)``, in that order. The *lead table* holds each head run's sign-adjusted curve,
forward-filled to a common width: row ``i`` at column ``s - 1`` is its score at step ``s``, or at
its last step if it stopped earlier (how :meth:`~.study_state.StudyState.leads` compares runs).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from optuna.trial import TrialState

if TYPE_CHECKING:
    from optuna_quicktune.study_state import TrialView

__all__ = ["HeadIndex", "is_candidate", "is_resumable", "is_scorable", "is_started"]


def is_candidate(v: "TrialView") -> bool:
    """A finished run in the space with a finite best score that no later trial continues."""
    return v.best > -np.inf and not v.continued and v.state.is_finished() and v.in_space


def is_resumable(v: "TrialView") -> bool:
    """A paused trial with a checkpoint that nobody has continued yet."""
    return v.paused and not v.continued and v.state == TrialState.PRUNED


def is_scorable(v: "TrialView", fidelity_max: int) -> bool:
    """A paused run a surrogate can score as a resumption: in the space, its curve short of ``fidelity_max``."""
    return len(v.prefix) < fidelity_max and v.in_space


def is_started(v: "TrialView") -> bool:
    """A trial that started a configuration of its own (not a resumption)."""
    return v.resume_of is None and v.config_id is not None


@dataclass(frozen=True)
class HeadIndex:
    """The head's answers; immutable (a longer head gets a new index, :meth:`extended`)."""

    sign: float
    used: frozenset[str] = frozenset()
    started: int = 0
    resumable: tuple["TrialView", ...] = ()  # the head's paused runs nobody continues, in trial order
    ranked: tuple[tuple[float, int], ...] = ()
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # lead table rows' trials
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # the lead table
    _scorable: dict[int, tuple] = field(default_factory=dict, repr=False, compare=False)  # scorable(), per fidelity max

    def extended(self, trials: Mapping[int, "TrialView"], new: Sequence[int]) -> "HeadIndex":
        """This index after the trials ``new`` joined the head (``trials``: the head's views now)."""
        views = [trials[n] for n in new]
        gone = {v.resume_of for v in views if v.resume_of is not None}  # continued by a new trial
        ranked = [r for r in self.ranked if r[1] not in gone] if gone else list(self.ranked)
        for v in views:
            if is_candidate(trials[v.number]):
                bisect.insort(ranked, (-v.best, v.number))
        resumable = tuple(v for v in self.resumable if v.number not in gone) + tuple(
            trials[v.number] for v in views if is_resumable(trials[v.number]))
        numbers, values = self._lead_rows([v for v in views if len(v.prefix)])
        return HeadIndex(
            self.sign, self.used | {v.config_id for v in views if v.config_id is not None},
            self.started + sum(map(is_started, views)), resumable, tuple(ranked), numbers, values,
        )

    @functools.cached_property
    def resumable_numbers(self) -> frozenset[int]:
        return frozenset(v.number for v in self.resumable)

    def scorable(self, fidelity_max: int) -> tuple[tuple["TrialView", ...], tuple[tuple[int, int], ...]]:
        """The head's paused runs a surrogate can score as resumptions (in the space, curve shorter
        than ``fidelity_max``), and their names ``(number, curve length)``; computed once per index."""
        got = self._scorable.get(fidelity_max)
        if got is None:
            views = tuple(v for v in self.resumable if is_scorable(v, fidelity_max))
            got = self._scorable[fidelity_max] = (views, tuple((v.number, len(v.prefix)) for v in views))
        return got

    def _lead_rows(self, views: Sequence["TrialView"]) -> tuple[np.ndarray, np.ndarray]:
        if not views:
            return self.numbers, self.values
        width = max(self.values.shape[1], max(len(v.prefix) for v in views))
        old = self.values
        if old.shape[1] < width:  # forward-fill the earlier rows to the new width
            old = old[:, np.minimum(np.arange(width), max(old.shape[1] - 1, 0))] if old.shape[1] else np.zeros((0, width))
        steps = np.arange(width)
        new = np.stack([self.sign * v.prefix[np.minimum(steps, len(v.prefix) - 1)] for v in views])
        return np.concatenate([self.numbers, [v.number for v in views]]).astype(np.int64), np.concatenate([old, new])

    def lead_max(self, step: int, exclude: Iterable[int]) -> float | None:
        """The best finite score at ``step`` (or the last step before it) of the head's runs not in ``exclude``."""
        if not len(self.numbers):
            return None
        col = self.values[:, min(step, self.values.shape[1]) - 1]
        ok = np.isfinite(col)
        for n in exclude:
            i = int(np.searchsorted(self.numbers, n))
            if i < len(self.numbers) and self.numbers[i] == n:
                ok[i] = False
        return float(col[ok].max()) if ok.any() else None

    def best_candidates(self, trials: Mapping[int, "TrialView"], k: int) -> list["TrialView"]:
        """The head's ``k`` best candidates by ``(-best, number)``, skipping runs continued since."""
        out: list[TrialView] = []
        for _, n in self.ranked:
            v = trials[n]
            if not v.continued:
                out.append(v)
                if len(out) == k:
                    break
        return out
