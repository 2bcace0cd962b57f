"""What a study's finished runs tell the surrogate about other configurations (docs/benchmarks.md, stop 17).

Why: QuickTune conditions the surrogate on the study's own runs; this measures how much that moves
the predictions of the configurations the study has not run, with the residual correlation the
fold's ``meta_train`` estimated and with it switched off (the same weights). For one LCBench task it
meta-trains the fold on the other tasks of the benchmark's meta-table, conditions on the final
scores of ``--seen`` random table configurations of the held-out task, and reports the error,
predicted std and 90 % coverage of the final scores of the others, and of the ``--near`` ones
nearest to a seen configuration in the encoding, in the metric's units.

Usage (after ``quicktune bench --lcbench DIR --out OUT``, whose ``cache/`` holds the meta-table)::

    python tools/residual_probe.py --lcbench ../shared/benchmarks/yahpo-lcbench --out OUT --task 167200
"""

from __future__ import annotations

import argparse
import copy

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lcbench", required=True, help="the YAHPO LCBench folder")
    p.add_argument("--out", required=True, help="the results folder of a quicktune bench run (its cache/)")
    p.add_argument("--task", required=True, help="the held-out task")
    p.add_argument("--seen", type=int, default=10, help="finished runs the study has")
    p.add_argument("--near", type=int, default=20, help="unseen configurations nearest to the seen ones")
    p.add_argument("--steps", type=int, default=400, help="meta-training steps (the benchmark's default)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    from lcbench_fold import lcbench_fold

    md, held, with_it = lcbench_fold(a.lcbench, a.out, a.task, a.steps)
    without = copy.deepcopy(with_it)
    without.performance.set_residual(0.0, [])
    arrays = md.arrays()
    rows = np.flatnonzero(arrays["task"] == held)
    X, Y = arrays["X"][rows], arrays["Y"][rows]
    final = np.array([y[np.isfinite(y)][-1] for y in Y])
    F = int(np.isfinite(Y).sum(1).max())
    order = np.random.default_rng(a.seed).permutation(len(rows))
    seen, rest = order[: a.seen], order[a.seen:]
    dist = np.min(((X[rest, None, :] - X[None, seen, :]) ** 2).sum(-1), axis=1)
    near = rest[np.argsort(dist)[: a.near]]
    kw = dict(fidelity_max=F, metafeatures=md.tasks[held].metafeatures, sign=float(arrays["sign"][held]))
    print(f"task {a.task}: {a.seen} finished runs seen; residual {with_it.info['validation']['residual']}")
    print("  error / predicted std / 90 % coverage of the final score")
    for name, sur in (("without the residual", without), ("with it", with_it)):
        view = sur.conditioned_on(X[seen], [F] * len(seen), final[seen], **kw)
        for label, idx in (("other configurations", rest), (f"{len(near)} nearest", near)):
            m, s = view.predict(X[idx], None, F, **kw)
            err = np.abs(m - final[idx])
            print(f"  {name:21s} {label:21s} {err.mean():6.2f} / {s.mean():6.2f} / {np.mean(err <= 1.6449 * s):.2f}")


if __name__ == "__main__":
    main()
