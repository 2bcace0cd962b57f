"""meta_train(task_level=True): each meta-training task's points share an offset in the likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from optuna_quicktune.errors import SurrogateFormatError
from optuna_quicktune.surrogate import load, meta_train
from optuna_quicktune.surrogate.gp import ExactGP
from tests.conftest import HELD_OUT


def test_the_likelihood_is_the_gaussian_density_with_a_shared_offset_per_task():
    gp = ExactGP(task_level=True)
    torch.manual_seed(0)
    Z, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    with torch.no_grad():
        K = gp.covariance(Z, Z) + gp.task_var * (g[:, None] == g[None, :]) + gp.noise_matrix(Z)
        ref = torch.distributions.MultivariateNormal(gp.point_mean(Z).expand(7), covariance_matrix=K).log_prob(y) / 7
        assert float(gp.marginal_log_likelihood(Z, y, g)) == pytest.approx(float(ref), rel=1e-10)
        # Without groups (or without the level) nothing is shared: the model before it.
        plain = ExactGP()
        plain.load_state_dict({k: v for k, v in gp.state_dict().items() if k != "raw_task_var"})
        assert float(gp.marginal_log_likelihood(Z, y)) == pytest.approx(float(plain.marginal_log_likelihood(Z, y, g)))


def test_the_level_variance_starts_at_the_spread_of_the_tasks_levels(train_md):
    from optuna_quicktune.surrogate.preprocessing import Preprocessing
    from optuna_quicktune.surrogate.tuples import TrainingTuples

    arrays = train_md.arrays()
    data = TrainingTuples(arrays, Preprocessing.fit(arrays, train_md.metafeature_names))
    levels = [np.nanmean(data.Z[data.task == t]) for t in data.tasks]
    assert data.level_variance(data.tasks) == pytest.approx(np.var(levels)) and np.var(levels) > 0
    gp = ExactGP(task_level=True)
    gp.init_task_var(0.37)
    assert float(gp.task_var.detach()) == pytest.approx(0.37, rel=1e-5)


@pytest.fixture(scope="module")
def task_level_surrogate(train_md):
    return meta_train(train_md, steps=60, seed=0, task_level=True)


def test_a_new_task_shares_the_learned_level_and_the_surrogate_survives_save_and_load(task_level_surrogate, full_md, tmp_path):
    s = task_level_surrogate
    var = float(s.performance.gp.task_var.detach())
    assert var > 0 and s.performance.task_effect == pytest.approx(var) and s.info["hyperparameters"]["task_level"]
    assert s.performance.context_groups is not None and len(s.performance.context_groups) == len(s.performance.context_y)
    task, runs = full_md.tasks[HELD_OUT], full_md.runs_of(HELD_OUT)
    X = np.stack([full_md.space.encode(r.config) for r in runs])

    def predict(sur):
        return sur.predict(X, None, task.fidelity_max, fidelity_max=task.fidelity_max,
                           metafeatures=dict(task.metafeatures), sign=task.sign)

    s.save(str(tmp_path / "s"))
    m, sd = predict(s)
    m2, sd2 = predict(load(str(tmp_path / "s")))
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_array_equal(sd, sd2)
    # A study's runs move every prediction for its task through the shared offset.
    observed = np.array([r.curve[-1] for r in runs[:3]])
    shift = 3 * float(np.std([r.curve[-1] for r in runs]))
    view = s.conditioned_on(X[:3], np.full(3, task.fidelity_max), observed + shift,
                            fidelity_max=task.fidelity_max, metafeatures=dict(task.metafeatures), sign=task.sign)
    mv, _ = predict(view)
    assert np.all(mv[3:] > m[3:])  # three runs far above their predictions lift every other one on the task


def test_a_task_level_file_without_its_context_tasks_is_refused(task_level_surrogate, tmp_path):
    d = tmp_path / "s"
    task_level_surrogate.save(str(d))
    tensors = load_file(str(d / "weights.safetensors"))
    del tensors["context.groups"]
    save_file(tensors, str(d / "weights.safetensors"))
    with pytest.raises(SurrogateFormatError, match="context.groups"):
        load(str(d))


def test_the_default_model_is_unchanged(surrogate):
    assert "task_level" not in surrogate.performance.hparams and surrogate.performance.context_groups is None
    assert not hasattr(surrogate.performance.gp, "raw_task_var")
