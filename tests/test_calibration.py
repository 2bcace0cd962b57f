"""The predictive std is calibrated per prefix bin: each bin's intervals hold about 90 % on validation rows."""

import numpy as np
import pytest
import torch

from optuna_quicktune.surrogate import load, meta_train
from optuna_quicktune.surrogate.calibration import EDGES, MIN_ROWS, Z90, fit_scales, prefix_bins
from optuna_quicktune.surrogate.preprocessing import Batch
from tests.conftest import HELD_OUT


def _batch(prefix_len, target, fmax=10):
    q = len(prefix_len)
    return Batch.build(np.zeros((q, 2)), np.zeros((q, fmax)), np.asarray(prefix_len), np.asarray(target, float),
                       np.full(q, float(fmax)), np.zeros((q, 0)), fmax)


def test_rows_are_binned_by_the_share_of_the_target_their_prefix_covers():
    # fresh | (0, 1/8] | (1/8, 1/4] | (1/4, 1/2] | (1/2, 1)
    b = _batch([0, 1, 1, 2, 1, 4, 5, 9, 0], [10, 10, 8, 10, 4, 10, 8, 10, 3])
    assert prefix_bins(b).tolist() == [0, 1, 1, 2, 2, 3, 4, 4, 0]
    assert len(EDGES) + 2 == 5


def test_each_bin_gets_the_factor_that_makes_its_interval_hold_90_percent():
    rng = np.random.default_rng(0)
    bins = np.concatenate([np.repeat(np.arange(4), 400), np.full(MIN_ROWS - 1, 4)])  # bin 4: too few rows
    spread = np.array([1.0, 3.0, 2.0, 0.5, 1.0])[bins]
    z = np.abs(rng.normal(size=len(bins)) * spread)
    scales = fit_scales(z, bins, fallback=1.7)
    for k in range(4):
        assert np.mean(z[bins == k] <= Z90 * scales[k]) == pytest.approx(0.9, abs=0.01)
    assert scales[1] > scales[2] > scales[0] > scales[3]
    assert scales[4] == 1.7  # no bin-4 rows: the global factor


def test_meta_train_calibrates_per_bin_and_the_factors_survive_save_and_load(train_md, full_md, surrogate, tmp_path):
    s = meta_train(train_md, steps=300, seed=0, calibration="prefix")
    g = surrogate  # the same meta-training with calibration="global", the default
    perf = s.performance
    assert len(perf.std_scales) == len(EDGES) + 2 and g.performance.std_scales == ()
    assert s.info["validation"]["std_scales"] == list(perf.std_scales)
    # Same weights and global factor: only the per-bin factors differ.
    assert perf.std_scale == g.performance.std_scale
    assert all(torch.equal(a, b) for a, b in zip(perf.net.state_dict().values(), g.performance.net.state_dict().values()))

    test = full_md.select_tasks([HELD_OUT])
    a, F = test.arrays(), test.tasks[0].fidelity_max
    mf = dict(test.tasks[0].metafeatures)
    plen = np.array([0, 1, 2, 4, 9] * 4)
    X = a["X"][: len(plen)]
    prefixes = [a["Y"][i, : plen[i]] for i in range(len(plen))]
    # At the prior's map (task_scale.py), without the map's own uncertainty: the model's std alone.
    s, g = s.rescaled(*s.task_scale.mode), g.rescaled(*g.task_scale.mode)
    _, sd = s.predict(X, prefixes, F, fidelity_max=F, metafeatures=mf)
    _, sd_g = g.predict(X, prefixes, F, fidelity_max=F, metafeatures=mf)
    bins = prefix_bins(s.batch(X, prefixes, F, fidelity_max=F, metafeatures=mf))
    np.testing.assert_allclose(sd / sd_g, np.asarray(perf.std_scales)[bins] / perf.std_scale, rtol=1e-6)
    # A named row set (the sampler's pool) gets the same factors, also when it is served from the cache.
    for _ in range(2):
        _, sd_set = s.predict(X, prefixes, F, fidelity_max=F, metafeatures=mf, query_key=("rows", 1))
        np.testing.assert_allclose(sd_set, sd, rtol=1e-6)

    s.save(str(tmp_path / "s"))
    back = load(str(tmp_path / "s"))
    assert back.performance.std_scales == perf.std_scales
    _, sd_back = back.rescaled(*back.task_scale.mode).predict(X, prefixes, F, fidelity_max=F, metafeatures=mf)
    np.testing.assert_allclose(sd_back, sd, rtol=1e-6)


def test_unknown_calibration_is_refused(train_md):
    with pytest.raises(ValueError, match="calibration must be one of"):
        meta_train(train_md, steps=1, calibration="per-task")
