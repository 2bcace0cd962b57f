"""QuickTune's decision rule: what to run next, and whether a running trial is worth continuing.

Notation
--------
mu, sigma: the surrogate's predicted mean and std (sign-adjusted, higher is better) of an action's
score at its target fidelity b; y*: the best score observed so far (at b, or the nearest lower
fidelity); c: the predicted cost of the steps needed to reach b (see :mod:`.acquisition`).

The rule, in the order it is applied
------------------------------------
1. **Portfolio first.** The study's first ``portfolio_first`` new configurations are the members
   of the greedy portfolio of the surrogate's meta-dataset (:mod:`.portfolio`), in order. The
   zero-shot surrogate's own ranking of configurations never seen on this task is less reliable
   than the configurations that won on many earlier tasks, so the worst case of the start is the
   static portfolio's. The pruner lets these members run on while the surrogate, given their
   curves, expects them to end above the best run so far (``keep_portfolio``, ``portfolio_hurdle``).
2. **Then the surrogate.** Every other action is scored by cost-aware expected improvement
   ``EI(mu, sigma; y*) / c ** cost_exponent`` and the best is taken. The actions are *new*
   configurations of the candidate pool (seeded random draws of the space plus the meta-dataset's
   configurations), *neighbours* of this study's best finished runs (``n_local`` of them, where the
   conditioned surrogate knows most), and *resumptions* of paused trials (freeze-thaw).
3. **Continue or stop.** A running trial is scored like a resumption of itself;
   :class:`~optuna_quicktune.pruner.QuickTunePruner` compares that score with the best
   alternative action of the same :class:`Decision`.

A :class:`Decision` is built once per sampler or pruner call from the storage (so workers and
restarted processes agree) and is immutable; the predictions it makes are kept in one bounded
:class:`PredictionCache`, keyed by the surrogate *view* they came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from optuna_quicktune.acquisition import cost_aware_score
from optuna_quicktune.candidates import Pool, local_candidates
from optuna_quicktune.paused_rows import PausedInputs, PausedRows
from optuna_quicktune.prediction_cache import PredictionCache
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.study_state import StudyState, TrialView
from optuna_quicktune.surrogate.model import QuickTuneSurrogate
from optuna_quicktune.surrogate.query_cache import row_keys

__all__ = ["Action", "Decision", "DecisionSettings", "Pool", "PredictionCache", "local_candidates"]


class DecisionSettings(NamedTuple):
    """The sampler's knobs that the decision rule reads (see :class:`~.sampler.QuickTuneSampler`)."""

    horizon: str = "final"
    cost_exponent: float = 0.0
    portfolio_first: int = 5
    portfolio_weights: str = "uniform"
    n_local: int = 64
    local_scale: float = 0.1


@dataclass(frozen=True)
class Action:
    """One thing the study could do next: start a configuration, or resume a paused trial."""

    kind: str  # "new" | "resume" | "continue"
    config: dict[str, Any]
    config_id: str
    score: float
    fidelity: int  # the fidelity the acquisition looked at
    resume_of: int | None = None
    checkpoint: str | None = None
    prefix_len: int = 0
    priority: int = 0  # 1: the next member of the portfolio (taken before any score)
    # The predicted final score (metric units) and std the score came from, when it looked at the
    # final fidelity (NaN otherwise): the trial's prediction record reuses them.
    final_mean: float = float("nan")
    final_std: float = float("nan")


@dataclass(frozen=True)
class Decision:
    """What the study knows and what the surrogate predicts now; shared by sampler, pruner and dashboard."""

    study_name: str
    seed: int
    state: StudyState
    surrogate: QuickTuneSurrogate  # the view decisions use (conditioned on the study, refit if asked)
    metafeatures: dict[str, float] | None
    fidelity_max: int
    sign: float
    settings: DecisionSettings
    pool: Pool
    portfolio_order: tuple[str, ...] = ()
    cache: PredictionCache = field(default_factory=PredictionCache, compare=False, repr=False)

    @property
    def space(self) -> SearchSpace:
        return self.surrogate.space

    # ------------------------------------------------------------------ actions
    def actions(self, *, exclude: int | None = None, limit: int | None = None, claimant: int | None = None) -> list[Action]:
        """Every possible next action, best first (what the next trial would do).

        ``exclude``: a trial whose resumption is not an alternative (the pruner's running trial).
        ``claimant``: the trial choosing; its own earlier claim (written before it yielded to
        another worker) does not count as taken.
        """
        used = self.state.used_config_ids(exclude=claimant)
        pool = self.pool
        # Costs enter the score only through cost ** cost_exponent: with the default 0 they are
        # not predicted at all (the pool's alone are 50 cost-network rows per configuration).
        with_cost = self.settings.cost_exponent != 0
        mean, std = self.new_mean_std()
        cost = self.new_costs() if with_cost else None
        local = self._local_all()
        keep = np.flatnonzero(local.free(used))
        free = pool.free(used)
        if len(keep):
            # Predicted as one named row set (all the neighbours, used or not), so that the
            # predictions follow the views like the pool's, and only then filtered.
            lm, ls, _ = self.cache.get((self.surrogate.view_id, "local", local.key),
                                       lambda: self.predict_horizon(local.X, [np.zeros(0)] * len(local), pool=local,
                                                                    with_cost=False))
            configs = pool.configs + [local.configs[i] for i in keep]
            ids = pool.ids + [local.ids[i] for i in keep]
            mean, std = np.concatenate([mean, lm[keep]]), np.concatenate([std, ls[keep]])
            free = np.concatenate([free, np.ones(len(keep), dtype=bool)])  # the kept neighbours are unused
            if cost is not None:
                cost = np.concatenate([cost, self._scratch_costs(self.config_step_costs(local.X))[keep]])
        else:
            configs, ids = pool.configs, pool.ids
        out: list[Action] = []
        if free.any():
            inc = self.state.incumbent(1 if self.settings.horizon == "next" else self.fidelity_max)
            scores = np.where(free, cost_aware_score(mean, std, inc, cost, self.settings.cost_exponent), -np.inf)
            member = self.next_portfolio_member(used, claimant)
            k = len(ids) if limit is None else min(limit, int(free.sum()))
            order = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
            if member is not None and member in ids:
                j = ids.index(member)
                order = [j] + [i for i in order if i != j]
            final = self.settings.horizon == "final"
            out += [Action("new", configs[i], ids[i], float(scores[i]), 1, priority=int(ids[i] == member),
                           final_mean=float(self.sign * mean[i]) if final else float("nan"),
                           final_std=float(std[i]) if final else float("nan"))
                    for i in order if np.isfinite(scores[i])]
        paused, names = self.state.scorable_paused(self.fidelity_max, exclude)
        out += self.continuations(paused, kind="resume", limit=limit, names=names)
        out.sort(key=lambda a: (-a.priority, -a.score))
        return out if limit is None else out[:limit]

    def continuation(self, number: int) -> Action | None:
        """Continuing trial ``number`` by one more action, scored like any alternative (None: not scorable)."""
        view = self.state.trials.get(number)
        if view is None or not len(view.prefix) or len(view.prefix) >= self.fidelity_max or not view.in_space:
            return None
        return self.continuations([view], kind="continue")[0]

    def final_estimate(self, number: int) -> tuple[float, float] | None:
        """Sign-adjusted predicted final score (mean, std) of trial ``number``'s run given its curve."""
        view = self.state.trials.get(number)
        if view is None or not view.in_space:
            return None
        # A running trial's curve is longer at the next call: its row is never asked for again.
        mean, std = self._final(self.encode([view]), view.prefix, cache=view.state.is_finished())
        return self.sign * mean, std

    def next_portfolio_member(self, used: set[str], claimant: int | None = None) -> str | None:
        """The next unused portfolio member while the study has started fewer than ``portfolio_first``."""
        start = self.portfolio_start(used, claimant)
        return start[0] if start else None

    def portfolio_start(self, used: set[str], claimant: int | None = None) -> list[str]:
        """The portfolio members the study will still start, in order, before any score counts (rule 1)."""
        if not self.portfolio_order:
            return []
        left = self.settings.portfolio_first - self.state.n_started(exclude=claimant)
        return [cid for cid in self.portfolio_order if cid not in used][:max(left, 0)]

    def _local_all(self) -> Pool:
        """All neighbours of the study's three best finished runs (seeded by the study and those runs), used or not."""
        if not self.settings.n_local:
            return Pool([], np.zeros((0, self.space.dim)), [])
        best = self.state.best_runs(3)
        key = (self.seed, tuple(v.number for v in best))
        n, scale = self.settings.n_local, self.settings.local_scale
        return self.cache.get(
            ("local-pool", self.space.fingerprint, n, scale, key, len(self.pool)),
            lambda: Pool.build(self.space, local_candidates(self.space, [v.params for v in best], n, scale, key[:1] + key[1]),
                               exclude=set(self.pool.ids)),
        )

    # ------------------------------------------------------------------ predictions
    def new_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sign-adjusted mean, std and cost of every pool configuration started from scratch."""
        return (*self.new_mean_std(), self.new_costs())

    def new_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`new_predictions` without the costs (they do not follow the view)."""
        key = (self.surrogate.view_id, "new", self.seed, self._mf_key(), self.fidelity_max, self.sign, self.settings.horizon)
        return self.cache.get(key, lambda: self.predict_horizon(
            self.pool.X, [np.zeros(0)] * len(self.pool), pool=self.pool, with_cost=False)[:2])

    def new_costs(self) -> np.ndarray:
        """Predicted cost of taking each pool configuration from scratch to its target fidelity."""
        key = (self.surrogate.cost_id, "new-costs", self.seed, self._mf_key(), self.fidelity_max, self.settings.horizon)
        return self.cache.get(key, lambda: self._scratch_costs(self.pool_step_costs()))

    def _scratch_costs(self, steps: np.ndarray) -> np.ndarray:
        """:meth:`_cost_to` of runs started from scratch (``steps``: their per-step costs)."""
        starts = [np.zeros(0)] * steps.shape[0]
        return self._cost_to(steps, starts, self.targets(starts))

    def final_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """Predicted final score (metric units) of every pool configuration, mean and std."""
        key = (self.surrogate.view_id, "final", self.seed, self._mf_key(), self.fidelity_max, self.sign)
        return self.cache.get(key, lambda: self.surrogate.predict(
            self.pool.X, None, self.fidelity_max, fidelity_max=self.fidelity_max, metafeatures=self.metafeatures, sign=self.sign))

    def continuations(
        self, views: Sequence[TrialView], kind: str, limit: int | None = None,
        names: Sequence[tuple[int, int]] | None = None,
    ) -> list[Action]:
        """Resuming (``kind="resume"``) or continuing each view, scored; the best ``limit`` if given.

        ``names``: each view's ``(number, curve length)`` when the caller has them
        (:meth:`StudyState.scorable_paused`).
        """
        if not views:
            return []
        scores, target, mean, std = self._continuation_scores(views, kind, names)
        order = range(len(views)) if limit is None else np.argsort(-scores, kind="stable")[:limit]
        return [
            Action(kind, dict(views[i].params), views[i].config_id or self.space.config_id(views[i].params),
                   float(scores[i]), int(target[i]), resume_of=views[i].number if kind == "resume" else None,
                   checkpoint=views[i].checkpoint if kind == "resume" else None, prefix_len=len(views[i].prefix),
                   final_mean=float(self.sign * mean[i]) if target[i] == self.fidelity_max else float("nan"),
                   final_std=float(std[i]) if target[i] == self.fidelity_max else float("nan"))
            for i in order
        ]

    def _continuation_scores(
        self, views: Sequence[TrialView], kind: str, names: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[np.ndarray, ...]:
        if kind == "resume":  # a paused curve does not change until it is resumed
            mean, std, cost, target = self._resume_predictions(views, names)
        else:  # a running trial's curve grows at every call: its rows are never asked for again
            prefixes = [v.prefix for v in views]
            X = self.encode(views)
            mean, std, cost = self.predict_horizon(X, prefixes, steps=self.config_step_costs(X), cache=False)
            target = self.targets(prefixes)
        levels, at = np.unique(target, return_inverse=True)
        inc = np.array([self.state.incumbent(int(b)) for b in levels])[at.reshape(-1)]
        return cost_aware_score(mean, std, inc, cost, self.settings.cost_exponent), target, mean, std

    def _resume_predictions(
        self, views: Sequence[TrialView], names: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Sign-adjusted mean, std, cost and target fidelity of resuming each paused run.

        The runs' inputs come from one :class:`PausedRows` table per networks and task setting,
        built once per run; only the predictions follow the view.
        """
        fmax, horizon = self.fidelity_max, self.settings.horizon
        # The rows' curve inputs are the study's scores read through the view's scale (scale_id).
        key = ("paused-rows", self.study_name, self.surrogate.cost_id, self.surrogate.scale_id, self._mf_key(), fmax,
               self.sign, horizon)
        table = self.cache.get(key, PausedRows)
        rows, name = table.lookup(views, self._paused_inputs, names)

        def predict() -> tuple[np.ndarray, np.ndarray]:
            mean, std = self.surrogate.predict_batch(rows.batch, sign=self.sign, keys=rows.keys)
            return self.sign * mean, std

        mean, std = self.cache.get((self.surrogate.view_id, "resume", *name), predict)
        return mean, std, rows.cost, rows.target

    def _paused_inputs(self, views: list[TrialView]) -> PausedInputs:
        """The :class:`PausedInputs` of runs not seen before (see :meth:`_resume_predictions`)."""
        X = self.encode(views)
        prefixes = [v.prefix for v in views]
        target = self.targets(prefixes)
        b = self.surrogate.batch(X, prefixes, target, fidelity_max=self.fidelity_max, metafeatures=self.metafeatures,
                                 sign=self.sign)
        cost = self._cost_to(self.config_step_costs(X), prefixes, target)
        return PausedInputs(b, row_keys(b), target, cost)

    def encode(self, views: Sequence[TrialView]) -> np.ndarray:
        """The encoded configurations of ``views`` (each view encodes its configuration once)."""
        rows = [self.space.encode(v.params) if v.x is None else v.x for v in views]
        return np.stack(rows) if rows else np.zeros((0, self.space.dim))

    def targets(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        if self.settings.horizon == "final":
            return np.full(len(prefixes), self.fidelity_max)
        return np.array([min(len(p) + 1, self.fidelity_max) for p in prefixes])

    def predict_horizon(
        self, X: np.ndarray, prefixes: Sequence[np.ndarray], steps: np.ndarray | None = None, pool: Pool | None = None,
        cache: bool = True, with_cost: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Sign-adjusted mean and std at each action's target fidelity, and the cost to get there.

        ``pool``: ``X`` is that pool's rows started from scratch, so the surrogate may bring its
        earlier predictions of them up to date instead of recomputing them.
        ``with_cost=False``: no cost (None), for callers that score without it.
        """
        s, fmax = self.surrogate, self.fidelity_max
        target = self.targets(prefixes)
        key = None if pool is None else ("pool", pool.key, self._mf_key(), fmax, self.sign, self.settings.horizon)
        mean, std = s.predict(X, prefixes, target, fidelity_max=fmax, metafeatures=self.metafeatures, sign=self.sign,
                              query_key=key, cache=cache)
        if not with_cost:
            return self.sign * mean, std, None
        if steps is None:
            steps = self.pool_step_costs() if pool is self.pool else self.config_step_costs(X)
        return self.sign * mean, std, self._cost_to(steps, prefixes, target)

    def _cost_to(self, steps: np.ndarray, prefixes: Sequence[np.ndarray], target: np.ndarray) -> np.ndarray:
        """Predicted cost of the steps after each prefix up to its target (``steps``: per-step costs)."""
        fmax = self.fidelity_max
        start = np.array([len(p) + 1 for p in prefixes], dtype=np.int64)
        cum = np.concatenate([np.zeros((steps.shape[0], 1)), np.cumsum(steps, axis=1)], axis=1)
        rows = np.arange(steps.shape[0])
        hi, lo = np.clip(target, 0, fmax).astype(np.int64), np.clip(start - 1, 0, fmax)
        return np.where(hi >= start, cum[rows, hi] - cum[rows, lo], 0.0)

    def config_step_costs(self, X: np.ndarray) -> np.ndarray:
        """:meth:`step_costs` of each row, remembered per configuration (cost does not depend on the view).

        One table per cost network and task, not one cache entry per row: a long study scores
        hundreds of paused runs per decision, which would otherwise crowd the bounded cache.
        """
        table = self.cache.get((self.surrogate.cost_id, "step-costs", self._mf_key(), self.fidelity_max), dict)
        keys = [x.tobytes() for x in X]
        missing = [i for i, k in enumerate(keys) if k not in table]
        if missing:
            table.update(zip((keys[i] for i in missing), self.step_costs(X[missing])))
        return np.stack([table[k] for k in keys]) if keys else np.zeros((0, self.fidelity_max))

    def pool_step_costs(self) -> np.ndarray:
        key = (self.surrogate.cost_id, "pool-step-costs", self.seed, self._mf_key(), self.fidelity_max)
        return self.cache.get(key, lambda: self.step_costs(self.pool.X))

    def step_costs(self, X: np.ndarray) -> np.ndarray:
        """Predicted cost of each step 1..fidelity_max of every row of ``X``, shape ``(n, fmax)``."""
        fmax = self.fidelity_max
        if X.shape[0] == 0:
            return np.zeros((0, fmax))
        rows = np.repeat(np.arange(X.shape[0]), fmax)
        steps = np.tile(np.arange(1, fmax + 1), X.shape[0])
        c = self.surrogate.predict_cost(X[rows], steps, fidelity_max=fmax, metafeatures=self.metafeatures)
        return c.reshape(X.shape[0], fmax)

    def prediction_record(self, params: Mapping[str, Any], prefix: np.ndarray, action: Action | None = None) -> dict[str, float]:
        """What is stored with a trial at proposal: predicted final mean/std and next-step cost.

        ``action``: the action chosen for it, whose score already came from that prediction when
        it looked at the final fidelity (then it is not predicted a second time).
        """
        fmax = self.fidelity_max
        x = self.space.encode(params)[None, :]
        if action is not None and np.isfinite(action.final_mean):
            mean, std = action.final_mean, action.final_std
        else:
            mean, std = self._final(x, prefix)
        cost = self.config_step_costs(x)[0, min(len(prefix) + 1, fmax) - 1]
        return {"mean": mean, "std": std, "cost": float(cost), "fidelity": fmax}

    def _final(self, x: np.ndarray, prefix: np.ndarray, cache: bool = True) -> tuple[float, float]:
        """Predicted final score (metric units) and std of one encoded configuration given its curve."""
        fmax = self.fidelity_max
        mean, std = self.surrogate.predict(x, [prefix], fmax, fidelity_max=fmax, metafeatures=self.metafeatures,
                                           sign=self.sign, cache=cache)
        return float(mean[0]), float(std[0])

    def _mf_key(self) -> tuple[tuple[str, float], ...]:
        return tuple(sorted((self.metafeatures or {}).items()))
