"""tools/heldout_surrogate.py: leave-one-task-out per model family, on a small synthetic meta-dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from optuna.distributions import FloatDistribution

from optuna_quicktune.metadataset import MetaDataset, Run, Task
from optuna_quicktune.space import SearchSpace

_spec = importlib.util.spec_from_file_location("heldout_surrogate",
                                               Path(__file__).parent.parent / "tools" / "heldout_surrogate.py")
heldout_surrogate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heldout_surrogate)


def _metadataset(swap_task: int | None = None, fidelity: int = 2) -> MetaDataset:
    """Two families x 4 tasks x 6 configurations; a lower ``x`` is better everywhere (but on ``swap_task``)."""
    space = SearchSpace({"x": FloatDistribution(0.0, 1.0)}, name="toy")
    xs = np.linspace(0.05, 0.95, 6)
    tasks, runs = [], []
    for model in ("m1", "m2"):
        for k in range(4):
            t = len(tasks)
            tasks.append(Task(f"t{k}/{model}", f"t{k}", model, "eval_loss", "minimize", "epoch", fidelity,
                              {"size": float(k)}))
            for x in xs:
                final = (1.0 - x if t == swap_task else x) + 0.1 * k
                curve = final + 0.5 * np.linspace(1.0, 0.0, fidelity)
                runs.append(Run(t, {"x": float(x)}, curve, np.arange(1.0, fidelity + 1.0)))
    return MetaDataset(space, tasks, runs)


def test_each_family_is_scored_on_its_own_tasks():
    report = heldout_surrogate.heldout(_metadataset(), steps=5, seed=0, time_limit=30)
    assert sorted(report) == ["m1", "m2"]
    for fam in report.values():
        assert sorted(fam["tasks"]) == ["t0", "t1", "t2", "t3"]
        for row in fam["tasks"].values():
            assert row["runs"] == 6 and 0 <= row["covered"] <= 6 and -1 <= row["spearman"] <= 1
            # the same order on every task: the other tasks' best is this task's best, their ranks its ranks
            assert row["portfolio_regret"] == 0.0 and row["mean_rank_spearman"] == 1.0
        assert fam["portfolio_regret_mean"] == 0.0


def test_a_task_unlike_the_others_shows_in_the_no_model_baseline():
    report = heldout_surrogate.heldout(_metadataset(swap_task=0), steps=5, seed=0, time_limit=30)
    odd = report["m1"]["tasks"]["t0"]
    assert odd["portfolio_regret"] == 1.0 and odd["mean_rank_spearman"] == -1.0
    assert report["m2"]["tasks"]["t0"]["portfolio_regret"] == 0.0  # families do not mix


def test_a_compared_surrogate_that_refuses_the_tasks_is_reported_not_fatal():
    from optuna_quicktune.surrogate import meta_train

    short = meta_train(_metadataset(fidelity=2), steps=5, seed=0)  # its curves are shorter than the tasks'
    report = heldout_surrogate.heldout(_metadataset(fidelity=3), steps=5, seed=0, time_limit=30, compare=short)
    for fam in report.values():
        assert fam["compare"]["unscorable_tasks"] == 4 and fam["compare"]["unscorable_reason"]
        assert all("unscorable" in row["compare"] for row in fam["tasks"].values())
        assert np.isfinite(fam["spearman_mean"])  # the held-out figures themselves are intact
