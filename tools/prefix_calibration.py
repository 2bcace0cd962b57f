"""How well a surrogate predicts a run's later score from its own curve, by prefix length (docs/benchmarks.md, stop 16).

Why: the pruner compares a running trial's predicted end with fresh candidates, so what matters is
the error and the calibration of predictions *given a curve prefix*, which the zero-shot held-out
figures (fresh configurations only) do not show. For one LCBench task, this meta-trains the fold's
surrogate on the other tasks of the benchmark's meta-table (``meta_train`` with the given models),
samples (run, prefix, later step) tuples of the held-out task and reports, per prefix bin, the mean
absolute error, the mean predicted std and the 90 % interval coverage, in the metric's units; and
the error of carrying the last observed score forward to the final one.

Usage (after ``quicktune bench --lcbench DIR --out OUT``, whose ``cache/`` holds the meta-table)::

    python tools/prefix_calibration.py --lcbench ../shared/benchmarks/yahpo-lcbench --out OUT --task 126025 \
        --noise prefix --mean last
"""

from __future__ import annotations

import argparse
import numpy as np

_BINS = ((0.0, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.01))  # prefix fractions of prefixed tuples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lcbench", required=True, help="the YAHPO LCBench folder")
    p.add_argument("--out", required=True, help="the results folder of a quicktune bench run (its cache/)")
    p.add_argument("--task", required=True, help="the held-out task")
    from optuna_quicktune.surrogate.networks import MEAN_MODELS, NOISE_MODELS

    p.add_argument("--noise", default="prefix", choices=NOISE_MODELS)
    p.add_argument("--mean", default="last", choices=MEAN_MODELS)
    p.add_argument("--steps", type=int, default=400, help="meta-training steps (the benchmark's default)")
    p.add_argument("--tuples", type=int, default=4000)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()

    from lcbench_fold import lcbench_fold

    from optuna_quicktune.surrogate.tuples import TrainingTuples

    md, held, sur = lcbench_fold(a.lcbench, a.out, a.task, a.steps, noise=a.noise, mean=a.mean)
    arrays = md.arrays()
    data = TrainingTuples(arrays, sur.prep)
    b, y = data.sample([held], a.tuples, np.random.default_rng(a.seed))
    m, sd = sur.performance.predict_z(b)
    frac = b.curve[:, -1].numpy()
    err, scale = np.abs(y - m), sur.prep.y_std
    print(f"task {a.task}, noise={a.noise}, mean={a.mean}: error / predicted std / 90 % coverage ({scale:.2f} per z unit)")
    groups = [("fresh", frac == 0)] + [
        (f"prefix {lo:.1f}-{min(hi, 1.0):.1f}", (frac > 0) & (frac >= lo) & (frac < hi)) for lo, hi in _BINS
    ]
    for name, k in groups:
        print(f"  {name:16s} n={int(k.sum()):5d}  {err[k].mean() * scale:6.2f} / {sd[k].mean() * scale:6.2f} / "
              f"{np.mean(err[k] <= 1.6449 * sd[k]):.2f}")
    Y = arrays["Y"][arrays["task"] == held]
    F = Y.shape[1]
    for lo, hi in _BINS:
        steps = [s for s in range(1, F) if lo <= s / F < hi]
        if steps:
            e = np.mean([np.nanmean(np.abs(Y[:, F - 1] - Y[:, s - 1])) for s in steps])
            print(f"  last score carried forward to the final one, prefix {lo:.1f}-{min(hi, 1.0):.1f}: error {e:.2f}")


if __name__ == "__main__":
    main()
