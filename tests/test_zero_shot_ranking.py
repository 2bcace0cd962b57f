"""tools/zero_shot_ranking.py: a fold surrogate's zero-shot ranking against copula targets and the mean rank."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from tests.conftest import HELD_OUT

_spec = importlib.util.spec_from_file_location("zero_shot_ranking",
                                               Path(__file__).parent.parent / "tools" / "zero_shot_ranking.py")
zero_shot_ranking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zero_shot_ranking)


def test_copula_targets_keep_each_tasks_order_and_give_every_task_one_scale(full_md):
    cmd = zero_shot_ranking.copula_targets(full_md)
    levels = []
    for ti in range(len(full_md.tasks)):
        before = np.concatenate([r.curve for r in full_md.runs_of(ti)])
        after = np.concatenate([r.curve for r in cmd.runs_of(ti)])
        assert spearmanr(before, after).statistic == pytest.approx(1.0)  # a monotone map within the task
        levels.append((after.mean(), after.std()))
    # The raw tasks differ in level; after the transform each is close to a standard normal.
    assert np.allclose([m for m, _ in levels], 0.0, atol=0.05) and np.allclose([s for _, s in levels], 1.0, atol=0.1)


def test_ranking_reads_a_bench_cache_and_scores_three_rankings(full_md, surrogate, tmp_path):
    cache = tmp_path / "cache"
    (cache / "surrogates").mkdir(parents=True)
    full_md.to_csv(cache / "table-0.csv")
    task = full_md.tasks[HELD_OUT]
    surrogate.save(str(cache / "surrogates" / f"{task.name}-0"))  # meta-trained without the held-out task
    records = zero_shot_ranking.ranking(tmp_path, [task.name, full_md.tasks[0].name], steps=20, seed=0,
                                        targets=("copula", "center"))
    assert [r["task"] for r in records] == [task.name]  # task 0 has no fold: skipped
    rec = records[0]
    assert set(rec) == {"task", "default", "copula", "center", "mean_rank"} and rec["mean_rank"] is not None
    # The default figures are the cached surrogate's own ranking of the task's final scores.
    runs = full_md.runs_of(HELD_OUT)
    X = np.stack([full_md.space.encode(r.config) for r in runs])
    m, _ = surrogate.predict(X, None, task.fidelity_max, fidelity_max=task.fidelity_max,
                             metafeatures=dict(task.metafeatures), sign=task.sign)
    y = np.array([r.curve[-1] for r in runs])
    assert rec["default"]["rho"] == pytest.approx(spearmanr(m, y).statistic)
    assert rec["default"]["top1"] == pytest.approx((y.max() - y[np.argmax(m)]) / (y.max() - y.min()))
    for label in ("default", "copula", "center", "mean_rank"):
        assert -1 <= rec[label]["rho"] <= 1 and 0 <= rec[label]["top10"] <= rec[label]["top5"] <= rec[label]["top1"] <= 1
    assert set(zero_shot_ranking.summary(records)) == {"default", "copula", "center", "mean_rank"}


def test_centred_targets_remove_each_tasks_level_only(full_md):
    cmd = zero_shot_ranking.centred_targets(full_md)
    for ti in range(len(full_md.tasks)):
        before = np.stack([r.curve for r in full_md.runs_of(ti)])
        after = np.stack([r.curve for r in cmd.runs_of(ti)])
        assert after.mean() == pytest.approx(0.0, abs=1e-12)
        np.testing.assert_allclose(after - after[0, 0], before - before[0, 0], atol=1e-12)  # a shift, nothing else


def test_unknown_targets_and_a_folder_without_a_meta_table_are_refused(tmp_path, full_md):
    (tmp_path / "cache").mkdir()
    full_md.to_csv(tmp_path / "cache" / "table-0.csv")
    with pytest.raises(SystemExit, match="unknown targets"):
        zero_shot_ranking.ranking(tmp_path, None, targets=("ranks",))


def test_a_folder_without_a_meta_table_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no meta-table"):
        zero_shot_ranking.ranking(tmp_path, None)
