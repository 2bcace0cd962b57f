import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from optuna_quicktune.errors import MetaFeatureError, SpaceMismatchError, SurrogateFormatError
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.surrogate import load, meta_train
from tests.conftest import HELD_OUT


def _held_out(full_md):
    test = full_md.select_tasks([HELD_OUT])
    a = test.arrays()
    return test, a, dict(test.tasks[0].metafeatures)


def _rank_quality(s, full_md):
    test, a, mf = _held_out(full_md)
    mean, _ = s.predict(a["X"], None, test.tasks[0].fidelity_max, fidelity_max=test.tasks[0].fidelity_max, metafeatures=mf)
    return float(spearmanr(mean, a["Y"][:, -1]).statistic)


def test_zero_shot_ranking_on_held_out_task_uses_metafeatures(surrogate, train_md, full_md):
    rho = _rank_quality(surrogate, full_md)
    assert rho >= 0.6, rho
    # The same model meta-trained with the tasks' meta-features shuffled among them.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(train_md.tasks))
    while np.any(perm == np.arange(len(perm))):
        perm = rng.permutation(len(train_md.tasks))
    from dataclasses import replace

    shuffled = MetaDataset(
        train_md.space,
        [replace(t, metafeatures=train_md.tasks[p].metafeatures) for t, p in zip(train_md.tasks, perm)],
        train_md.runs,
    )
    rho_shuffled = _rank_quality(meta_train(shuffled, steps=300, seed=0), full_md)
    assert rho - rho_shuffled >= 0.15, (rho, rho_shuffled)


def test_predictive_intervals_are_calibrated(surrogate, full_md):
    test, a, mf = _held_out(full_md)
    rng = np.random.default_rng(1)
    n = a["X"].shape[0]
    F = test.tasks[0].fidelity_max
    target = rng.integers(1, F + 1, size=n)
    plen = np.floor(rng.random(n) * target).astype(int)
    prefixes = [a["Y"][i, : plen[i]] for i in range(n)]
    mean, std = surrogate.predict(a["X"], prefixes, target, fidelity_max=F, metafeatures=mf)
    y = a["Y"][np.arange(n), target - 1]
    inside = np.mean(np.abs(y - mean) <= 1.6449 * std)
    # The std scale is fitted on the validation tasks: there, 90 % intervals hold 70-99 % of points.
    val = surrogate.info["validation"]["coverage90_final"]
    assert 0.70 <= val <= 0.99, val
    # On the one held-out task (48 points) intervals must not be too narrow, nor vacuous: an
    # interval wider than the task's whole range of scores would "cover" everything.
    assert inside >= 0.70, inside
    assert np.median(2 * 1.6449 * std) < 0.5 * (np.nanmax(a["Y"]) - np.nanmin(a["Y"])), np.median(std)


def test_prefix_improves_prediction(surrogate, full_md):
    test, a, mf = _held_out(full_md)
    F = test.tasks[0].fidelity_max
    y = a["Y"][:, -1]
    m0, _ = surrogate.predict(a["X"], None, F, fidelity_max=F, metafeatures=mf)
    m5, _ = surrogate.predict(a["X"], [row[:5] for row in a["Y"]], F, fidelity_max=F, metafeatures=mf)
    assert np.mean(np.abs(m5 - y)) < np.mean(np.abs(m0 - y))


def test_costs_are_positive_and_ordered(surrogate, full_md, family):
    test, a, mf = _held_out(full_md)
    c = surrogate.predict_cost(a["X"], 2, fidelity_max=10, metafeatures=mf)
    assert np.all(c > 0)
    truth = np.array([family.tasks[HELD_OUT].step_costs(r.config)[1] for r in test.runs])
    assert spearmanr(c, truth).statistic > 0.6


def test_cost_predictions_read_only_what_the_cost_network_reads(surrogate, family):
    """``predict_cost`` skips the curve columns; its values equal the cost network's on full inputs."""
    task = family.tasks[-1]
    X = family.space.encode_many(family.space.sample(40, 3))
    steps = np.arange(40) % surrogate.max_fidelity + 1
    kw = dict(fidelity_max=surrogate.max_fidelity, metafeatures=task.metafeatures)
    full = surrogate.batch(X, None, steps, **kw)
    want = surrogate.prep.cost(surrogate.cost.predict_log(full))
    np.testing.assert_array_equal(surrogate.predict_cost(X, steps, **kw), want)
    with pytest.raises(ValueError, match="exceeds the surrogate"):
        surrogate.predict_cost(X, steps, fidelity_max=surrogate.max_fidelity + 1, metafeatures=task.metafeatures)


def test_save_load_identical_predictions(surrogate, surrogate_dir, full_md):
    test, a, mf = _held_out(full_md)
    loaded = load(surrogate_dir)
    args = dict(fidelity_max=10, metafeatures=mf)
    np.testing.assert_array_equal(surrogate.predict(a["X"], None, 10, **args)[0], loaded.predict(a["X"], None, 10, **args)[0])
    np.testing.assert_array_equal(surrogate.predict(a["X"], None, 10, **args)[1], loaded.predict(a["X"], None, 10, **args)[1])
    np.testing.assert_array_equal(surrogate.predict_cost(a["X"], 3, **args), loaded.predict_cost(a["X"], 3, **args))
    assert loaded.weights_digest() == surrogate.weights_digest()
    assert loaded.space == surrogate.space and loaded.info["train_tasks"] == surrogate.info["train_tasks"]
    assert loaded.space.names == surrogate.space.names  # the encoding layout, not only the distributions
    assert not list(surrogate_dir.glob("*.pkl")) and not list(surrogate_dir.glob("*.pt"))


def test_corrupt_mismatched_and_newer_files_raise(surrogate, tmp_path):
    d = tmp_path / "s"
    surrogate.save(str(d))
    w = d / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(SurrogateFormatError, match="corrupted"):
        load(d)
    surrogate.save(str(d))
    cfg = json.loads((d / "surrogate.json").read_text())
    cfg["format_version"] = 99
    (d / "surrogate.json").write_text(json.dumps(cfg))
    with pytest.raises(SurrogateFormatError, match="Upgrade"):
        load(d)
    (d / "surrogate.json").write_text("{not json")
    with pytest.raises(SurrogateFormatError, match="not valid JSON"):
        load(d)
    with pytest.raises(SurrogateFormatError, match="missing"):
        load(tmp_path / "nowhere")
    from optuna.distributions import FloatDistribution

    with pytest.raises(SpaceMismatchError, match="meta-train one on yours"):
        surrogate.check_space(SearchSpace({"x": FloatDistribution(0, 1)}))
    with pytest.raises(MetaFeatureError, match="missing"):
        surrogate.predict(np.zeros((1, surrogate.space.dim)), None, 1, fidelity_max=10, metafeatures={"lr_hint": 1.0})


def test_meta_training_is_seeded(train_md):
    small = train_md.select_tasks([0, 1, 2])
    a = meta_train(small, steps=30, seed=3, eval_every=10)
    b = meta_train(small, steps=30, seed=3, eval_every=10)
    assert a.weights_digest() == b.weights_digest()
