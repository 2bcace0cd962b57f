"""One LCBench fold as the benchmark builds it: the meta-table, the held-out task, its surrogate.

Shared by the tools that look inside a fold (``prefix_calibration.py``, ``residual_probe.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def lcbench_fold(lcbench: str, out: str, task: str, steps: int, **meta_kwargs: Any) -> tuple[Any, int, Any]:
    """``(meta-table, index of task, surrogate meta-trained on the other tasks)``.

    ``out``: the results folder of a ``quicktune bench --lcbench`` run, whose ``cache/`` holds the
    meta-table.
    """
    from optuna_quicktune.benchmark import yahpo
    from optuna_quicktune.benchmark.runner import BenchConfig, meta_table
    from optuna_quicktune.surrogate import meta_train

    md = meta_table(yahpo.lcbench(lcbench), BenchConfig(), Path(out) / "cache")
    held = [i for i, t in enumerate(md.tasks) if t.name == task]
    if not held:
        raise SystemExit(f"Task {task!r} is not in the meta-table ({[t.name for t in md.tasks]}).")
    others = [i for i in range(len(md.tasks)) if i != held[0]]
    return md, held[0], meta_train(md.select_tasks(others), steps=steps, seed=0, **meta_kwargs)
