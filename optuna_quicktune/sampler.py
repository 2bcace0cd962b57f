"""QuickTuneSampler: zero-shot, cost-aware, freeze-thaw proposals from meta-learned surrogates.

The sampler is the Optuna glue: it builds a :class:`~optuna_quicktune.decision.Decision` from the
storage on every call (the study's state, the surrogate view that state conditions, the candidate
pool), asks it for the best action (the rule lives in :mod:`optuna_quicktune.decision`), and writes
its choice into the trial. Several workers and restarted processes agree because everything is
rebuilt from the storage: a worker writes its claim, re-reads the study and steps back when
another trial holds the same action (the two-phase protocol of :mod:`optuna_quicktune.claims`).

With ``refit=False`` (default, Strangmann et al. 2024) the surrogates' weights are used as they are;
the study enters through its meta-features, each candidate's observed curve prefix and, with
``condition=True`` (default), the GP's conditioning set (:meth:`QuickTuneSurrogate.conditioned_on`).
``refit=True`` (Quick-Tune) also fine-tunes a copy on the study's curves after ``refit_every``
finished trials and again each time their number doubles.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import chains, contract
from optuna_quicktune.claims import claim, confirm_claim, set_user_attr, write_claim
from optuna_quicktune.decision import Action, Decision, DecisionSettings, Pool, PredictionCache
from optuna_quicktune.errors import MetaFeatureError
from optuna_quicktune.recovery import Recovery, failing_trial
from optuna_quicktune.study_state import StudyState
from optuna_quicktune.surrogate.model import QuickTuneSurrogate
from optuna_quicktune.surrogate.preprocessing import MetafeatureImputer
from optuna_quicktune.views import SurrogateViews

__all__ = ["QuickTuneSampler", "Action"]

_logger = logging.getLogger(__name__)
_PARAMS_KEY = contract.PARAMS  # system attr: the parameters chosen in before_trial
_DEFAULTS = DecisionSettings()
_CLAIM_ATTEMPTS = 16  # decisions per trial before it gives up on the ranking (each loses only to a rival's claim)


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
            point at its fidelity.
        portfolio_first: The study's first new configurations are this many members of the greedy
            portfolio of the surrogate's meta-dataset, in order (0: none; surrogates saved without
            a portfolio table have none). See :mod:`optuna_quicktune.decision` for why.
        portfolio_weights: ``"uniform"``: the static best-on-average portfolio; ``"metafeatures"``:
            meta-training tasks weighted by meta-feature similarity to this dataset.
        impute: ``None`` (default): a missing meta-feature is an error. ``"train_mean"``: missing or
            non-finite meta-features are filled with the mean of the surrogate's meta-training
            tasks (stored with it); the names are logged once and recorded in each trial's
            ``quicktune.predicted`` (``imputed_metafeatures``).
        n_local: Candidates drawn around the study's three best finished runs at each decision
            (0: the fixed pool only).
        local_scale: Standard deviation of those draws in the [0, 1] encoding of the space.
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
        cost_exponent: float = _DEFAULTS.cost_exponent,
        horizon: str = _DEFAULTS.horizon,
        refit: bool = False,
        refit_every: int = 5,
        refit_steps: int = 50,
        condition: bool = True,
        portfolio_first: int = _DEFAULTS.portfolio_first,
        portfolio_weights: str = _DEFAULTS.portfolio_weights,
        n_local: int = _DEFAULTS.n_local,
        local_scale: float = _DEFAULTS.local_scale,
        impute: str | None = None,
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
        if portfolio_first < 0:
            raise ValueError(f"portfolio_first must be >= 0, got {portfolio_first}.")
        if portfolio_weights not in ("metafeatures", "uniform"):
            raise ValueError(f"portfolio_weights must be 'metafeatures' or 'uniform', not {portfolio_weights!r}.")
        if n_local < 0 or not local_scale > 0:
            raise ValueError(f"n_local must be >= 0 and local_scale > 0, got {n_local} and {local_scale}.")
        self.surrogate = surrogate
        self.space = surrogate.space
        self._impute = MetafeatureImputer(surrogate.prep, impute)
        self.metafeatures = None if metafeatures is None else self._impute(contract.parse_metafeatures(
            metafeatures, attribute="metafeatures=", allow_missing=self._impute.impute is not None))
        if self.metafeatures is not None:
            surrogate.prep.metafeatures(self.metafeatures)  # fail now, naming the bad names
        self.fidelity_max = fidelity_max
        self.n_candidates = n_candidates
        self.refit = refit
        self.refit_every = refit_every
        self.refit_steps = refit_steps
        self.condition = bool(condition)
        self.settings = DecisionSettings(
            horizon=horizon, cost_exponent=float(cost_exponent), portfolio_first=int(portfolio_first),
            portfolio_weights=portfolio_weights, n_local=int(n_local), local_scale=float(local_scale),
        )
        self.seed = seed
        # Caches: the pool and portfolio order per seed, refit copies, the latest conditioned views
        # and one bounded prediction cache. clear_caches() empties them all.
        self._pools: dict[int, Pool] = {}
        self._orders: dict[Any, tuple[str, ...]] = {}
        self._views = SurrogateViews(surrogate)  # refit copies and conditioned views
        self._predictions = PredictionCache()
        self._memo: dict[Any, Any] = {}  # parsed curves of finished trials (StudyState.build)
        self._warned: set[str] = set()
        self._fallback = RandomSampler(seed=seed)
        self.recovery = recovery if isinstance(recovery, Recovery) else Recovery(enabled=bool(recovery))

    @property
    def horizon(self) -> str:
        return self.settings.horizon

    @property
    def cost_exponent(self) -> float:
        return self.settings.cost_exponent

    def clear_caches(self) -> None:
        """Forget every cached pool, view and prediction (they are rebuilt on the next call)."""
        for c in (self._pools, self._orders, self._memo):
            c.clear()
        self._views.clear()
        self._predictions.clear()

    # ================================================================== Optuna API
    def reseed_rng(self) -> None:
        # The pool must stay identical across workers; only the fallback sampler is reseeded.
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        self._check_single_objective(study)
        # Only names the objective declared with the surrogate's distribution (else Optuna would fail
        # the trial); the rest, and the first trial's, are served by sample_independent.
        return self.space.relative_space_for(self.space.declared_last(study.get_trials(deepcopy=False)))

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
        chosen = trial.system_attrs.get(_PARAMS_KEY) or {}
        why = self.space.fallback_reason(param_name, param_distribution, chosen)
        if why is None:
            return chosen[param_name]  # the proposed value, for a parameter outside the relative space
        if param_name not in self._warned:
            self._warned.add(param_name)
            optuna.logging.get_logger(__name__).warning(
                f"Parameter {param_name!r} {why}; it is sampled independently at random."
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
        # The claim protocol (optuna_quicktune.claims) settles who runs an action that several
        # workers chose at once; the one that steps back decides again, after a short wait that
        # differs per trial (seeded by the study and the trial number).
        rng = np.random.default_rng([self._seed(study), trial.number])
        for attempt in range(_CLAIM_ATTEMPTS):
            decision = self.decision(study)
            actions = decision.actions(limit=1, claimant=trial.number)
            if not actions:
                return  # nothing left in the pool: every parameter falls back to random sampling
            if self._claim(study, trial, actions[0], decision):
                return
            time.sleep(float(rng.uniform(0.0, 0.01)) * (attempt + 1))
        # Lost every round: run a configuration drawn at random from the space (seeded), which no
        # other trial holds, rather than keep a claim that another trial holds.
        config = self.space.sample(1, rng)[0]
        action = Action("random", config, self.space.config_id(config), float("nan"), 1)
        write_claim(study, trial, action, {**self._record(decision, dict(config), np.zeros(0)), "source": "random"})
        confirm_claim(study, trial)
        _logger.warning("Trial %d: other workers took every action it chose %d times; it runs a random "
                        "configuration.", trial.number, _CLAIM_ATTEMPTS)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.recovery.stop(trial)
        if state == TrialState.PRUNED and trial.user_attrs.get(contract.CHECKPOINT) and not chains.diverged(list(trial.intermediate_values.values())):
            set_user_attr(study, trial, contract.PAUSED, True)

    # ================================================================== public helpers
    def decision(self, study: Study) -> Decision:
        """What the study knows and what the surrogate predicts now (one immutable object).

        The pruner and the dashboard read the same object, so what they show is what the
        sampler decides with.
        """
        self._check_single_objective(study)
        mf = self._metafeatures(study)
        fmax = self._fidelity_max(study)
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        state = StudyState.build(study.get_trials(deepcopy=False), self.space, sign, self._memo)
        seed = self._seed(study)
        return Decision(
            study_name=study.study_name, seed=seed, state=state, surrogate=self._model(study, state, mf, fmax, sign),
            metafeatures=mf, fidelity_max=fmax, sign=sign, settings=self.settings, pool=self._pool(seed),
            portfolio_order=self._portfolio_order(mf), cache=self._predictions,
        )

    def rank_actions(self, study: Study, *, limit: int | None = None) -> list[Action]:
        """All possible next actions, best first (what the next trial would do)."""
        return self.decision(study).actions(limit=limit)

    def continuation_score(self, study: Study, trial: FrozenTrial) -> float | None:
        """The acquisition of continuing a running trial (what :class:`QuickTunePruner` weighs)."""
        action = self.decision(study).continuation(trial.number)
        return None if action is None else action.score

    def predict_final(self, study: Study, params: Mapping[str, Any], prefix: Sequence[float] = ()) -> dict[str, float]:
        """Predicted final score (mean, std) and next-step cost of a configuration in this study."""
        return self.decision(study).prediction_record(dict(params), np.asarray(prefix, dtype=np.float64))

    def enqueue_portfolio(self, study: Study, k: int = 8) -> list[dict[str, Any]]:
        """Enqueue the ``k`` configurations this sampler would start first, as WAITING trials.

        Those are the decision rule's own first picks: the portfolio members it still has to start
        (``portfolio_first``, in order; rule 1 of :mod:`.decision`), then the configurations with the
        best predicted final score. Why not the predicted best alone: enqueued trials run before
        anything the sampler proposes, so enqueueing the zero-shot ranking would skip the portfolio
        start, whose worst case is the static portfolio's. Each trial's ``quicktune.predicted``
        says which rule chose it (``source``: ``"portfolio"`` or ``"surrogate"``).

        Configurations the study has already run or enqueued are skipped, so calling this again
        (e.g. after a restart) never duplicates work. Call it from one process.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        d = self.decision(study)
        used = d.state.used_config_ids()
        final_mean, final_std = d.final_predictions()
        cost = d.new_predictions()[2]
        position = d.pool.position
        members = [position[cid] for cid in d.portfolio_start(used) if cid in position]
        from_portfolio = set(members)
        ranked = (int(i) for i in np.argsort(-(d.sign * final_mean), kind="stable"))
        chosen = []
        for i in itertools.chain(members, ranked):
            cid = d.pool.ids[i]
            if cid in used:
                continue
            study.enqueue_trial(
                d.pool.configs[i],
                user_attrs={
                    contract.CONFIG_ID: cid,
                    contract.PREDICTED: {
                        "mean": float(final_mean[i]), "std": float(final_std[i]), "cost": float(cost[i]),
                        "fidelity": d.fidelity_max, "source": "portfolio" if i in from_portfolio else "surrogate",
                    },
                },
            )
            used.add(cid)
            chosen.append(d.pool.configs[i])
            if len(chosen) == k:
                break
        return chosen

    def current_surrogate(self, study: Study) -> QuickTuneSurrogate:
        """The surrogate used for this study now (the pretrained one unless ``refit``)."""
        return self.decision(study).surrogate

    # ================================================================== decision inputs
    def _check_single_objective(self, study: Study) -> None:
        contract.study_direction(study)  # ContractError (a ValueError) for a multi-objective study

    def _seed(self, study: Study) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(hashlib.sha256(study.study_name.encode()).hexdigest()[:8], 16)

    def _metafeatures(self, study: Study) -> dict[str, float] | None:
        if self.metafeatures is not None:
            return self.metafeatures
        raw = study.user_attrs.get(contract.METAFEATURES)
        if raw is None and self._impute.impute is not None:
            return self._impute(None)
        if raw is None:
            if self.surrogate.metafeature_names:
                raise MetaFeatureError(
                    f"No meta-features for study {study.study_name!r}: pass metafeatures={{...}} to "
                    f"QuickTuneSampler or set the study's {contract.METAFEATURES!r} user attribute. The "
                    f"surrogate needs {self.surrogate.metafeature_names}."
                )
            return None
        mf = self._impute(contract.parse_metafeatures(raw, study=study.study_name, allow_missing=self._impute.impute is not None))
        self.surrogate.prep.metafeatures(mf)
        return mf

    def _fidelity_max(self, study: Study) -> int:
        fmax = int(self.fidelity_max) if self.fidelity_max is not None else (
            contract.read_fidelity(study) or self.surrogate.max_fidelity)
        contract.check_fidelity_fits(study, fmax, self.surrogate.max_fidelity)
        return fmax
    def _pool(self, seed: int) -> Pool:
        if seed not in self._pools:
            configs = self.space.sample(self.n_candidates, seed)
            configs += [self.space.decode(x) for x in self.surrogate.meta_configs]
            if self.surrogate.portfolio is not None:
                configs += self.surrogate.portfolio.configs(self.space)
            self._pools[seed] = Pool.build(self.space, configs)
        return self._pools[seed]

    def _portfolio_order(self, mf: dict[str, float] | None) -> tuple[str, ...]:
        table = self.surrogate.portfolio
        if not self.settings.portfolio_first or table is None or table.X.shape[0] == 0:
            return ()
        use_mf = mf if self.settings.portfolio_weights == "metafeatures" else None
        key = tuple(sorted((use_mf or {}).items()))
        if key not in self._orders:
            cols = table.order(table.weights(use_mf), size=self.settings.portfolio_first)
            self._orders[key] = tuple(self.space.config_id(self.space.decode(table.X[j])) for j in cols)
        return self._orders[key]

    def _model(self, study: Study, state: StudyState, mf: dict[str, float] | None, fmax: int, sign: float) -> QuickTuneSurrogate:
        base = self.surrogate
        if self.refit:
            base = self._views.refit(study.study_name, state, mf, fmax, sign, self.refit_every, self.refit_steps,
                                     self._seed(study), keep_context=self.condition)
        base = self._views.rescaled(base, study.study_name, state, mf, fmax, sign)
        return self._views.conditioned(base, study.study_name, state, mf, fmax, sign) if self.condition else base

    # ================================================================== storage writes
    def _claim(self, study: Study, trial: FrozenTrial, action: Action, decision: Decision) -> bool:
        """Claim ``action`` for ``trial``; False when another trial holds it (see :mod:`~optuna_quicktune.claims`)."""
        prefix = decision.state.trials[action.resume_of].prefix if action.resume_of is not None else np.zeros(0)
        record = self._record(decision, dict(action.config), prefix, action)
        record.update(source=action.kind, acquisition=action.score)
        return claim(study, trial, action, record, self.space)

    def _record(self, decision: Decision, params: dict[str, Any], prefix: np.ndarray, action: Action | None = None) -> dict[str, Any]:
        record: dict[str, Any] = decision.prediction_record(params, prefix, action)
        imputed = self._impute.imputed(decision.metafeatures)
        if imputed:
            record["imputed_metafeatures"] = imputed
        return record

    def _annotate_enqueued(self, study: Study, trial: FrozenTrial) -> None:
        params = trial.system_attrs.get("fixed_params") or {}
        if contract.PREDICTED in trial.user_attrs or not self.space.contains(params):
            return
        decision = self.decision(study)
        parent = trial.user_attrs.get(contract.RESUME_OF)
        prefix = decision.state.trials[parent].prefix if parent in decision.state.trials else np.zeros(0)
        record = self._record(decision, dict(params), prefix)
        record.update(source="enqueued")
        set_user_attr(study, trial, contract.CONFIG_ID, self.space.config_id(params))
        set_user_attr(study, trial, contract.PREDICTED, record)
