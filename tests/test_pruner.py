"""QuickTunePruner's start-up guard: no run is stopped before ``n_startup_trials`` runs finished."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import TrialState

from optuna_quicktune import QuickTunePruner, QuickTuneSampler
from optuna_quicktune.simulate import SimulatedObjective
from tests.conftest import HELD_OUT


def _study(family, surrogate, n_startup_trials):
    task = family.tasks[HELD_OUT]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0)
    pruner = QuickTunePruner(sampler, margin=0.0, n_startup_trials=n_startup_trials)
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
