"""The optimisers compared by the benchmark, each driven on a :class:`~.replay.Session`.

Every method runs through Optuna where Optuna can express it (samplers, pruners, enqueued trials);
DEHB runs through the ``dehb`` package's ask/tell interface on the same simulated clock.

=====================  ===========================================================================
``quicktune``          QuickTuneSampler + QuickTunePruner, zero-shot (surrogate never refit),
                       freeze-thaw: a stopped run is paused with a checkpoint and may be resumed
``quicktune-refit``    the same with ``refit=True`` (Quick-Tune's per-task fine-tuning)
``random``             RandomSampler, full runs
``tpe``                TPESampler (Optuna defaults), full runs
``tpe+hyperband``      TPESampler + HyperbandPruner (min 1 step, reduction factor 3)
``tpe+sha``            TPESampler + SuccessiveHalvingPruner (min 1 step, reduction factor 3)
``dehb``               dehb.DEHB (eta 3, fidelities 1..L); each job trains from scratch
``default``            the scenario's default configuration, one full run
``portfolio``          static greedy best-on-average portfolio of the meta-training tasks, full
                       runs in portfolio order (then random search)
``portfolio+sh``       the same order with successive halving (min 1 step, reduction factor 3): a
                       run continues while it is in the top 1/3 of the runs at its rung
``rush``               RUSH (Zappella et al. 2021): the best configuration of each meta-training
                       task runs first (portfolio order) under successive halving; their scores at
                       each rung are hurdles that every later (random) run must clear
``top-k-1step``        N random configurations for one step each, then the best by that score
                       continued to the end one after another
``zero-shot``          LLM tables: the base model without finetuning (its stored validation score,
                       observed at time 0 at no cost); only for scenarios that know it
``oracle``             the reference set's best configuration, trained to its best step
=====================  ===========================================================================
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_quicktune.benchmark.replay import BudgetExhausted, ReplayObjective, Session
from optuna_quicktune import contract
from optuna_quicktune.benchmark.rush import RushPruner
from optuna_quicktune.space import SearchSpace

__all__ = ["METHODS", "DEFAULT_METHODS", "PORTFOLIO_METHODS", "MethodContext", "run_method"]


@dataclass
class MethodContext:
    """What a method may know besides the task itself."""

    seed: int
    surrogate_loader: Callable[[], Any] | None = None  # fold's meta-trained surrogate (lazy)
    portfolio: list[dict[str, Any]] = field(default_factory=list)  # greedy order, meta-training tasks
    task_bests: list[dict[str, Any]] = field(default_factory=list)  # each meta-training task's best, portfolio order
    default_config: dict[str, Any] | None = None
    oracle: tuple[dict[str, Any], int] | None = None  # (config, step of its best score)
    top_k_first: int = 32
    quicktune_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)


def _study(session: Session, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner | None, name: str) -> optuna.Study:
    return optuna.create_study(
        direction=session.scenario.direction, sampler=sampler, pruner=pruner or optuna.pruners.NopPruner(),
        study_name=f"{session.task}-{name}",
    )


def _optimize(session: Session, study: optuna.Study, *, pausable: bool = False, n_trials: int | None = None) -> None:
    objective = ReplayObjective(session, pausable=pausable)
    seen = {"steps": session.traj.steps}

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if session.traj.steps > seen["steps"]:
            session.end_trial()
            seen["steps"] = session.traj.steps
        if session.exhausted:
            study.stop()

    if session.exhausted:
        return
    study.optimize(
        objective, n_trials=n_trials or session.max_trials, callbacks=[callback], catch=(), gc_after_trial=False
    )


# ---------------------------------------------------------------------- Optuna methods
def run_random(session: Session, ctx: MethodContext) -> None:
    _optimize(session, _study(session, optuna.samplers.RandomSampler(seed=ctx.seed), None, "random"))


def run_tpe(session: Session, ctx: MethodContext) -> None:
    _optimize(session, _study(session, optuna.samplers.TPESampler(seed=ctx.seed), None, "tpe"))


def run_tpe_hyperband(session: Session, ctx: MethodContext) -> None:
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=session.L, reduction_factor=3)
    _optimize(session, _study(session, optuna.samplers.TPESampler(seed=ctx.seed), pruner, "tpe-hb"))


def run_tpe_sha(session: Session, ctx: MethodContext) -> None:
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    _optimize(session, _study(session, optuna.samplers.TPESampler(seed=ctx.seed), pruner, "tpe-sha"))


def _run_quicktune(session: Session, ctx: MethodContext, refit: bool) -> None:
    from optuna_quicktune.pruner import QuickTunePruner
    from optuna_quicktune.sampler import QuickTuneSampler

    if ctx.surrogate_loader is None:
        raise ValueError("QuickTune needs a meta-trained surrogate (surrogate_loader).")
    surrogate = ctx.surrogate_loader()
    mf = session.scenario.metafeatures(session.task) or None
    if mf is not None and not surrogate.metafeature_names:
        mf = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = QuickTuneSampler(
            surrogate, metafeatures=mf, fidelity_max=session.L, seed=ctx.seed, refit=refit, **ctx.quicktune_kwargs
        )
    pruner = QuickTunePruner(sampler, **ctx.pruner_kwargs)
    _optimize(session, _study(session, sampler, pruner, "quicktune-refit" if refit else "quicktune"), pausable=True)


def run_quicktune(session: Session, ctx: MethodContext) -> None:
    _run_quicktune(session, ctx, refit=False)


def run_quicktune_refit(session: Session, ctx: MethodContext) -> None:
    _run_quicktune(session, ctx, refit=True)


def run_default(session: Session, ctx: MethodContext) -> None:
    config = ctx.default_config or session.scenario.default_config
    if config is None:
        raise ValueError("The scenario has no default configuration; pass one (default_config=...).")
    study = _study(session, optuna.samplers.RandomSampler(seed=ctx.seed), None, "default")
    study.enqueue_trial(dict(config))
    _optimize(session, study, n_trials=1)


def run_portfolio(session: Session, ctx: MethodContext) -> None:
    study = _study(session, optuna.samplers.RandomSampler(seed=ctx.seed), None, "portfolio")
    for c in ctx.portfolio:
        study.enqueue_trial(dict(c), skip_if_exists=True)
    _optimize(session, study)


def run_portfolio_sh(session: Session, ctx: MethodContext) -> None:
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    study = _study(session, optuna.samplers.RandomSampler(seed=ctx.seed), pruner, "portfolio-sh")
    for c in ctx.portfolio:
        study.enqueue_trial(dict(c), skip_if_exists=True)
    _optimize(session, study)


def run_rush(session: Session, ctx: MethodContext) -> None:
    warm = ctx.task_bests or ctx.portfolio
    study = _study(session, optuna.samplers.RandomSampler(seed=ctx.seed), RushPruner(len(warm)), "rush")
    for c in warm:
        study.enqueue_trial(dict(c), skip_if_exists=True)
    _optimize(session, study)


# ---------------------------------------------------------------------- direct methods
def run_top_k_1step(session: Session, ctx: MethodContext) -> None:
    """One step for each of N random configurations, then continue the best first, to the end."""
    rng = np.random.default_rng(ctx.seed)
    space = session.scenario.space
    sign = session.sign
    try:
        while not session.exhausted:
            configs = space.sample(ctx.top_k_first, rng)
            session.prefetch(configs)
            first = []
            for c in configs:
                v, _ = session.step(c, 1)
                session.end_trial()
                first.append(sign * v)
            for i in np.argsort(-np.asarray(first), kind="stable"):
                for s in range(2, session.L + 1):
                    session.step(configs[i], s)
                session.end_trial()
    except BudgetExhausted:
        pass


def run_oracle(session: Session, ctx: MethodContext) -> None:
    if ctx.oracle is None:
        raise ValueError("The oracle needs the reference set's best configuration.")
    config, best_step = ctx.oracle
    try:
        for s in range(1, best_step + 1):
            session.step(config, s)
    except BudgetExhausted:
        pass
    session.end_trial()


def run_zero_shot(session: Session, ctx: MethodContext) -> None:
    score = session.scenario.zero_shot_score(session.task)
    if score is None:
        raise ValueError(
            f"Scenario {session.scenario.name!r} has no zero-shot score for task {session.task!r}; "
            f"only LLM tables collected with the base model's scores ({contract.ZERO_SHOT}) have one."
        )
    session.observe_free(score)
    session.end_trial()


def _unit_to_config(space: SearchSpace, u: np.ndarray) -> dict[str, Any]:
    """DEHB works in [0, 1]^D, one coordinate per parameter (categoricals by equal-width bins)."""
    config: dict[str, Any] = {}
    for x, (k, d) in zip(np.clip(u, 0.0, 1.0), space.distributions.items()):
        if isinstance(d, CategoricalDistribution):
            config[k] = d.choices[min(int(x * len(d.choices)), len(d.choices) - 1)]
        elif isinstance(d, (IntDistribution, FloatDistribution)):
            lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (float(d.low), float(d.high))
            v = lo + float(x) * (hi - lo)
            v = math.exp(v) if d.log else v
            if d.step is not None:
                v = d.low + round((v - d.low) / d.step) * d.step
            v = min(max(v, d.low), d.high)
            config[k] = int(round(v)) if isinstance(d, IntDistribution) else float(v)
    return config


def run_dehb(session: Session, ctx: MethodContext) -> None:
    """DEHB (Awad et al. 2021) via the ``dehb`` package's ask/tell loop on the simulated clock."""
    from dehb import DEHB

    logging.getLogger("distributed").setLevel(logging.ERROR)
    space = session.scenario.space
    with tempfile.TemporaryDirectory(prefix="dehb-") as tmp:
        opt = DEHB(
            f=None, cs=None, dimensions=len(space.distributions), min_fidelity=1, max_fidelity=session.L, eta=3,
            n_workers=1, seed=int(ctx.seed), output_path=tmp, log_level="ERROR", save_freq=None,
        )
        try:
            while not session.exhausted:
                job = opt.ask()
                b = int(min(max(round(float(job["fidelity"])), 1), session.L))
                config = _unit_to_config(space, np.asarray(job["config"], dtype=np.float64))
                value, cost = session.scratch(config, b)
                session.end_trial()
                opt.tell(job, {"fitness": float(-session.sign * value), "cost": float(cost)})
        except BudgetExhausted:
            pass
        finally:
            from loguru import logger

            logger.remove()


METHODS: dict[str, Callable[[Session, MethodContext], None]] = {
    "quicktune": run_quicktune,
    "quicktune-refit": run_quicktune_refit,
    "random": run_random,
    "tpe": run_tpe,
    "tpe+hyperband": run_tpe_hyperband,
    "tpe+sha": run_tpe_sha,
    "dehb": run_dehb,
    "default": run_default,
    "portfolio": run_portfolio,
    "portfolio+sh": run_portfolio_sh,
    "rush": run_rush,
    "top-k-1step": run_top_k_1step,
    "zero-shot": run_zero_shot,
    "oracle": run_oracle,
}
#: Methods that are given the meta-training tasks' portfolio (built from the same table as QuickTune).
PORTFOLIO_METHODS = ("portfolio", "portfolio+sh", "rush")
#: Every method except ``zero-shot``, which only LLM tables support (the CLI adds it for them).
DEFAULT_METHODS = [m for m in METHODS if m != "zero-shot"]


def run_method(name: str, session: Session, ctx: MethodContext) -> None:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose from {sorted(METHODS)}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    METHODS[name](session, ctx)
