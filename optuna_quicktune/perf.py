"""Performance benchmark (a command, not a test): ``quicktune perf`` / ``make perf``.

Measures on this machine: meta-training time for ``runs`` x ``fidelity`` curves (the seed paper's
1,800 runs x 50 steps), the latency of 1,000 predictions, and the p50 latency of one suggestion and
of one prune decision in a study holding ``observed_points`` curve points (in-memory storage, so
storage speed is not what is measured).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

__all__ = ["run_perf"]


def run_perf(runs: int = 1800, fidelity: int = 50, candidates: int = 1000, observed_points: int = 10000, steps: int = 1500) -> dict[str, Any]:
    import optuna
    import torch

    from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract
    from optuna_quicktune.simulate import SimulatedFamily
    from optuna_quicktune.surrogate import meta_train

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_tasks = 18
    fam = SimulatedFamily(n_tasks + 1, fidelity_max=fidelity, seed=0)
    md = fam.metadataset(runs // n_tasks, seed=1, tasks=list(range(n_tasks)))
    t0 = time.perf_counter()
    s = meta_train(md, steps=steps, seed=0)
    train_s = time.perf_counter() - t0

    task = fam.tasks[n_tasks]
    X = fam.space.encode_many(fam.space.sample(candidates, 5))
    s.predict(X, None, fidelity, fidelity_max=fidelity, metafeatures=task.metafeatures)
    lat = []
    for _ in range(20):
        s.performance.queries.clear()  # from scratch: the query cache would answer a repeated set at once
        t = time.perf_counter()
        s.predict(X, None, fidelity, fidelity_max=fidelity, metafeatures=task.metafeatures)
        lat.append(time.perf_counter() - t)

    # A study with `observed_points` curve points: paused trials of `fidelity // 2` steps each.
    sampler = QuickTuneSampler(s, metafeatures=task.metafeatures, n_candidates=candidates, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    contract.describe_task(study, dataset="perf", model="simulated", metric="score", fidelity_max=fidelity,
                           metafeatures=task.metafeatures, space=fam.space)
    per = max(1, fidelity // 2)
    dists = dict(fam.space.distributions)
    trials = []
    for i, c in enumerate(fam.space.sample(max(1, observed_points // per), 11)):
        curve = task.curve(c)[:per]
        trials.append(optuna.trial.create_trial(
            params=c, distributions=dists, state=optuna.trial.TrialState.PRUNED,
            intermediate_values={k + 1: float(v) for k, v in enumerate(curve)},
            user_attrs={contract.CONFIG_ID: fam.space.config_id(c), contract.CHECKPOINT: f"ck{i}", contract.PAUSED: True},
        ))
    study.add_trials(trials)
    pruner = QuickTunePruner(sampler)
    sampler.rank_actions(study)  # fills the pool cache, as the first call of a worker does
    ask = []
    prune = []
    for _ in range(15):
        t = time.perf_counter()
        trial = study.ask()
        ask.append(time.perf_counter() - t)
        params = fam.space.suggest(trial)
        trial.report(float(task.curve(params)[0]), 1)
        frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001 - what Trial.should_prune passes
        t = time.perf_counter()
        pruner.prune(study, frozen)
        prune.append(time.perf_counter() - t)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return {
        "machine": {"torch_threads": torch.get_num_threads()},
        "meta_train": {"runs": len(md.runs), "fidelity": fidelity, "steps_run": s.info["steps"], "seconds": round(train_s, 2)},
        "predict_ms": {"candidates": candidates, "p50": round(1000 * float(np.median(lat)), 2)},
        "suggest_ms": {"observed_points": len(trials) * per, "candidates": candidates, "p50": round(1000 * float(np.median(ask)), 2)},
        "prune_ms": {"p50": round(1000 * float(np.median(prune)), 2)},
    }
