"""Coverage of the fold surrogates' 90 % interval of a run's end, by how much of the curve is known.

Why: the pruner's two tests read the predicted *final* score of a run given its curve so far (a
portfolio member is protected while ``mean + 1.645 std`` reaches the best run; a run continues
while its expected improvement does), so what matters is whether that interval holds 90 % of the
outcomes at every curve length, not only for fresh configurations (the held-out figures). For each
task of a finished ``quicktune bench --lcbench`` run, this loads the task's cached fold surrogate
(meta-trained without the task) and predicts the final score of all the task's meta-table
configurations from their first ``p`` epochs, zero-shot, for each ``p`` of ``--prefixes``.

Usage (docs/benchmarks.md, stop 23)::

    python tools/interval_coverage.py OUT            # OUT: a bench --lcbench results folder (its cache/)
    python tools/interval_coverage.py OUT --tasks 167200,189354 --prefixes 0,1,4,16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's packages, not an installed copy

Z90 = 1.6448536269514722


def coverage(out: Path, tasks: list[str] | None, prefixes: list[int]) -> dict[int, np.ndarray]:
    """``|error| / std`` of every (task, configuration) per prefix length, pooled over the tasks."""
    from optuna_quicktune.metadataset import MetaDataset
    from optuna_quicktune.surrogate import load

    cache = out / "cache"
    tables = sorted(cache.glob("table-*.csv"))
    if not tables:
        raise SystemExit(f"{cache} holds no meta-table: pass the --out folder of a finished quicktune bench --lcbench run.")
    md = MetaDataset.from_csv(tables[0])
    pooled: dict[int, list[np.ndarray]] = {p: [] for p in prefixes}
    for name in tasks or [t.name for t in md.tasks]:
        folds = sorted((cache / "surrogates").glob(f"{name}-*"))
        if not folds:
            print(f"{name}: no cached fold surrogate, skipped")
            continue
        s = load(str(folds[0]))
        ti = md.task_index(name)
        task, runs = md.tasks[ti], md.runs_of(ti)
        X = np.stack([md.space.encode(r.config) for r in runs])
        y, L = np.array([r.curve[-1] for r in runs]), task.fidelity_max
        row = []
        for p in prefixes:
            m, sd = s.predict(X, [r.curve[:p] for r in runs], L, fidelity_max=L,
                              metafeatures=dict(task.metafeatures), sign=task.sign)
            z = np.abs(y - m) / sd
            pooled[p].append(z)
            row.append(f"p={p}: {np.mean(z <= Z90):.2f}")
        print(f"{name}: 90 % coverage " + ", ".join(row), flush=True)
    return {p: np.concatenate(v) for p, v in pooled.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the results folder of a finished quicktune bench --lcbench run")
    ap.add_argument("--tasks", help="comma-separated task ids (default: every task of the meta-table)")
    ap.add_argument("--prefixes", default="0,1,2,4,8,16,32,45", help="known epochs before predicting the end")
    a = ap.parse_args()
    pooled = coverage(a.out, a.tasks.split(",") if a.tasks else None, [int(v) for v in a.prefixes.split(",")])
    print("all tasks:")
    for p, z in pooled.items():
        print(f"  prefix {p:3d}: 90 % coverage {np.mean(z <= Z90):.3f}, median |error| / std {np.median(z):.3f} (n={len(z)})")


if __name__ == "__main__":
    main()
