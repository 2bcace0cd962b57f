"""``quicktune faults``: kill workers at random moments and check that nothing is lost.

For each storage (SQLite file, journal file, PostgreSQL), ``workers`` processes tune one study of
the simulated task family (:mod:`optuna_quicktune.simulate`) with :class:`QuickTuneSampler` and
:class:`QuickTunePruner`, exactly as users run them: a plain storage URL, no heartbeat settings.
A seeded loop SIGKILLs a random worker (mostly while it runs a trial, sometimes at any moment:
during start-up, inside the sampler) and starts a new one. After the kills the workers finish the
study, then one recovery pass runs (``quicktune recover --grace 0``: every worker is stopped).

Figures (each must be 0 except the first): kills survived; completed trials lost (a COMPLETE or
PRUNED trial seen before a kill that is gone or changed after); configurations run twice at the
same fidelity (two non-failed trials of one configuration reporting the same step); RUNNING trials
left after recovery; killed runs never run again. Then the corpus of malformed inputs
(:mod:`optuna_quicktune.malformed`) and how each ended.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_faults_parser", "run_chaos", "chaos_figures", "TARGET_ATTR"]

TARGET_ATTR = "chaos.target"  # study attr: finished trials after which workers stop (harness-only)
TASK_INDEX = 5
FIDELITY = 10


def add_faults_parser(sub: Any) -> None:
    """Register ``quicktune faults`` on the CLI's subparsers."""
    p = sub.add_parser("faults", help="Fault injection: SIGKILL workers on SQLite, journal and PostgreSQL; malformed inputs.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--storages", default="sqlite,journal,postgresql",
                   help="Comma-separated: sqlite, journal, postgresql (a local server is started if --postgres-url is not given).")
    p.add_argument("--postgres-url", default=None, help="Use this PostgreSQL database instead of starting one (it must be empty).")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--kills", type=int, default=60, help="SIGKILLs in all, spread over the storages.")
    p.add_argument("--trials", type=int, default=12, help="Finished trials each study needs after the kills.")
    p.add_argument("--sleep", type=float, default=0.05, help="Real seconds per simulated fidelity step.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-corpus", action="store_true", help="Only the kill loop.")
    p.add_argument("--keep", metavar="DIR", default=None,
                   help="Keep the storages, worker logs and surrogate in DIR (default: a temporary folder, removed).")
    p.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    unknown = sorted(set(storages) - {"sqlite", "journal", "postgresql"})
    if unknown or not storages:
        raise ValueError(f"--storages: unknown {unknown}; choose among sqlite, journal, postgresql.")
    if args.workers < 1 or args.kills < 0 or args.trials < 1:
        raise ValueError("--workers and --trials must be >= 1 and --kills >= 0.")
    report = run_chaos(storages, workers=args.workers, kills=args.kills, trials=args.trials, sleep=args.sleep,
                       seed=args.seed, postgres_url=args.postgres_url, corpus=not args.skip_corpus, log=not args.json,
                       work=None if args.keep is None else Path(args.keep))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    ok = all(r[k] == 0 for r in report["storages"].values()
             for k in ("completed_lost", "duplicates", "running_left", "killed_never_rerun"))
    ok = ok and all(c["outcome"] in ("clear error", "skipped with reason", "handled") for c in report.get("corpus", []))
    return 0 if ok else 1


# ---------------------------------------------------------------------- the kill loop
def run_chaos(storages: list[str], *, workers: int = 3, kills: int = 60, trials: int = 12, sleep: float = 0.05,
              seed: int = 0, postgres_url: str | None = None, corpus: bool = True, log: bool = True,
              work: Path | None = None) -> dict[str, Any]:
    """Run the kill loop on each storage (and the malformed corpus); returns the figures.

    ``work``: where the storages, worker logs and surrogate go, kept for inspection; by default a
    temporary folder, removed at the end (a run leaves nothing behind).
    """
    from optuna_quicktune.pgserver import local_postgres

    with contextlib.ExitStack() as scratch:
        if work is None:
            work = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="quicktune-faults-")))
        elif work.exists() and any(work.iterdir()):
            raise ValueError(f"{work} is not empty: the kill loop would reuse its storages; give a new or empty folder.")
        work.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        surrogate_dir = _train_surrogate(work / "surrogate", seed)
        per_storage = [kills // len(storages) + (1 if i < kills % len(storages) else 0) for i in range(len(storages))]
        report: dict[str, Any] = {"workers": workers, "kills": kills, "seed": seed, "storages": {}}
        for name, n_kills in zip(storages, per_storage):
            with contextlib.ExitStack() as stack:
                if name == "sqlite":
                    url = f"sqlite:///{work / 'chaos.db'}"
                elif name == "journal":
                    url = f"journal:{work / 'chaos.log'}"
                else:
                    url = postgres_url or stack.enter_context(local_postgres())
                t0 = time.time()
                figures = _chaos_one(url, name, surrogate_dir, workers, n_kills, trials, sleep, rng, work, log)
                figures["seconds"] = round(time.time() - t0, 1)
                report["storages"][name] = figures
        if corpus:
            from optuna_quicktune.malformed import run_corpus

            report["corpus"] = run_corpus(surrogate_dir, work / "corpus")
        return report


def _train_surrogate(out: Path, seed: int) -> Path:
    from optuna_quicktune.simulate import SimulatedFamily
    from optuna_quicktune.surrogate import meta_train

    family = SimulatedFamily(10, fidelity_max=FIDELITY, seed=0)
    md = family.metadataset(24, seed=1).select_tasks([i for i in range(10) if i != TASK_INDEX])
    meta_train(md, steps=100, seed=seed).save(out)
    return out


def _spawn(url: str, study: str, surrogate_dir: Path, sleep: float, logfile: Path) -> subprocess.Popen[bytes]:
    from optuna_quicktune.malformed import package_env

    with logfile.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "optuna_quicktune.chaos", url, study, str(surrogate_dir), str(sleep)],
            stdout=f, stderr=subprocess.STDOUT, env=package_env(),
        )


def _chaos_one(url: str, name: str, surrogate_dir: Path, n_workers: int, n_kills: int, trials: int, sleep: float,
               rng: np.random.Generator, work: Path, log: bool) -> dict[str, Any]:
    import optuna

    from optuna_quicktune import contract
    from optuna_quicktune.recovery import recover_stale_trials
    from optuna_quicktune.simulate import SimulatedFamily
    from optuna_quicktune.storage import open_storage

    storage = open_storage(url, create=True)
    study_name = f"chaos-{name}"
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    task = SimulatedFamily(10, fidelity_max=FIDELITY, seed=0).tasks[TASK_INDEX]
    contract.describe_task(study, dataset=task.name, model="simulated", metric="score", fidelity_max=FIDELITY,
                           metafeatures=task.metafeatures)
    study.set_user_attr(TARGET_ATTR, 10**9)
    logfile = work / f"workers-{name}.log"
    procs = [_spawn(url, study_name, surrogate_dir, sleep, logfile) for _ in range(n_workers)]
    seen: dict[int, tuple[str, Any, dict[int, float]]] = {}
    lost: set[int] = set()
    kills_in_trial = 0
    try:
        for k in range(n_kills):
            i = int(rng.integers(n_workers))
            if rng.random() < 0.75:  # mostly while the worker runs a trial, at a random point of it
                deadline = time.time() + 60
                while time.time() < deadline and not _holds_trial(study, procs[i].pid):
                    time.sleep(0.1)
                time.sleep(float(rng.uniform(0.0, 10 * sleep)))
            else:  # at any moment: start-up, inside the sampler, between trials
                time.sleep(float(rng.uniform(0.0, 3.0)))
            _snapshot(study, seen)
            kills_in_trial += _holds_trial(study, procs[i].pid)
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            procs[i] = _spawn(url, study_name, surrogate_dir, sleep, logfile)
            if log:
                print(f"[{name}] kill {k + 1}/{n_kills} (worker {i})", file=sys.stderr, flush=True)
        finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
        study.set_user_attr(TARGET_ATTR, finished + trials)
        for p in procs:
            try:
                p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    recovered_at_end = recover_stale_trials(study, grace_period=0.0)
    exit_codes = [p.returncode for p in procs]
    _snapshot(study, seen, lost)
    figures = chaos_figures(study)
    figures.update(kills=n_kills, kills_during_trial=int(kills_in_trial), completed_lost=len(lost),
                   recovered_at_end=len(recovered_at_end), worker_exit_codes=exit_codes)
    return figures


def _holds_trial(study: Any, pid: int) -> bool:
    import optuna

    from optuna_quicktune import contract

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        lease = t.system_attrs.get(contract.LEASE)
        if isinstance(lease, dict) and lease.get("pid") == pid:
            return True
    return False


def _snapshot(study: Any, seen: dict[int, Any], lost: set[int] | None = None) -> None:
    """Remember every finished trial; with ``lost``, collect those that vanished or changed since."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    now = {t.number: (t.state.name, t.value, dict(t.intermediate_values)) for t in study.get_trials(deepcopy=False) if t.state in states}
    if lost is not None:
        lost.update(n for n, rec in seen.items() if now.get(n) != rec)
    seen.update(now)


def chaos_figures(study: Any) -> dict[str, Any]:
    """Duplicates, orphans and retries of a study after a chaos run."""
    import optuna

    from optuna_quicktune import contract

    TS = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    covered: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for t in trials:
        if t.state not in (TS.COMPLETE, TS.PRUNED):
            continue
        cid = t.user_attrs.get(contract.CONFIG_ID) or json.dumps(t.params, sort_keys=True, default=str)
        for step in t.intermediate_values:
            covered[cid][int(step)].append(t.number)
    duplicates = sorted({(cid, s) for cid, steps in covered.items() for s, ns in steps.items() if len(ns) > 1})
    died = [t for t in trials if t.state == TS.FAIL and "died while running" in str(t.user_attrs.get(contract.FAIL_REASON))]
    recovered = died
    retries = [t for t in trials if t.user_attrs.get(contract.RETRY_OF) is not None
               and not str(t.user_attrs.get(contract.FAIL_REASON, "")).startswith("duplicate retry")]
    retried = {t.user_attrs[contract.RETRY_OF] for t in retries}
    # Lost: a killed run (not itself a retry) chose a configuration that was neither retried nor is
    # held by a finished trial. A retry killed again is not retried ("once"): counted apart.
    held = {t.user_attrs.get(contract.CONFIG_ID) for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)}
    never = [t.number for t in recovered if t.user_attrs.get(contract.RETRY_OF) is None and t.number not in retried
             and t.user_attrs.get(contract.CONFIG_ID) is not None and t.user_attrs[contract.CONFIG_ID] not in held]
    retry_done = sum(1 for t in trials if t.user_attrs.get(contract.RETRY_OF) is not None and t.state in (TS.COMPLETE, TS.PRUNED))
    return {
        "trials": len(trials),
        "finished": sum(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials),
        "failed": sum(t.state == TS.FAIL for t in trials),
        "recovered": len(recovered),
        "retried": len(retried),
        "retries_finished": retry_done,
        "killed_never_rerun": len(never),
        "retries_killed_again": sum(1 for t in recovered if t.user_attrs.get(contract.RETRY_OF) is not None),
        "duplicate_retries_cancelled": sum(1 for t in trials if str(t.user_attrs.get(contract.FAIL_REASON, "")).startswith("duplicate retry")),
        "duplicates": len(duplicates),
        "running_left": sum(t.state == TS.RUNNING for t in trials),
        "waiting_left": sum(t.state == TS.WAITING for t in trials),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"Fault injection: {report['workers']} workers per storage, {report['kills']} SIGKILLs in all, seed {report['seed']}"]
    head = ("storage", "kills", "in trial", "finished", "recovered", "retried", "completed lost", "duplicates",
            "RUNNING left", "never rerun", "retry killed again", "seconds")
    lines.append(" | ".join(head))
    for name, r in report["storages"].items():
        row = (name, r["kills"], r["kills_during_trial"], r["finished"], r["recovered"], r["retried"], r["completed_lost"],
               r["duplicates"], r["running_left"], r["killed_never_rerun"], r["retries_killed_again"], r["seconds"])
        lines.append(" | ".join(str(v) for v in row))
    total = {k: sum(r[k] for r in report["storages"].values()) for k in ("kills", "completed_lost", "duplicates", "running_left")}
    lines.append(f"kills survived: {total['kills']}; completed trials lost: {total['completed_lost']}; "
                 f"duplicates at the same fidelity: {total['duplicates']}; RUNNING left after recovery: {total['running_left']}")
    corpus = report.get("corpus")
    if corpus:
        counts: dict[str, int] = defaultdict(int)
        for c in corpus:
            counts[c["outcome"]] += 1
        lines.append(f"malformed inputs tried: {len(corpus)} -> " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for c in corpus:
            lines.append(f"  [{c['outcome']}] {c['case']}: {c['detail'][:160]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- one worker (a subprocess)
def _worker(url: str, study_name: str, surrogate_dir: str, sleep: float) -> None:
    import warnings

    import optuna

    from optuna_quicktune import QuickTunePruner, QuickTuneSampler, load_surrogate
    from optuna_quicktune.recovery import Recovery
    from optuna_quicktune.simulate import SimulatedFamily, SimulatedObjective
    from optuna_quicktune.storage import open_storage

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = SimulatedFamily(10, fidelity_max=FIDELITY, seed=0).tasks[TASK_INDEX]
    sampler = QuickTuneSampler(load_surrogate(surrogate_dir), n_candidates=200, seed=0,
                               recovery=Recovery(heartbeat_interval=1.0, grace_period=5.0))
    study = optuna.load_study(study_name=study_name, storage=open_storage(url), sampler=sampler,
                              pruner=QuickTunePruner(sampler))

    def stop_at_target(study: optuna.Study, trial: Any) -> None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        if len(study.get_trials(deepcopy=False, states=states)) >= int(study.user_attrs.get(TARGET_ATTR, 0)):
            study.stop()

    study.optimize(SimulatedObjective(task, sleep=sleep), callbacks=[stop_at_target])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
