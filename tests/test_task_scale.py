"""Per-task score scales (``meta_train(targets="task")``): standardising, estimating, reading a study."""

import math

import numpy as np
import optuna
import pytest

from optuna_quicktune import QuickTunePruner, QuickTuneSampler
from optuna_quicktune.simulate import SimulatedObjective
from optuna_quicktune.surrogate import load, meta_train
from optuna_quicktune.surrogate.task_scale import TaskScalePrior, estimate_scale, standardise_tasks
from tests.conftest import HELD_OUT


@pytest.fixture(scope="module")
def task_surrogate(train_md):
    return meta_train(train_md, steps=150, seed=0, targets="task")


def test_standardise_tasks_gives_each_task_mean_0_std_1(train_md):
    md, stats = standardise_tasks(train_md)
    assert len(stats) == len(train_md.tasks)
    for t in range(len(md.tasks)):
        new = np.concatenate([r.curve for r in md.runs_of(t)])
        old = np.concatenate([r.curve for r in train_md.runs_of(t)])
        new, old = new[np.isfinite(new)], old[np.isfinite(old)]
        assert abs(new.mean()) < 1e-9 and abs(new.std() - 1) < 1e-9
        m, s = stats[t]
        np.testing.assert_allclose(new * s + m, old)


def test_estimate_scale_recovers_the_map_and_falls_back_to_the_prior():
    prior = TaskScalePrior(m0=50.0, tau_m=20.0, l0=math.log(10.0), tau_s=0.5)
    rng = np.random.default_rng(0)
    v = rng.normal(size=200)
    y = 80.0 + 4.0 * v
    m, s = estimate_scale(prior, y, v + rng.normal(scale=0.05, size=200), np.full(200, 0.05))
    assert abs(m - 80.0) < 0.2 and abs(s - 4.0) < 0.2
    assert estimate_scale(prior, np.zeros(0), np.zeros(0), np.zeros(0)) == pytest.approx((50.0, 10.0))
    # One uncertain observation moves the level towards it, not all the way.
    m1, _ = estimate_scale(prior, np.array([90.0]), np.array([0.0]), np.array([1.0]))
    assert 50.0 < m1 < 90.0


def test_task_targets_are_saved_and_a_rescaled_view_is_affine(task_surrogate, family, tmp_path):
    prior = task_surrogate.task_scale
    assert prior is not None and task_surrogate.info["hyperparameters"]["targets"] == "task"
    task_surrogate.save(str(tmp_path / "s"))
    assert load(str(tmp_path / "s")).task_scale == prior
    X = np.stack([family.space.encode(c) for c in family.space.sample(20, seed=3)])
    mf = family.tasks[HELD_OUT].metafeatures
    m0, s0 = prior.mode
    at_prior = task_surrogate.rescaled(m0, s0)
    for sign in (1.0, -1.0):
        mu, sd = at_prior.predict(X, None, 10, fidelity_max=10, metafeatures=mf, sign=sign)
        v = (sign * mu - m0) / s0  # standardised, higher is better
        mu2, sd2 = task_surrogate.rescaled(70.0, 3.0).predict(X, None, 10, fidelity_max=10, metafeatures=mf, sign=sign)
        np.testing.assert_allclose(mu2, sign * (70.0 + 3.0 * v), rtol=1e-9)
        np.testing.assert_allclose(sd2, 3.0 * sd / s0, rtol=1e-9)
        # On its own the surrogate predicts at the prior's map, with the map's uncertainty added.
        mu0, sd0 = task_surrogate.predict(X, None, 10, fidelity_max=10, metafeatures=mf, sign=sign)
        np.testing.assert_allclose(mu0, mu, rtol=1e-9)
        assert np.all(sd0 > sd) and np.all(sd0 >= prior.tau_m)
    with pytest.raises(ValueError, match="targets"):
        meta_train(family.metadataset(4, seed=2), steps=1, targets="rank")


def test_sampler_reads_the_study_in_the_estimated_scale(task_surrogate, family):
    task = family.tasks[HELD_OUT]
    sampler = QuickTuneSampler(task_surrogate, metafeatures=task.metafeatures, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler))
    assert sampler.decision(study).surrogate is task_surrogate  # no finished run: the prior's map
    study.optimize(SimulatedObjective(task), n_trials=6)
    after = sampler.decision(study).surrogate
    assert after.scale_id  # re-estimated from the finished runs
    prior = task_surrogate.task_scale
    m0, s0 = prior.mode
    scale = after.prep.y_std / (task_surrogate.prep.y_std / s0)
    level = after.prep.y_mean - scale * (task_surrogate.prep.y_mean - m0) / s0
    assert scale > 0 and np.isfinite(level)
    assert (level, scale) != pytest.approx((m0, s0))
    # The scores the study saw, read in the surrogate's per-task units, are no longer the prior's reading.
    best = max(v for t in study.trials for v in t.intermediate_values.values())
    assert after.prep.z(np.array([best]))[0] != pytest.approx(task_surrogate.prep.z(np.array([best]))[0])
