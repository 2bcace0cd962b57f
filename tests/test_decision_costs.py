"""Predicted costs enter a decision's scores only through ``cost ** cost_exponent``."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.acquisition import cost_aware_score, expected_improvement
from optuna_quicktune.sampler import QuickTuneSampler


def _study(space, surrogate):
    dists = dict(space.distributions)
    study = optuna.create_study(direction="maximize")
    for i, c in enumerate(space.sample(6, 5)):
        study.add_trial(optuna.trial.create_trial(
            params=c, distributions=dists, state=optuna.trial.TrialState.COMPLETE, value=0.3 + 0.02 * i,
            intermediate_values={s + 1: 0.2 + 0.02 * i + 0.01 * s for s in range(surrogate.max_fidelity)},
            user_attrs={contract.CONFIG_ID: space.config_id(c)}))
    return study


@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_new_configurations_are_scored_by_ei_per_cost(family, surrogate, exponent):
    task = family.tasks[-1]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0, cost_exponent=exponent,
                               portfolio_first=0, n_candidates=64)
    d = sampler.decision(_study(surrogate.space, surrogate))
    actions = [a for a in d.actions() if a.kind == "new"]
    mean, std, cost = d.new_predictions()
    inc = d.state.incumbent(d.fidelity_max)
    by_id = {cid: i for i, cid in enumerate(d.pool.ids)}
    pool_actions = [a for a in actions if a.config_id in by_id]
    assert len(pool_actions) > 32
    idx = np.array([by_id[a.config_id] for a in pool_actions])
    expect = expected_improvement(mean[idx], std[idx], inc) / np.maximum(cost[idx], 1e-12) ** exponent
    np.testing.assert_allclose([a.score for a in pool_actions], expect, rtol=1e-12)
    assert (cost > 0).all()
    if exponent == 0:
        # The scores came without any cost prediction of the pool (costs were asked only above).
        fresh = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0, portfolio_first=0, n_candidates=64)
        d0 = fresh.decision(_study(surrogate.space, surrogate))
        d0.actions(limit=1)
        key = (d0.surrogate.cost_id, "pool-step-costs", d0.seed, tuple(sorted(d0.metafeatures.items())), d0.fidelity_max)
        assert key not in d0.cache
        d0.new_predictions()
        assert key in d0.cache  # the key names what the first check looked for


def test_a_cost_is_needed_when_it_counts():
    with pytest.raises(ValueError, match="cost_exponent"):
        cost_aware_score(np.zeros(2), np.ones(2), 0.0, None, 1.0)
    np.testing.assert_array_equal(cost_aware_score(np.zeros(2), np.ones(2), 0.0, None, 0.0),
                                  cost_aware_score(np.zeros(2), np.ones(2), 0.0, np.array([3.0, 0.5]), 0.0))
