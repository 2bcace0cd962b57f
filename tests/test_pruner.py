"""QuickTunePruner's start-up guard: no run is stopped before ``n_startup_trials`` runs finished."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import TrialState

from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract
from optuna_quicktune.simulate import SimulatedObjective
from tests.conftest import HELD_OUT


def _study(family, surrogate, n_startup_trials, keep_leader=False):
    task = family.tasks[HELD_OUT]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # No portfolio phase and a decision at every step: the surrogate alone decides, as these
        # tests of the start-up guard and of keep_leader need.
        sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0, portfolio_first=0)
    pruner = QuickTunePruner(sampler, margin=0.0, n_startup_trials=n_startup_trials, keep_leader=keep_leader, rungs="every")
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(SimulatedObjective(task), n_trials=4)
    return study


def test_no_run_is_stopped_before_the_first_one_finished(family, surrogate):
    # Without the guard this study stops every run early, so it has no best trial (what
    # Trainer.hyperparameter_search reads at its end).
    unguarded = _study(family, surrogate, n_startup_trials=0)
    assert all(t.state == TrialState.PRUNED for t in unguarded.trials)
    with pytest.raises(ValueError):
        unguarded.best_trial
    guarded = _study(family, surrogate, n_startup_trials=1)
    assert guarded.trials[0].state == TrialState.COMPLETE
    assert guarded.best_trial.state == TrialState.COMPLETE
    assert any(t.state == TrialState.PRUNED for t in guarded.trials[1:])  # pruning resumes afterwards


def test_bad_startup_count_is_refused(family, surrogate):
    sampler = QuickTuneSampler(surrogate, metafeatures=family.tasks[HELD_OUT].metafeatures, seed=0)
    with pytest.raises(ValueError, match="n_startup_trials"):
        QuickTunePruner(sampler, n_startup_trials=-1)


def _curves(trials):
    """Each trial's curve as {global step: value}, a continuation's including its parents' steps."""
    out = {}
    for t in sorted(trials, key=lambda t: t.number):
        parent = t.user_attrs.get(contract.RESUME_OF)
        out[t.number] = {**(out.get(parent, {}) if parent is not None else {}), **t.intermediate_values}
    return out


def _chain(trials, number):
    by_number = {t.number: t for t in trials}
    chain = set()
    while number is not None and number not in chain:
        chain.add(number)
        number = by_number[number].user_attrs.get(contract.RESUME_OF)
    return chain


def test_keep_leader_never_stops_the_leading_run(family, surrogate):
    task = family.tasks[HELD_OUT]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0, portfolio_first=0)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler, margin=0.0, rungs="every"))
    study.optimize(SimulatedObjective(task), n_trials=12)
    trials = study.get_trials(deepcopy=False)
    curves = _curves(trials)
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    assert stopped, "margin=0 on this task stops runs (see test_no_run_is_stopped_before_the_first_one_finished)"
    for t in stopped:
        step = max(curves[t.number])
        mine = curves[t.number][step]
        # Runs are sequential here: when t was stopped, the other runs were the earlier trials.
        others = [
            c[min(step, max(c))] for n, c in curves.items()
            if n < t.number and c and n not in _chain(trials, t.number)
        ]
        # The first run leads by definition: it is never stopped.
        assert others and mine < max(others), (t.number, step, mine, others)
    assert any(t.number > 0 for t in stopped)
    # Without the rule the same study stops the runs that lead: the option changes decisions.
    plain = _study(family, surrogate, n_startup_trials=0, keep_leader=False)
    assert max(len(_curves(study.trials)[t.number]) for t in study.trials) > max(
        len(_curves(plain.trials)[t.number]) for t in plain.trials
    )


def test_keep_leader_is_the_default(family, surrogate):
    sampler = QuickTuneSampler(surrogate, metafeatures=family.tasks[HELD_OUT].metafeatures, seed=0)
    assert QuickTunePruner(sampler).keep_leader is True
    assert QuickTunePruner(sampler, keep_leader=False).keep_leader is False


def _member_decision(family, surrogate, member_curve, **pruner_kwargs):
    """Whether the pruner stops the second portfolio member after ``member_curve``, the first having
    finished with its simulated curve (no leader rule, zero margin: the portfolio rule alone decides)."""
    task = family.tasks[HELD_OUT]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0)
    pruner = QuickTunePruner(sampler, margin=0.0, keep_leader=False, rungs="every", **pruner_kwargs)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    space = family.space

    def ask():
        trial = study.ask()
        contract.describe_task(study, dataset=task.name, model="simulated", metric="score",
                               fidelity_max=task.fidelity_max, metafeatures=task.metafeatures, space=space)
        return trial, space.suggest(trial)

    first, config = ask()
    curve = task.curve(config)
    for step, value in enumerate(curve, start=1):
        first.report(float(value), step)
    study.tell(first, float(curve[-1]))
    second, config = ask()
    assert space.config_id(config) == sampler.decision(study).portfolio_order[1]
    for step, value in enumerate(member_curve, start=1):
        second.report(float(value), step)
    return second.should_prune(), float(max(curve))


def test_a_portfolio_member_is_protected_while_it_is_expected_to_beat_the_best_run(family, surrogate):
    # A member whose curve stays far below the finished run's: the surrogate expects it to end
    # below the best run, so it loses its protection and the cost-benefit rule stops it ...
    low = [0.0, 0.0, 0.0]
    stopped, top = _member_decision(family, surrogate, low)
    assert stopped
    # ... unless members are always run to their end (the static portfolio's rule) ...
    assert not _member_decision(family, surrogate, low, portfolio_hurdle=None)[0]
    # ... or the portfolio phase is not protected at all, where the same rule stops it.
    assert _member_decision(family, surrogate, low, keep_portfolio=False)[0]
    # A member already above the best run is expected to end above it: it runs on.
    high = [top + 1.0] * 3
    assert not _member_decision(family, surrogate, high)[0]


def test_portfolio_hurdle_must_be_finite(family, surrogate):
    sampler = QuickTuneSampler(surrogate, metafeatures=family.tasks[HELD_OUT].metafeatures, seed=0)
    with pytest.raises(ValueError, match="portfolio_hurdle"):
        QuickTunePruner(sampler, portfolio_hurdle=float("nan"))
