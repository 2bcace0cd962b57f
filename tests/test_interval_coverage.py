"""tools/interval_coverage.py: coverage of a fold surrogate's interval of a run's end, by known epochs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HELD_OUT

_spec = importlib.util.spec_from_file_location("interval_coverage",
                                               Path(__file__).parent.parent / "tools" / "interval_coverage.py")
interval_coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interval_coverage)


def test_coverage_reads_a_bench_cache_and_pools_the_tasks(full_md, surrogate, tmp_path):
    cache = tmp_path / "cache"
    (cache / "surrogates").mkdir(parents=True)
    full_md.to_csv(cache / "table-0.csv")
    name = full_md.tasks[HELD_OUT].name
    surrogate.save(str(cache / "surrogates" / f"{name}-0"))  # meta-trained without the held-out task
    pooled = interval_coverage.coverage(tmp_path, [name, full_md.tasks[0].name], [0, 9])
    runs = full_md.runs_of(HELD_OUT)
    assert sorted(pooled) == [0, 9] and all(len(z) == len(runs) for z in pooled.values())  # task 0 has no fold: skipped
    # The same numbers as predicting the task's ends directly from their first 9 epochs.
    task = full_md.tasks[HELD_OUT]
    X = np.stack([full_md.space.encode(r.config) for r in runs])
    m, sd = surrogate.predict(X, [r.curve[:9] for r in runs], task.fidelity_max, fidelity_max=task.fidelity_max,
                              metafeatures=dict(task.metafeatures), sign=task.sign)
    np.testing.assert_allclose(pooled[9], np.abs(np.array([r.curve[-1] for r in runs]) - m) / sd, rtol=1e-9)


def test_a_folder_without_a_meta_table_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no meta-table"):
        interval_coverage.coverage(tmp_path, None, [0])
