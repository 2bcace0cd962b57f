"""QuickTuneSampler: zero-shot, cost-aware, freeze-thaw proposals from meta-learned surrogates.

Each new trial is given the action with the best cost-aware expected improvement at its next
fidelity (see :mod:`optuna_quicktune.acquisition`) among

* *new* configurations from a seeded candidate pool (random draws of the space plus the
  configurations of the meta-dataset) that no trial of the study has used, and
* *resumptions* of paused trials (pruned with a checkpoint and not yet continued): the trial then
  carries ``quicktune.resume_of`` and ``quicktune.checkpoint`` and the parent's parameters, and the
  objective continues from the checkpoint.

The decision is rebuilt from the storage on every call, so several workers and restarted processes
agree. A worker writes its choice into its trial and then re-reads the study; if an earlier trial
took the same configuration in the meantime, it moves on to the next best action.

With ``refit=False`` (default, Strangmann et al. 2024) the surrogates' weights are used as they are;
the study enters through its meta-features, each candidate's observed curve prefix and, with
``condition=True`` (default), the GP's conditioning set: every finished run's last score is added to
it, so that what the study saw moves the predictions of similar configurations. ``refit=True``
(Quick-Tune) also fine-tunes a copy on the study's curves after ``refit_every`` finished trials and
again each time their number doubles.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import chains, contract
from optuna_quicktune.acquisition import cost_aware_score
from optuna_quicktune.errors import MetaFeatureError
from optuna_quicktune.metadataset import MetaDataset, Run, Task
from optuna_quicktune.recovery import Recovery, failing_trial
from optuna_quicktune.study_state import StudyState
from optuna_quicktune.surrogate.model import QuickTuneSurrogate

__all__ = ["QuickTuneSampler", "Action"]

_logger = logging.getLogger(__name__)
_PARAMS_KEY = contract.PARAMS  # system attr: the parameters chosen in before_trial


@dataclass
class Action:
    """One thing the study could do next: start a configuration, or resume a paused trial."""

    kind: str  # "new" | "resume"
    config: dict[str, Any]
    config_id: str
    score: float
    fidelity: int  # the fidelity the acquisition looked at
    resume_of: int | None = None
    checkpoint: str | None = None
    prefix_len: int = 0


@dataclass
class _Context:
    surrogate: QuickTuneSurrogate
    metafeatures: dict[str, float] | None
    fidelity_max: int
    sign: float
    state: StudyState


class QuickTuneSampler(BaseSampler):
    """Proposes finetuning configurations in the order pretrained surrogates rank them.

    Args:
        surrogate: A :class:`QuickTuneSurrogate`, a saved folder or a packaged name
            (see :func:`optuna_quicktune.load_surrogate`).
        metafeatures: The target dataset's meta-features; defaults to the study's
            ``quicktune.metafeatures`` user attribute.
        fidelity_max: Fidelity steps of a full run; defaults to the study's ``quicktune.fidelity``
            attribute, then to the surrogate's longest curve.
        n_candidates: Random configurations in the candidate pool (plus the meta-dataset's).
        cost_exponent: How strongly predicted cost discounts EI (EI / cost ** cost_exponent).
            The default 0 ranks by EI alone: with 1, configurations that are merely cheap won
            (measured on LCBench, docs/benchmarks.md), so cost is opt-in.
        horizon: ``"next"`` scores each action by EI at its next fidelity against the incumbent at
            that fidelity, per cost of that step (Quick-Tune); ``"final"`` by EI of the predicted
            final score against the best score observed so far, per predicted cost of the
            remaining steps (freeze-thaw style).
        refit: Fine-tune the surrogates on the study (Quick-Tune) instead of zero-shot use.
        refit_every: With ``refit``, finished trials before the first fine-tuning; the next ones
            come each time the number of finished trials doubles.
        refit_steps: Gradient steps of each fine-tuning.
        condition: Condition the surrogate's GP on the study's own observations (weights
            unchanged, so still zero-shot): the last score of every finished or paused run, as a
            point at its fidelity. What the study saw then moves the predictions of similar
            configurations; without it, the order of new configurations never changes. With
            ``refit``, the latest fine-tuned copy is conditioned the same way.
        seed: Seed of the candidate pool and of fallbacks. ``None`` derives it from the study name,
            so that every worker of a study builds the same pool.
        recovery: Leases of running trials and recovery of dead workers' trials (failed with
            ``quicktune.fail_reason`` and enqueued again once); ``False`` turns it off, a
            :class:`~optuna_quicktune.recovery.Recovery` sets the heartbeat and grace period.
            Works with plain storage URLs and every storage (docs/distributed.md).
    """

    def __init__(
        self,
        surrogate: QuickTuneSurrogate | str,
        *,
        metafeatures: Mapping[str, float] | None = None,
        fidelity_max: int | None = None,
        n_candidates: int = 1000,
        cost_exponent: float = 0.0,
        horizon: str = "final",
        refit: bool = False,
        refit_every: int = 5,
        refit_steps: int = 50,
        condition: bool = True,
        seed: int | None = None,
        recovery: Recovery | bool = True,
    ) -> None:
        warnings.warn(
            "QuickTuneSampler is experimental (optuna-quicktune 0.x): its interface may change.",
            optuna.exceptions.ExperimentalWarning,
            stacklevel=2,
        )
        if isinstance(surrogate, str):
            from optuna_quicktune.pretrained import load_surrogate

            surrogate = load_surrogate(surrogate)
        if not isinstance(surrogate, QuickTuneSurrogate):
            raise TypeError(f"surrogate must be a QuickTuneSurrogate or a path/name, not {type(surrogate).__name__}.")
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}.")
        if cost_exponent < 0:
            raise ValueError(f"cost_exponent must be >= 0, got {cost_exponent}.")
        if horizon not in ("next", "final"):
            raise ValueError(f"horizon must be 'next' or 'final', not {horizon!r}.")
        if refit_every < 1:
            raise ValueError(f"refit_every must be >= 1, got {refit_every}.")
        self.surrogate = surrogate
        self.space = surrogate.space
        self.metafeatures = None if metafeatures is None else contract.parse_metafeatures(metafeatures, attribute="metafeatures=")
        if self.metafeatures is not None:
            surrogate.prep.metafeatures(self.metafeatures)  # fail now, naming the bad names
        self.fidelity_max = fidelity_max
        self.n_candidates = n_candidates
        self.cost_exponent = float(cost_exponent)
        self.horizon = horizon
        self.refit = refit
        self.refit_every = refit_every
        self.refit_steps = refit_steps
        self.condition = bool(condition)
        self.seed = seed
        self._pools: dict[int, tuple[list[dict[str, Any]], np.ndarray, list[str]]] = {}
        self._pred_cache: dict[Any, tuple[np.ndarray, ...]] = {}
        self._refit_cache: dict[tuple[str, int], QuickTuneSurrogate] = {}
        self._paused_cache: dict[tuple[Any, ...], tuple[float, float, float]] = {}
        self._conditioned: dict[Any, QuickTuneSurrogate] = {}  # the latest conditioned views (LRU)
        self._n_conditioned = 0
        self._memo: dict[Any, Any] = {}  # parsed curves of finished trials (StudyState.build)
        self._step_costs: dict[Any, np.ndarray] = {}  # predicted cost of every step of a configuration
        self._in_space: dict[str | None, bool] = {}
        self._warned: set[str] = set()
        self._fallback = RandomSampler(seed=seed)
        self.recovery = recovery if isinstance(recovery, Recovery) else Recovery(enabled=bool(recovery))

    # ================================================================== Optuna API
    def reseed_rng(self) -> None:
        # The pool must stay identical across workers; only the fallback sampler is reseeded.
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        self._check_single_objective(study)
        return dict(self.space.distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._check_single_objective(study)
        params = trial.system_attrs.get(_PARAMS_KEY) or {}
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        self._check_single_objective(study)
        if param_name not in self._warned:
            self._warned.add(param_name)
            optuna.logging.get_logger(__name__).warning(
                f"Parameter {param_name!r} ({param_distribution}) is not in the surrogate's space "
                f"{self.space.name!r} (or has another range); it is sampled independently at random."
            )
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Our own errors fail the trial with quicktune.fail_reason instead of leaving it RUNNING.
        with failing_trial(study, trial):
            try:
                self._check_single_objective(study)
                self.recovery.start(study, trial)  # lease this trial; recover those of dead workers
                self._prepare_trial(study, trial)
            except BaseException:
                self.recovery.stop(trial)
                raise

    def _prepare_trial(self, study: Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get("fixed_params") is not None:
            self._annotate_enqueued(study, trial)
            return
        for _ in range(8):
            ctx = self._context(study)
            actions = self.rank_actions(study, ctx=ctx, limit=8)
            if not actions:
                return  # nothing left in the pool: every parameter falls back to random sampling
            taken = False
            for action in actions:
                self._claim(study, trial, action, ctx)
                fresh = StudyState.build(study.get_trials(deepcopy=False), self.space, ctx.sign, self._memo)
                if not fresh.conflicting(trial.number, action.config_id, action.resume_of):
                    taken = True
                    break
            if taken:
                return
        _logger.warning("Trial %d: every top action was taken by other workers; using the last one.", trial.number)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.recovery.stop(trial)
        if state == TrialState.PRUNED and trial.user_attrs.get(contract.CHECKPOINT) and not chains.diverged(list(trial.intermediate_values.values())):
            _set_user_attr(study, trial, contract.PAUSED, True)

    # ================================================================== public helpers
    def rank_actions(self, study: Study, *, ctx: _Context | None = None, exclude: int | None = None, limit: int | None = None) -> list[Action]:
        """All possible next actions, best first (what the next trial would do)."""
        ctx = ctx or self._context(study)
        fmax, sign = ctx.fidelity_max, ctx.sign
        configs, X, ids = self._pool(study)
        used = ctx.state.used_config_ids()
        mean1, std1, cost1 = self._new_predictions(study, ctx, X)
        free = np.array([cid not in used for cid in ids])
        actions: list[Action] = []
        if free.any():
            inc = ctx.state.incumbent(1 if self.horizon == "next" else fmax)
            scores = cost_aware_score(mean1, std1, inc, cost1, self.cost_exponent)
            scores = np.where(free, scores, -np.inf)
            k = len(ids) if limit is None else min(limit, int(free.sum()))
            order = np.argsort(-scores, kind="stable")[:k]
            actions += [Action("new", configs[i], ids[i], float(scores[i]), 1) for i in order if np.isfinite(scores[i])]
        paused = [v for v in ctx.state.resumable() if v.number != exclude and len(v.prefix) < fmax]
        paused = [v for v in paused if self._contains(v.config_id, v.params)]
        if paused:
            actions += self._continuation_actions(ctx, paused, kind="resume")
        actions.sort(key=lambda a: -a.score)
        return actions if limit is None else actions[:limit]

    def continuation_score(self, study: Study, trial: FrozenTrial, ctx: _Context | None = None) -> float | None:
        """The acquisition of continuing a running trial (used by :class:`QuickTunePruner`)."""
        ctx = ctx or self._context(study)
        view = ctx.state.trials.get(trial.number)
        if view is None or not self.space.contains(trial.params) or len(view.prefix) >= ctx.fidelity_max:
            return None
        view.params = dict(trial.params)
        return self._continuation_actions(ctx, [view], kind="continue")[0].score

    def predict_final(self, study: Study, params: Mapping[str, Any], prefix: Sequence[float] = ()) -> dict[str, float]:
        """Predicted final score (mean, std) and next-step cost of a configuration in this study."""
        ctx = self._context(study)
        return self._prediction_record(ctx, dict(params), np.asarray(prefix, dtype=np.float64))

    def enqueue_portfolio(self, study: Study, k: int = 8) -> list[dict[str, Any]]:
        """Enqueue the ``k`` configurations with the best predicted final score as WAITING trials.

        Configurations the study has already run or enqueued are skipped, so calling this again
        (e.g. after a restart) never duplicates work. Call it from one process.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        ctx = self._context(study)
        configs, X, ids = self._pool(study)
        used = ctx.state.used_config_ids()
        final_mean, final_std = self._final_predictions(study, ctx, X)
        order = np.argsort(-(ctx.sign * final_mean), kind="stable")
        chosen = []
        for i in order:
            if ids[i] in used:
                continue
            cost = float(self._new_predictions(study, ctx, X)[2][i])
            study.enqueue_trial(
                configs[i],
                user_attrs={
                    contract.CONFIG_ID: ids[i],
                    contract.PREDICTED: {
                        "mean": float(final_mean[i]), "std": float(final_std[i]), "cost": cost,
                        "fidelity": ctx.fidelity_max, "source": "portfolio",
                    },
                },
            )
            used.add(ids[i])
            chosen.append(configs[i])
            if len(chosen) == k:
                break
        return chosen

    def current_surrogate(self, study: Study) -> QuickTuneSurrogate:
        """The surrogate used for this study now (the pretrained one unless ``refit``)."""
        return self._context(study).surrogate

    # ================================================================== internals
    def _check_single_objective(self, study: Study) -> None:
        contract.study_direction(study)  # ContractError (a ValueError) for a multi-objective study

    def _contains(self, config_id: str | None, params: Mapping[str, Any]) -> bool:
        if config_id is None:
            return self.space.contains(params)
        if config_id not in self._in_space:
            self._in_space[config_id] = self.space.contains(params)
        return self._in_space[config_id]

    def _seed(self, study: Study) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(hashlib.sha256(study.study_name.encode()).hexdigest()[:8], 16)

    def _context(self, study: Study) -> _Context:
        attrs = study.user_attrs
        mf = self.metafeatures
        if mf is None:
            raw = attrs.get(contract.METAFEATURES)
            if raw is None and self.surrogate.metafeature_names:
                raise MetaFeatureError(
                    f"No meta-features for study {study.study_name!r}: pass metafeatures={{...}} to "
                    f"QuickTuneSampler or set the study's {contract.METAFEATURES!r} user attribute. The "
                    f"surrogate needs {self.surrogate.metafeature_names}."
                )
            mf = contract.read_metafeatures(study)
            if mf is not None:
                self.surrogate.prep.metafeatures(mf)
        fmax = self.fidelity_max
        if fmax is None:
            fmax = contract.read_fidelity(study) or self.surrogate.max_fidelity
        contract.check_fidelity_fits(study, int(fmax), self.surrogate.max_fidelity)
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        state = StudyState.build(study.get_trials(deepcopy=False), self.space, sign, self._memo)
        surrogate = self._model(study, state, mf, fmax, sign)
        return _Context(surrogate, mf, int(fmax), sign, state)

    def _model(self, study: Study, state: StudyState, mf: dict[str, float] | None, fmax: int, sign: float) -> QuickTuneSurrogate:
        base = self.surrogate
        if self.refit:
            # Fine-tune after refit_every finished trials, then each time their number doubles:
            # each fine-tuning sees at least twice the data of the previous one, and a long study
            # pays for O(log n) fine-tunings, not O(n). Conditioning keeps the copy current between.
            finished = sum(1 for v in state.trials.values() if v.state in (TrialState.COMPLETE, TrialState.PRUNED))
            version = 0 if finished < self.refit_every else int(math.floor(math.log2(finished / self.refit_every))) + 1
            if version > 0:
                key = (study.study_name, version)
                if key not in self._refit_cache:
                    from optuna_quicktune.surrogate.training import fine_tune

                    md = _study_metadataset(study, state, self.space, mf, fmax, sign)
                    tuned = fine_tune(self.surrogate, md, steps=self.refit_steps, seed=self._seed(study) + version)
                    if self.condition:
                        # Condition like the zero-shot view (meta context + finished runs, below)
                        # rather than on fine_tune's sample of the study: one conditioning set, and
                        # a context that does not double with every fine-tuning.
                        base_ctx = self.surrogate.performance
                        assert base_ctx.context is not None and base_ctx.context_y is not None
                        tuned.performance.set_context(base_ctx.context, base_ctx.context_y)
                    self._refit_cache[key] = tuned
                base = self._refit_cache[key]
        return self._conditioned_model(study, state, mf, fmax, sign, base) if self.condition else base

    def _conditioned_model(
        self, study: Study, state: StudyState, mf: dict[str, float] | None, fmax: int, sign: float,
        base: QuickTuneSurrogate,
    ) -> QuickTuneSurrogate:
        """``base`` with the study's finished chains added to its GP context (weights unchanged).

        One point per chain (a trial and the trials that resumed it): its configuration, no
        prefix, its last reported fidelity and score. Running trials are left out, so the view
        changes only when a trial ends.
        """
        finished = {n: v for n, v in state.trials.items() if v.state.is_finished()}
        continued = {v.resume_of for v in finished.values() if v.resume_of is not None}
        ends = [
            v for n, v in finished.items()
            if n not in continued and len(v.prefix) > 0 and np.isfinite(v.prefix[-1]) and self._contains(v.config_id, v.params)
        ]
        if not ends:
            return base
        key = (_token(base), study.study_name, fmax, sign, tuple(sorted((mf or {}).items())), tuple((v.number, len(v.prefix)) for v in ends))
        hit = self._conditioned.pop(key, None)
        if hit is None:
            import torch  # lazy, like the surrogate package

            X = self.space.encode_many([v.params for v in ends])
            lengths = np.array([min(len(v.prefix), fmax) for v in ends])
            b = base.batch(X, None, lengths, fidelity_max=fmax, metafeatures=mf, sign=sign)
            y = base.prep.z(np.array([v.prefix[min(len(v.prefix), fmax) - 1] for v in ends]), sign)
            hit = copy.copy(base)
            hit.performance = copy.copy(base.performance)
            ctx_b, ctx_y = base.performance.context, base.performance.context_y
            assert ctx_b is not None and ctx_y is not None
            hit.performance.set_context(ctx_b.cat(b), torch.cat([ctx_y, torch.as_tensor(y, dtype=torch.float64)]))
            self._n_conditioned += 1
            hit._qt_token = ("conditioned", self._n_conditioned)  # type: ignore[attr-defined]
        self._conditioned[key] = hit
        while len(self._conditioned) > 2:
            old = self._conditioned.pop(next(iter(self._conditioned)))
            self._forget(_token(old))
        return hit

    def _forget(self, token: Any) -> None:
        """Drop the cached predictions of a surrogate view that is no longer used."""
        for k in [k for k in self._pred_cache if k[-1] == token]:
            del self._pred_cache[k]
        for k in [k for k in self._paused_cache if k[0] == token]:
            del self._paused_cache[k]

    def _pool(self, study: Study) -> tuple[list[dict[str, Any]], np.ndarray, list[str]]:
        seed = self._seed(study)
        if seed not in self._pools:
            configs = self.space.sample(self.n_candidates, seed)
            for x in self.surrogate.meta_configs:
                configs.append(self.space.decode(x))
            ids, keep = [], []
            seen: set[str] = set()
            for c in configs:
                cid = self.space.config_id(c)
                if cid not in seen:
                    seen.add(cid)
                    ids.append(cid)
                    keep.append(c)
            self._pools[seed] = (keep, self.space.encode_many(keep), ids)
        return self._pools[seed]

    def _cache_key(self, study: Study, ctx: _Context, what: str) -> tuple[Any, ...]:
        mf = tuple(sorted((ctx.metafeatures or {}).items()))
        return (what, self._seed(study), mf, ctx.fidelity_max, ctx.sign, _token(ctx.surrogate))

    def _new_predictions(self, study: Study, ctx: _Context, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = self._cache_key(study, ctx, "first-step")
        if key not in self._pred_cache:
            prefixes = [np.zeros(0)] * X.shape[0]
            self._pred_cache[key] = self._horizon_predictions(ctx, X, prefixes)
        m, sd, c = self._pred_cache[key]
        return m, sd, c

    def _targets(self, ctx: _Context, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        if self.horizon == "final":
            return np.full(len(prefixes), ctx.fidelity_max)
        return np.array([min(len(p) + 1, ctx.fidelity_max) for p in prefixes])

    def _horizon_predictions(
        self, ctx: _Context, X: np.ndarray, prefixes: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sign-adjusted mean, std at each action's target fidelity, and the cost to get there."""
        s, fmax = ctx.surrogate, ctx.fidelity_max
        target = self._targets(ctx, prefixes)
        mean, std = s.predict(X, prefixes, target, fidelity_max=fmax, metafeatures=ctx.metafeatures, sign=ctx.sign)
        # The cost of every step still to run: row i needs steps len(prefix_i)+1 .. target_i.
        start = np.array([len(p) + 1 for p in prefixes], dtype=np.int64)
        cum = np.cumsum(self._step_cost_matrix(ctx, X), axis=1)
        cum = np.concatenate([np.zeros((X.shape[0], 1)), cum], axis=1)
        rows = np.arange(X.shape[0])
        hi, lo = np.clip(target, 0, fmax).astype(np.int64), np.clip(start - 1, 0, fmax)
        cost = np.where(hi >= start, cum[rows, hi] - cum[rows, lo], 0.0)
        return ctx.sign * mean, std, cost

    def _step_cost_matrix(self, ctx: _Context, X: np.ndarray) -> np.ndarray:
        """Predicted cost of each step 1..fidelity_max of every row of ``X``, shape ``(n, fmax)``.

        A step's cost does not depend on the curve, so it is predicted once per configuration.
        """
        s, fmax = ctx.surrogate, ctx.fidelity_max
        base = (id(s.cost), tuple(sorted((ctx.metafeatures or {}).items())), fmax)
        keys = [base + (x.tobytes(),) for x in np.ascontiguousarray(X, dtype=np.float64)]
        todo = [i for i, k in enumerate(keys) if k not in self._step_costs]
        if todo:
            rows = np.repeat(np.asarray(todo), fmax)
            steps = np.tile(np.arange(1, fmax + 1), len(todo))
            c = s.predict_cost(X[rows], steps, fidelity_max=fmax, metafeatures=ctx.metafeatures).reshape(len(todo), fmax)
            for j, i in enumerate(todo):
                self._step_costs[keys[i]] = c[j]
        if not keys:
            return np.zeros((0, fmax))
        return np.stack([self._step_costs[k] for k in keys])

    def _final_predictions(self, study: Study, ctx: _Context, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = self._cache_key(study, ctx, "final")
        if key not in self._pred_cache:
            mean, std = ctx.surrogate.predict(
                X, None, ctx.fidelity_max, fidelity_max=ctx.fidelity_max, metafeatures=ctx.metafeatures, sign=ctx.sign
            )
            self._pred_cache[key] = (mean, std)
        m, sd = self._pred_cache[key]
        return m, sd

    def _continuation_actions(self, ctx: _Context, views: list[Any], kind: str) -> list[Action]:
        prefixes = [v.prefix for v in views]
        mean, std, cost = np.zeros(len(views)), np.zeros(len(views)), np.zeros(len(views))
        # A paused trial's curve does not change until it is resumed: its prediction is cached.
        keys = [(_token(ctx.surrogate), ctx.fidelity_max, ctx.sign, v.number, len(v.prefix)) if kind == "resume" else None
                for v in views]
        todo = [i for i, k in enumerate(keys) if k is None or k not in self._paused_cache]
        if todo:
            X = self.space.encode_many([views[i].params for i in todo])
            m, sd, c = self._horizon_predictions(ctx, X, [prefixes[i] for i in todo])
            for j, i in enumerate(todo):
                mean[i], std[i], cost[i] = m[j], sd[j], c[j]
                if keys[i] is not None:
                    self._paused_cache[keys[i]] = (m[j], sd[j], c[j])
        for i, k in enumerate(keys):
            if k is not None and i not in todo:
                mean[i], std[i], cost[i] = self._paused_cache[k]
        target = self._targets(ctx, prefixes)
        inc = np.array([ctx.state.incumbent(int(b)) for b in target])
        scores = cost_aware_score(mean, std, inc, cost, self.cost_exponent)
        out = []
        for v, sc, b in zip(views, scores, target):
            out.append(
                Action(
                    kind, dict(v.params), v.config_id or self.space.config_id(v.params), float(sc), int(b),
                    resume_of=v.number if kind == "resume" else None,
                    checkpoint=None if kind != "resume" else _checkpoint_of(ctx, v.number),
                    prefix_len=len(v.prefix),
                )
            )
        return out

    def _prediction_record(self, ctx: _Context, params: dict[str, Any], prefix: np.ndarray) -> dict[str, float]:
        s = ctx.surrogate
        x = self.space.encode(params)[None, :]
        mean, std = s.predict(x, [prefix], ctx.fidelity_max, fidelity_max=ctx.fidelity_max, metafeatures=ctx.metafeatures, sign=ctx.sign)
        nxt = min(len(prefix) + 1, ctx.fidelity_max)
        cost = s.predict_cost(x, nxt, fidelity_max=ctx.fidelity_max, metafeatures=ctx.metafeatures)
        return {"mean": float(mean[0]), "std": float(std[0]), "cost": float(cost[0]), "fidelity": ctx.fidelity_max}

    def _claim(self, study: Study, trial: FrozenTrial, action: Action, ctx: _Context) -> None:
        params = dict(action.config)
        prefix = ctx.state.trials[action.resume_of].prefix if action.resume_of is not None else np.zeros(0)
        record = self._prediction_record(ctx, params, prefix)
        record.update(source=action.kind, acquisition=action.score)
        _set_system_attr(study, trial, _PARAMS_KEY, params)
        _set_user_attr(study, trial, contract.CONFIG_ID, action.config_id)
        _set_user_attr(study, trial, contract.PREDICTED, record)
        if action.resume_of is not None:
            _set_user_attr(study, trial, contract.RESUME_OF, action.resume_of)
            _set_user_attr(study, trial, contract.CHECKPOINT, action.checkpoint)
        elif trial.user_attrs.get(contract.RESUME_OF) is not None:
            # An earlier claim of this trial (a resumption another worker took) must not stay:
            # the objective would continue that checkpoint with this configuration.
            _set_user_attr(study, trial, contract.RESUME_OF, None)
            _set_user_attr(study, trial, contract.CHECKPOINT, None)

    def _annotate_enqueued(self, study: Study, trial: FrozenTrial) -> None:
        params = trial.system_attrs.get("fixed_params") or {}
        if contract.PREDICTED in trial.user_attrs or not self.space.contains(params):
            return
        ctx = self._context(study)
        parent = trial.user_attrs.get(contract.RESUME_OF)
        prefix = ctx.state.trials[parent].prefix if parent in ctx.state.trials else np.zeros(0)
        record = self._prediction_record(ctx, dict(params), prefix)
        record.update(source="enqueued")
        _set_user_attr(study, trial, contract.CONFIG_ID, self.space.config_id(params))
        _set_user_attr(study, trial, contract.PREDICTED, record)


def _token(s: QuickTuneSurrogate) -> Any:
    """A key for cached predictions of a surrogate (conditioned views carry their own)."""
    return getattr(s, "_qt_token", id(s))


def _checkpoint_of(ctx: _Context, number: int) -> str | None:
    view = ctx.state.trials.get(number)
    return None if view is None else view.checkpoint


def _set_user_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    # Samplers get a FrozenTrial; like Optuna's own samplers we write through the study's storage,
    # and keep the frozen copy in step so that the running Trial sees the value too.
    study._storage.set_trial_user_attr(trial._trial_id, key, value)  # noqa: SLF001
    trial.user_attrs[key] = value


def _set_system_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)  # noqa: SLF001
    trial.system_attrs[key] = value


def _study_metadataset(
    study: Study, state: StudyState, space: Any, mf: dict[str, float] | None, fmax: int, sign: float
) -> MetaDataset:
    task = Task(
        name=study.study_name, dataset=study.study_name, model="", metric="value",
        direction="maximize" if sign > 0 else "minimize", fidelity_unit="step", fidelity_max=fmax,
        metafeatures=dict(mf or {}),
    )
    runs = [
        Run(task=0, config=dict(v.params), curve=v.prefix[:fmax], cost=np.full(min(len(v.prefix), fmax), np.nan))
        for v in state.trials.values()
        if not v.continued and len(v.prefix) > 0 and space.contains(v.params)
    ]
    return MetaDataset(space, [task], runs)
