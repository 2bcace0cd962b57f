"""Score QuickTune's zero-shot first pick on each LCBench fold, offline (docs/benchmarks.md).

Why: in the replay, "regret after 1 trial" is what the first trial *observed*, and the pruner may
pause it after a few epochs. This script asks what the first pick is worth as a configuration:
for each task it loads the fold's surrogate cached by ``quicktune bench``, builds the sampler's
candidate pool (random draws plus the meta-training configurations), and reports the true final
regret (YAHPO surrogate, the benchmark's reference) of the candidate with the best predicted mean,
of the best among the meta-training configurations only, of the best mean - std, and of the
sampler's actual first proposal (the first portfolio member under the defaults), with the held-out
Spearman correlation of predicted and true final scores.

Usage (after ``quicktune bench --lcbench DIR --out OUT``)::

    python tools/first_pick.py --lcbench ../shared/benchmarks/yahpo-lcbench --out results/lcbench-timing
"""

from __future__ import annotations

import argparse
import glob
import json
import warnings

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lcbench", required=True, help="the YAHPO LCBench folder")
    p.add_argument("--out", required=True, help="the results folder of a quicktune bench run (its cache/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate pool")
    p.add_argument("--n-candidates", type=int, default=1000, help="random configurations of the pool (the sampler's default)")
    args = p.parse_args()

    import optuna
    from scipy.stats import spearmanr

    from optuna_quicktune.benchmark.report import Reference
    from optuna_quicktune.benchmark.yahpo import lcbench
    from optuna_quicktune.sampler import QuickTuneSampler
    from optuna_quicktune.surrogate import load

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sc = lcbench(args.lcbench)
    refs = json.loads(open(glob.glob(f"{args.out}/cache/reference-*.json")[0]).read())
    rows: dict[str, list[float]] = {"first_proposal": [], "mean": [], "meta_only": [], "mean_minus_std": [], "spearman": []}
    for task in sc.tasks:
        surrogate = load(glob.glob(f"{args.out}/cache/surrogates/{task}-*")[0])
        sampler = QuickTuneSampler(surrogate, metafeatures=sc.metafeatures(task) or None,
                                   fidelity_max=sc.fidelity_max, seed=args.seed,
                                   n_candidates=args.n_candidates)
        study = optuna.create_study(direction=sc.direction)
        ctx = sampler.decision(study)  # the sampler's own pool and predictions
        configs = ctx.pool.configs
        mean, std = ctx.final_predictions()
        mean, std = ctx.sign * mean, std
        meta = np.zeros(len(configs), bool)
        meta[args.n_candidates:] = True  # the pool lists random draws, then the meta-dataset's configurations
        true, _ = sc.final_values(task, configs)
        ref = Reference.from_json(refs[task])
        regret = ref.regret(true)
        first = ctx.actions(limit=1)[0].config
        rows["first_proposal"].append(float(ref.regret(sc.final_values(task, [first])[0])[0]))
        rows["mean"].append(float(regret[np.argmax(mean)]))
        rows["meta_only"].append(float(regret[np.flatnonzero(meta)[np.argmax(mean[meta])]]))
        rows["mean_minus_std"].append(float(regret[np.argmax(mean - std)]))
        rows["spearman"].append(float(spearmanr(mean, ctx.sign * true)[0]))
        print(task, {k: round(v[-1], 3) for k, v in rows.items()}, flush=True)
    print("mean over tasks:", {k: round(float(np.mean(v)), 3) for k, v in rows.items()})


if __name__ == "__main__":
    main()
