"""Several QuickTune workers on one PostgreSQL storage: distributed zero-shot tuning with freeze-thaw.

Each worker is an ordinary process running ``study.optimize`` on the same study; nothing but the
storage is shared. The sampler rebuilds its decision from the storage on every trial and *claims*
a configuration (or a paused trial to resume) by writing it into its trial, then re-reads the study
and yields if another worker holds the same claim, so workers never run the same configuration
twice and a paused run is resumed by at most one of them. Start more workers on more machines
with the same command line: that is all the coordination there is.

    # a surrogate (see examples/cpu_demo.py or `quicktune meta-train`), a PostgreSQL database, then:
    python examples/postgres_workers.py --storage postgresql+psycopg2://user@host/db --surrogate DIR --workers 4
    python examples/postgres_workers.py --storage URL --surrogate DIR --smoke     # CI: 2 workers, 6 trials

The objective is the simulated family of ``optuna_quicktune.simulate`` (each step sleeps a little,
so workers really overlap); replace it by ``trl_objectives.SFTObjective`` for real finetuning,
with ``checkpoint_dir`` on storage every worker can read. Needs ``psycopg2`` (``[dev]`` extra or
``pip install psycopg2-binary``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import warnings
from collections import Counter

import optuna

from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract, load_surrogate
from optuna_quicktune.simulate import SimulatedFamily, SimulatedObjective


def _task(args: argparse.Namespace):  # noqa: ANN202 - a SimulatedTask
    # The held-out task of tests/conftest.py's family (the surrogate never saw it).
    return SimulatedFamily(args.family_tasks, fidelity_max=args.fidelity, seed=0).tasks[args.task]


def worker(args: argparse.Namespace, n_trials: int) -> None:
    """One worker: its own sampler and pruner objects, the shared study."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    torch.set_num_threads(1)
    task = _task(args)
    sampler = QuickTuneSampler(load_surrogate(args.surrogate), n_candidates=args.candidates)  # seed: from the study name
    study = optuna.load_study(study_name=args.study, storage=args.storage, sampler=sampler,
                              pruner=QuickTunePruner(sampler))
    study.optimize(SimulatedObjective(task, sleep=args.sleep), n_trials=n_trials)


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True, help="e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/quicktune")
    p.add_argument("--surrogate", required=True, help="A saved surrogate folder (meta-trained on the simulated family).")
    p.add_argument("--study", default=None, help="Study name (default: a new one per run).")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trials", type=int, default=40, help="Trials over all workers.")
    p.add_argument("--family-tasks", type=int, default=10)
    p.add_argument("--task", type=int, default=5)
    p.add_argument("--fidelity", type=int, default=10)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--sleep", type=float, default=0.05, help="Real seconds per simulated fidelity step.")
    p.add_argument("--smoke", action="store_true", help="2 workers, 6 trials, a small pool: for CI.")
    args = p.parse_args(argv)
    if args.smoke:
        args.workers, args.trials, args.candidates, args.sleep = 2, 6, 100, 0.02
    args.study = args.study or f"quicktune-workers-{int(time.time() * 1000)}"

    # Describe the task once, before any worker starts, so that every sampler sees the meta-features.
    task = _task(args)
    study = optuna.create_study(study_name=args.study, storage=args.storage, direction="maximize")
    contract.describe_task(study, dataset=task.name, model="simulated", metric="score", fidelity_max=task.fidelity_max,
                           metafeatures=task.metafeatures, space=load_surrogate(args.surrogate).space)

    share = [args.trials // args.workers + (i < args.trials % args.workers) for i in range(args.workers)]
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker, as on separate machines
    procs = [ctx.Process(target=worker, args=(args, n)) for n in share if n > 0]
    t0 = time.perf_counter()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    bad = [proc.exitcode for proc in procs if proc.exitcode != 0]
    if bad:
        raise SystemExit(f"{len(bad)} worker(s) failed with exit codes {bad}")

    trials = optuna.load_study(study_name=args.study, storage=args.storage).trials
    # resume_of may be present and None: a trial whose resumption claim another worker took.
    new_configs = Counter(t.user_attrs.get(contract.CONFIG_ID) for t in trials if t.user_attrs.get(contract.RESUME_OF) is None)
    resumed = Counter(t.user_attrs[contract.RESUME_OF] for t in trials if t.user_attrs.get(contract.RESUME_OF) is not None)
    duplicates = sum(c - 1 for c in new_configs.values() if c > 1) + sum(c - 1 for c in resumed.values() if c > 1)
    states = Counter(t.state.name for t in trials)
    best = max((t.value for t in trials if t.value is not None), default=float("nan"))
    print(f"{len(procs)} workers, {len(trials)} trials in {time.perf_counter() - t0:.1f} s: {dict(states)}; "
          f"{len(resumed)} resumed; duplicated claims: {duplicates}; best {best:.4f}")
    if duplicates:
        raise SystemExit("Two workers ran the same configuration (or resumed the same trial): that is a bug.")
    return {"trials": len(trials), "duplicates": duplicates, "resumed": len(resumed)}


if __name__ == "__main__":
    main()
