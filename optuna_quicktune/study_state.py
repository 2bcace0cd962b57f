"""What the sampler and pruner know about the target study, read from the storage on each call.

Every call reads the study's trials again, so two workers, or a process restarted after a crash,
reach the same decisions. What a caller may keep between calls (``memo``) is only what cannot
change: the views of finished trials, and the state of the study's leading run of finished trials,
which a long study would otherwise rebuild at every decision. A build with it equals one without.

Notation
--------
A *chain* is a trial plus the continuation trials that resume it (``quicktune.resume_of``). Its
*prefix* is the stitched curve: the parent's steps then the child's. Fidelities are global steps of
the configuration (a child reports from where its parent stopped).
"""

from __future__ import annotations

import dataclasses
import heapq
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import chains, contract
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.study_index import HeadIndex, is_candidate, is_resumable, is_scorable, is_started

__all__ = ["TrialView", "StudyState", "trial_params", "trial_config_id"]



@dataclass(frozen=True)
class TrialView:
    """One trial as the decision reads it. Frozen: finished trials' views are shared between builds."""

    number: int
    state: TrialState
    params: dict[str, Any]
    config_id: str | None
    prefix: np.ndarray  # stitched curve of the chain up to this trial's last report
    resume_of: int | None
    paused: bool
    checkpoint: str | None = None
    continued: bool = False  # another trial resumes this one
    in_space: bool = True  # the configuration lies in the state's search space (the surrogate can score it)
    best: float = -np.inf  # the best (sign-adjusted) finite score of the chain so far
    x: np.ndarray | None = None  # the configuration's encoding in the state's space (None: not in it)

    @property
    def is_end(self) -> bool:
        """A finished run in the space whose last report is finite: a point the surrogate is conditioned on."""
        return self.in_space and self.state.is_finished() and len(self.prefix) > 0 and bool(np.isfinite(self.prefix[-1]))


@dataclass
class StudyState:
    space: SearchSpace
    trials: dict[int, TrialView] = field(default_factory=dict)
    best_at: dict[int, float] = field(default_factory=dict)  # fidelity -> best sign*value observed
    ends: tuple[TrialView, ...] = ()  # the finished runs the surrogate is conditioned on (TrialView.is_end)
    end_points: frozenset[tuple[int, int]] = frozenset()  # (number, length) of each end: names the conditioning set
    # The head's answers (None: none kept, every query walks every trial) and the trials after it.
    index: HeadIndex | None = field(default=None, repr=False, compare=False)
    tail: tuple[int, ...] = ()

    @classmethod
    def build(
        cls, trials: Sequence[FrozenTrial], space: SearchSpace, sign: float, memo: dict[Any, Any] | None = None
    ) -> "StudyState":
        """The state of ``trials``.

        ``memo`` (a dict the caller keeps between calls) caches the view of every finished trial,
        whose reports can no longer change (keyed by what the view depends on: its reports, the
        attributes read, its parent's curve), and the state of the study's leading run of finished
        trials, which the next build extends instead of re-reading (a long study's decisions would
        otherwise each cost a pass over every trial); the result is the same with or without it.
        """
        numbers = [t.number for t in trials]
        ordered = trials if all(map(operator.lt, numbers, numbers[1:])) else sorted(trials, key=lambda t: t.number)
        head = _Head.empty(sign) if memo is None else memo.get(("head", space.fingerprint, sign), _Head.empty(sign))
        if not head.leads(ordered):
            head = _Head.empty(sign)
        k = next((i for i in range(len(head.ids), len(ordered)) if not ordered[i].state.is_finished()), len(ordered))
        if memo is not None and k > len(head.ids):
            # The finished trials since the last build join the head, which later builds reuse.
            st = cls(space, dict(head.trials))
            joined = ordered[len(head.ids):k]
            best = st._add(joined, sign, memo)
            new = tuple(st.trials[t.number] for t in joined if st.trials[t.number].is_end)
            head = _Head(head.ids + _identities(joined), st.trials, _merge_best(head.best, best),
                         head.ends + new, head.end_points | _points(new),
                         head.index.extended(st.trials, [t.number for t in joined]))
            memo[("head", space.fingerprint, sign)] = head
        st = cls(space, dict(head.trials))
        rest = ordered[len(head.ids):]
        st.best_at = _merge_best(head.best, st._add(rest, sign, memo))
        new = tuple(st.trials[t.number] for t in rest if st.trials[t.number].is_end)
        # The head's set itself when nothing was added (its hash is computed once, not per build).
        st.ends, st.end_points = head.ends + new, (head.end_points | _points(new)) if new else head.end_points
        st.index, st.tail = head.index, tuple(t.number for t in rest)
        return st

    def _add(self, trials: Sequence[FrozenTrial], sign: float, memo: dict[Any, Any] | None) -> dict[int, float]:
        """Add the views of ``trials`` (in number order, after those already here); their best by step."""
        reports: list[tuple[np.ndarray, np.ndarray]] = []
        for t in trials:
            parent = contract.read_resume_of(t)
            parent_view = None if parent is None else self.trials.get(parent)
            key = _memo_key(t, parent_view, sign)
            hit = None if memo is None or key is None else memo.get(key)
            if hit is None:
                hit = _view(t, parent, parent_view, self.space, sign)
                if memo is not None and key is not None:
                    memo[key] = hit
            view, report = hit
            if parent_view is not None and not parent_view.continued:
                # A failed continuation also ends the chain: resuming again would likely fail again.
                # Memoised views are shared between builds and never changed: this one is copied.
                self.trials[parent] = dataclasses.replace(parent_view, continued=True)
            self.trials[t.number] = view
            reports.append(report)
        return chains.best_by_step(reports)

    # ------------------------------------------------------------------ queries
    def used_config_ids(self, exclude: int | None = None) -> set[str]:
        """Configurations already started, enqueued or finished (never proposed again as new)."""
        h = self.index
        if h is None or (exclude is not None and exclude in self.trials and exclude not in self.tail):
            return {v.config_id for n, v in self.trials.items() if v.config_id is not None and n != exclude}
        out = set(h.used)
        out.update(v.config_id for n in self.tail if (v := self.trials[n]).config_id is not None and n != exclude)
        return out

    def resumable(self) -> list[TrialView]:
        """Paused trials with a checkpoint that nobody has continued yet."""
        if self.index is None:
            return [v for v in self.trials.values() if is_resumable(v)]
        tail, gone = self._tail_views()
        return [v for v in self.index.resumable if v.number not in gone] + [v for v in tail if is_resumable(v)]

    def _tail_views(self) -> tuple[list[TrialView], set[int]]:
        """The views after the head, and the head runs they continue."""
        tail = [self.trials[n] for n in self.tail]
        return tail, {v.resume_of for v in tail if v.resume_of is not None}

    def scorable_paused(
        self, fidelity_max: int, exclude: int | None = None,
    ) -> tuple[Sequence[TrialView], Sequence[tuple[int, int]]]:
        """The paused runs a decision scores as resumptions (in the space, curve shorter than
        ``fidelity_max``; ``exclude`` aside), and their names ``(number, curve length)``.

        Why the names: the paused-run table (:class:`~.paused_rows.PausedRows`) recognises a set
        it has seen by them; from the head they come ready, the same object at every decision.
        """
        h = self.index
        if h is None:
            views = [v for v in self.resumable() if v.number != exclude and is_scorable(v, fidelity_max)]
            return views, tuple((v.number, len(v.prefix)) for v in views)
        tail, gone = self._tail_views()
        gone.add(exclude)
        views, names = h.scorable(fidelity_max)
        if not gone.isdisjoint(h.resumable_numbers):
            keep = [i for i, v in enumerate(views) if v.number not in gone]
            views, names = tuple(views[i] for i in keep), tuple(names[i] for i in keep)
        more = [v for v in tail if is_resumable(v) and v.number != exclude and is_scorable(v, fidelity_max)]
        if more:
            views, names = views + tuple(more), names + tuple((v.number, len(v.prefix)) for v in more)
        return views, names

    def n_started(self, exclude: int | None = None) -> int:
        """How many trials started a configuration of their own (not resumptions), ``exclude`` aside."""
        if self.index is None:
            return sum(1 for v in self.trials.values() if is_started(v) and v.number != exclude)
        mine = exclude is not None and exclude in self.trials and is_started(self.trials[exclude])
        return self.index.started + sum(1 for n in self.tail if is_started(self.trials[n])) - int(mine)

    def best_runs(self, k: int) -> list[TrialView]:
        """The ``k`` finished runs with the best scores (ties: the earlier trial) that nobody continues."""
        if self.index is None:
            pool = [v for v in self.trials.values() if is_candidate(v)]
        else:
            pool = self.index.best_candidates(self.trials, k)
            pool += [v for n in self.tail if is_candidate(v := self.trials[n])]
        return heapq.nsmallest(k, pool, key=lambda v: (-v.best, v.number))

    def n_observations(self) -> int:
        return int(sum(len(v.prefix) for v in self.trials.values() if v.resume_of is None))

    def incumbent(self, fidelity: int) -> float:
        """Best observed (sign-adjusted) score at ``fidelity``, else at the nearest lower one."""
        for b in range(fidelity, 0, -1):
            if b in self.best_at:
                return self.best_at[b]
        return -np.inf

    def leads(self, number: int, step: int, sign: float) -> bool:
        """Whether trial ``number``'s chain leads at ``step``: no other run did better there or on its way.

        Each other chain is compared at ``step`` if it got there, else at its last step (a run that
        has reached further than everyone else leads while it stays ahead of what the others
        showed). The trials ``number`` continues (its ancestors) share its curve and are not
        "other" runs. False when there is no other run to compare with.
        """
        chain, n = set(), number
        while n is not None and n not in chain:
            chain.add(n)
            n = self.trials[n].resume_of if n in self.trials else None
        mine = sign * float(self.trials[number].prefix[step - 1])
        h = self.index
        rest = self.trials if h is None or h.sign != sign else {n: self.trials[n] for n in self.tail}
        others = [
            sign * float(v.prefix[min(step, len(v.prefix)) - 1]) for k, v in rest.items()
            if k not in chain and len(v.prefix) > 0
        ]
        others = [o for o in others if np.isfinite(o)]
        if rest is not self.trials:
            head = h.lead_max(step, chain)  # type: ignore[union-attr]
            others += [] if head is None else [head]
        return bool(others) and bool(np.isfinite(mine)) and mine >= max(others)

    def has_other_runs(self, number: int) -> bool:
        """Whether any run outside trial ``number``'s chain has reported a score."""
        chain, n = set(), number
        while n is not None and n not in chain:
            chain.add(n)
            n = self.trials[n].resume_of if n in self.trials else None
        return any(len(v.prefix) > 0 for k, v in self.trials.items() if k not in chain)


def trial_params(t: FrozenTrial) -> dict[str, Any]:
    """The trial's parameters: suggested ones, else those it was enqueued with (before it suggests)."""
    return dict(t.params) if t.params else dict(t.system_attrs.get("fixed_params") or {})


def trial_config_id(t: FrozenTrial, space: SearchSpace, params: dict[str, Any] | None = None) -> str | None:
    """The configuration a trial holds: its ``quicktune.config_id``, else the id of its parameters in ``space``."""
    cid = t.user_attrs.get(contract.CONFIG_ID)
    if cid is None:
        params = trial_params(t) if params is None else params
        cid = space.config_id(params) if params and space.contains(params) else None
    return cid


def _memo_key(t: FrozenTrial, parent: "TrialView | None", sign: float) -> tuple[Any, ...] | None:
    """What a finished trial's view depends on (None: not finished, so not memoised).

    Optuna refuses every update of a finished trial (reports and attributes alike), so its own
    part is named by its id and state; its parent's curve is part of the key.
    """
    if not t.state.is_finished():
        return None
    # A parent's reported steps never change once reported, so its number and length name its curve.
    parent_key = None if parent is None else (parent.number, len(parent.prefix))
    return ("view", t._trial_id, t.number, t.datetime_start, t.state, len(t.intermediate_values),  # noqa: SLF001
            parent_key, sign)


def _view(
    t: FrozenTrial, parent: int | None, parent_view: "TrialView | None", space: SearchSpace, sign: float,
) -> tuple["TrialView", tuple[np.ndarray, np.ndarray]]:
    steps, own_v = _curve(t)
    base = parent_view.prefix if parent_view is not None else np.zeros(0)
    prefix = chains.continue_curve(base, None, steps, own_v)[0]
    prefix.flags.writeable = False  # shared by every build that memoises this view
    params = trial_params(t)
    config_id = trial_config_id(t, space, params)
    in_space = bool(params) and space.contains(params)
    view = TrialView(
        number=t.number,
        state=t.state,
        params=params,
        config_id=config_id,
        prefix=prefix,
        resume_of=parent,
        paused=(bool(t.user_attrs.get(contract.PAUSED, False))
                or (t.state == TrialState.PRUNED and bool(t.user_attrs.get(contract.CHECKPOINT)))) and not chains.diverged(own_v),
        checkpoint=t.user_attrs.get(contract.CHECKPOINT),
        in_space=in_space,
        best=float(np.max(sign * prefix[np.isfinite(prefix)])) if np.isfinite(prefix).any() else -np.inf,
        x=space.encode(params) if in_space else None,
    )
    return view, (steps, sign * own_v)


def _curve(t: FrozenTrial) -> tuple[np.ndarray, np.ndarray]:
    """A trial's reported steps (sorted) and values (a finished trial's are memoised with its view)."""
    own = t.intermediate_values
    steps = np.array(sorted(own), dtype=np.int64)
    return steps, np.array([own[int(s)] for s in steps], dtype=np.float64)


@dataclass(frozen=True)
class _Head:
    """The views of a study's leading finished trials (which never change), and their best by step."""

    ids: tuple[tuple[int, Any], ...]
    trials: dict[int, TrialView]
    best: dict[int, float]
    ends: tuple[TrialView, ...]
    end_points: frozenset[tuple[int, int]]
    index: HeadIndex

    @classmethod
    def empty(cls, sign: float) -> "_Head":
        return cls((), {}, {}, (), frozenset(), HeadIndex(sign))

    def leads(self, ordered: Sequence[FrozenTrial]) -> bool:
        """Whether ``ordered`` starts with these very trials.

        A study's trial numbers are unique and a finished trial never changes, so the same storage
        rows (trial id and start time) at both ends of ``n`` consecutive numbers mean the same head.
        """
        n = len(self.ids)
        return n == 0 or (
            n <= len(ordered) and ordered[n - 1].number - ordered[0].number == n - 1
            and _identities([ordered[0], ordered[n - 1]]) == (self.ids[0], self.ids[-1])
        )


def _identities(trials: Sequence[FrozenTrial]) -> tuple[tuple[int, Any], ...]:
    return tuple((t._trial_id, t.datetime_start) for t in trials)  # noqa: SLF001


def _points(ends: Sequence[TrialView]) -> frozenset[tuple[int, int]]:
    return frozenset((v.number, len(v.prefix)) for v in ends)


def _merge_best(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    if not a:
        return b
    out = dict(a)
    for step, v in b.items():
        if step not in out or v > out[step]:
            out[step] = v
    return out
