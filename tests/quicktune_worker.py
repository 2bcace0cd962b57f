"""A study worker run as a separate process by the multi-process tests."""

from __future__ import annotations

import sys
import warnings

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

warnings.filterwarnings("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(storage_url: str, study_name: str, surrogate_dir: str, n_trials: int, sleep: float, task_index: int) -> None:
    from optuna_quicktune import QuickTunePruner, QuickTuneSampler, load_surrogate
    from optuna_quicktune.simulate import SimulatedFamily, SimulatedObjective

    if storage_url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage_url[len("journal:"):]))
    elif storage_url.startswith("heartbeat:"):
        storage = optuna.storages.RDBStorage(storage_url[len("heartbeat:"):], heartbeat_interval=1, grace_period=2)
    else:
        storage = storage_url
    task = SimulatedFamily(10, fidelity_max=10, seed=0).tasks[task_index]
    sampler = QuickTuneSampler(load_surrogate(surrogate_dir), metafeatures=task.metafeatures, seed=0)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=QuickTunePruner(sampler))
    study.optimize(
        SimulatedObjective(task, sleep=sleep),
        callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))],
    )


if __name__ == "__main__":
    url, name, sdir, n, sleep, task = sys.argv[1:7]
    main(url, name, sdir, int(n), float(sleep), int(task))
