"""Leave-one-task-out replay benchmark: meta-train per fold (cached), run every method and seed.

For each test task ``t`` of a scenario:

1. the meta-training table is every *other* task's table (``n_meta_configs`` seeded random
   configurations with full curves and costs); the QuickTune surrogate is meta-trained on it once
   (cached under ``<out>/cache/surrogates``) and the static portfolio is built greedily from it;
2. the task's reference set (``n_reference`` random configurations at the largest fidelity, or the
   task's whole table) fixes the best and worst score for normalised regret, the oracle and the
   budget: ``budget_factor`` x the median cost of one full run;
3. every method runs once per seed on a fresh :class:`~.replay.Session`.

Work is spread over ``jobs`` processes (one torch/onnxruntime thread each). What a run is asked to
do and the keys that decide which cached results it may reuse are in :mod:`.settings`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from optuna_quicktune.benchmark.methods import PORTFOLIO_METHODS, MethodContext, run_method
from optuna_quicktune.benchmark.replay import Session
from optuna_quicktune.benchmark.report import Reference, summarise_run
from optuna_quicktune.benchmark.scenarios import Scenario, TableScenario
from optuna_quicktune.benchmark.settings import REFERENCE_SEEDING, BenchConfig, content_hash, meta_settings, run_key
from optuna_quicktune.benchmark.yahpo import YahpoScenario
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.portfolio import PortfolioTable

__all__ = ["BenchConfig", "run_benchmark", "prepare_references", "meta_table"]

_logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- preparation
def meta_table(scenario: Scenario, cfg: BenchConfig, cache: Path | None) -> MetaDataset:
    """Every task's meta-training table (cached as CSV)."""
    path = None
    if cache is not None:
        path = cache / f"table-{content_hash(scenario.fingerprint(), cfg.n_meta_configs, cfg.table_seed)}.csv"
        if path.exists():
            return MetaDataset.from_csv(path, scenario.space)
    md = scenario.table(cfg.n_meta_configs, cfg.table_seed)
    if path is not None:
        md.to_csv(path)
        md = MetaDataset.from_csv(path, scenario.space)  # identical floats whether cached or not
    return md


def prepare_references(scenario: Scenario, cfg: BenchConfig, tasks: Sequence[str], cache: Path | None) -> dict[str, Reference]:
    """Normalisation set, oracle and budget of each task (cached as JSON).

    A YAHPO task's reference configurations are seeded by its place in the *scenario's* task list
    (``tasks.txt``), not in ``tasks``: a task's budget and regret scale must not depend on which
    other tasks a run selects (until stop 21 they did: ``--tasks 168868`` alone gave it another
    budget than the 24-task run). Runs over the whole list are unchanged.
    """
    path = None
    key = content_hash(scenario.fingerprint(), cfg.n_reference, cfg.reference_seed, cfg.budget_factor, list(tasks),
                       REFERENCE_SEEDING)
    if cache is not None:
        path = cache / f"reference-{key}.json"
        if path.exists():
            return {t: Reference.from_json(r) for t, r in json.loads(path.read_text()).items()}
    refs: dict[str, Reference] = {}
    sign = scenario.sign
    for task in tasks:
        if isinstance(scenario, TableScenario):
            configs, curves = scenario.reference(task)
            final = curves.values[:, -1]
            full_cost = curves.scratch_costs[:, -1]
            top = np.arange(len(configs))
            top_curves = curves.values
            n = len(configs)
        else:
            assert isinstance(scenario, YahpoScenario)
            configs = scenario.space.sample(cfg.n_reference, cfg.reference_seed + scenario.tasks.index(task))
            final, raw_cost = scenario.final_values(task, configs)
            full_cost = raw_cost
            order = np.argsort(-sign * final, kind="stable")
            top = order[: min(64, len(order))]
            top_curves = scenario.curves(task, [configs[j] for j in top]).values
            n = len(configs)
        best_per = np.max(sign * top_curves, axis=1)
        k = int(np.argmax(best_per))
        best = float(best_per[k])
        best_step = int(np.argmax(sign * top_curves[k])) + 1
        worst = float(np.min(sign * final))
        refs[task] = Reference(
            task=task, sign=sign, best=best * sign, worst=worst * sign, n=n,
            oracle_config=dict(configs[int(top[k])]), oracle_step=best_step,
            median_full_cost=float(np.median(full_cost)), budget=float(cfg.budget_factor * np.median(full_cost)),
        )
    if path is not None:
        path.write_text(json.dumps({t: r.to_json() for t, r in refs.items()}, indent=1))
    return refs


def portfolio_table(md: MetaDataset) -> PortfolioTable:
    """The fair meta-table as a portfolio table: the same configurations and curves the surrogate
    is meta-trained on, so the static portfolio and QuickTune see exactly the same meta-dataset."""
    return PortfolioTable.from_metadataset(md)


def _surrogate_dir(cache: Path, scenario: Scenario, cfg: BenchConfig, task: str, md_key: str) -> Path:
    key = content_hash(md_key, task, cfg.meta_steps, cfg.meta_time_limit, cfg.meta_seed, *meta_settings(cfg))
    return cache / "surrogates" / f"{task}-{key}"


def _train_fold(args: tuple[MetaDataset, str, int, int, float | None, str, dict[str, Any]]) -> tuple[str, float]:
    md, task, steps, seed, time_limit, directory, kwargs = args
    from optuna_quicktune.surrogate import meta_train

    t0 = time.perf_counter()
    others = [i for i, t in enumerate(md.tasks) if t.name != task]
    sur = meta_train(md.select_tasks(others), steps=steps, seed=seed, time_limit=time_limit, **kwargs)
    tmp = directory + ".tmp"
    sur.save(tmp)
    os.replace(tmp, directory)
    return task, time.perf_counter() - t0


# ---------------------------------------------------------------------- workers
_STATE: dict[str, Any] = {}


def _init_worker(scenario: Scenario, refs: dict[str, Reference], portfolios: dict[str, list[dict[str, Any]]],
                 task_bests: dict[str, list[dict[str, Any]]], surrogates: dict[str, str], cfg: BenchConfig) -> None:
    _quiet()
    _STATE.update(scenario=scenario, refs=refs, portfolios=portfolios, task_bests=task_bests, surrogates=surrogates, cfg=cfg)


def _quiet() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna_quicktune").setLevel(logging.WARNING)
    try:  # import once so that import time is not counted as a method's overhead
        import dehb  # noqa: F401
        from loguru import logger

        logger.remove()
    except ImportError:  # pragma: no cover
        pass


@lru_cache(maxsize=4)
def _load_surrogate(path: str) -> Any:
    from optuna_quicktune.surrogate import load

    return load(path)


def _run_unit(unit: tuple[str, int, str]) -> dict[str, Any]:
    task, seed, method = unit
    scenario: Scenario = _STATE["scenario"]
    ref: Reference = _STATE["refs"][task]
    cfg: BenchConfig = _STATE["cfg"]
    loader: Callable[[], Any] | None = None
    if method.startswith("quicktune"):
        sur = _load_surrogate(_STATE["surrogates"][task])
        loader = lambda: sur  # noqa: E731
    ctx = MethodContext(
        seed=int(seed) * 1000 + scenario.tasks.index(task),
        surrogate_loader=loader,
        portfolio=_STATE["portfolios"].get(task, []),
        task_bests=_STATE["task_bests"].get(task, []),
        default_config=scenario.default_config,
        oracle=(ref.oracle_config, ref.oracle_step),
        top_k_first=cfg.top_k_first,
        quicktune_kwargs=dict(cfg.quicktune_kwargs),
        pruner_kwargs=dict(cfg.pruner_kwargs),
    )
    session = Session(scenario, task, ref.budget, max_trials=cfg.max_trials, audit=cfg.audit)
    error = None
    try:
        run_method(method, session, ctx)
    except Exception as e:  # noqa: BLE001 - one failing method must not lose the others' results
        _logger.exception("%s on task %s (seed %s) failed", method, task, seed)
        error = f"{type(e).__name__}: {e}"
    traj = session.finish()
    record = summarise_run(traj, ref)
    record.update(task=task, seed=int(seed), method=method, error=error)
    return record


# ---------------------------------------------------------------------- entry point
def run_benchmark(scenario: Scenario, cfg: BenchConfig, out: str | Path) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``results.md`` and PNG plots into ``out``."""
    from optuna_quicktune.benchmark.report import write_report

    cfg.validate()
    t_start = time.perf_counter()
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    tasks = list(cfg.tasks or scenario.tasks)
    unknown = [t for t in tasks if t not in scenario.tasks]
    if unknown:
        raise ValueError(f"Tasks {unknown} are not in scenario {scenario.name!r} ({scenario.tasks}).")
    if "zero-shot" in cfg.methods and not scenario.has_zero_shot:
        raise ValueError(f"Method 'zero-shot' needs the base model's scores, which scenario {scenario.name!r} does not have.")
    if len(scenario.tasks) < 2 and any(m in ("quicktune", "quicktune-refit", "portfolio") for m in cfg.methods):
        raise ValueError("Leave-one-task-out needs at least two tasks in the scenario.")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    md = meta_table(scenario, cfg, cache)
    refs = prepare_references(scenario, cfg, tasks, cache)
    timings["prepare_s"] = time.perf_counter() - t0

    portfolios: dict[str, list[dict[str, Any]]] = {}
    task_bests: dict[str, list[dict[str, Any]]] = {}
    if any(m in PORTFOLIO_METHODS for m in cfg.methods):
        table = portfolio_table(md)
        for task in tasks:
            fold = table.without_tasks([task])
            configs = fold.configs(scenario.space)
            portfolios[task] = [configs[j] for j in fold.order(size=cfg.portfolio_size)]
            task_bests[task] = [configs[j] for j in fold.task_bests()]

    surrogates: dict[str, str] = {}
    fold_seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if any(m.startswith("quicktune") for m in cfg.methods):
        md_key = content_hash(scenario.fingerprint(), cfg.n_meta_configs, cfg.table_seed)
        todo = []
        for task in tasks:
            d = _surrogate_dir(cache, scenario, cfg, task, md_key)
            surrogates[task] = str(d)
            if not d.exists():
                todo.append((md, task, cfg.meta_steps, cfg.meta_seed, cfg.meta_time_limit, str(d), dict(cfg.meta_kwargs)))
        if todo:
            for task, secs in _map(_train_fold, todo, cfg.jobs, "meta-train folds", cfg.progress, init=_quiet):
                fold_seconds[task] = secs
    timings["meta_train_s"] = time.perf_counter() - t0

    units = [(t, s, m) for t in tasks for s in cfg.seeds for m in cfg.methods]
    # Every finished run is appended to runs.jsonl at once; with ``resume`` the runs recorded
    # there under the same settings are kept and only the missing ones run.
    keys = {m: run_key(scenario, cfg, m) for m in cfg.methods}
    runs_path = out / "runs.jsonl"
    done: dict[tuple[str, int, str], dict[str, Any]] = {}
    if cfg.resume and runs_path.exists():
        for line in runs_path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if r.get("method") in keys and r.get("run_key") == keys[r["method"]] and not r.get("error"):
                done[(r["task"], r["seed"], r["method"])] = r
    elif runs_path.exists():
        runs_path.unlink()
    wanted = set(units)
    records = [r for u, r in done.items() if u in wanted]
    units = [u for u in units if u not in done]
    # Slow methods first so that the pool ends together.
    units.sort(key=lambda u: (not u[2].startswith("quicktune"), u[2] != "dehb"))
    t0 = time.perf_counter()
    with runs_path.open("a") as sink:
        for r in _map(_run_unit, units, cfg.jobs, "runs", cfg.progress, init=_init_worker,
                      initargs=(scenario, refs, portfolios, task_bests, surrogates, cfg)):
            r["run_key"] = keys[r["method"]]
            sink.write(json.dumps(r, default=str) + "\n")
            sink.flush()
            records.append(r)
    timings["runs_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    meta = {
        "scenario": scenario.describe(),
        "config": asdict(cfg),
        "references": {t: r.to_json() for t, r in refs.items()},
        "portfolio_size": {t: len(p) for t, p in portfolios.items()},
        "fold_train_seconds": fold_seconds,
        "timings": timings,
    }
    return write_report(records, meta, out)


def _map(fn: Callable[[Any], Any], items: list[Any], jobs: int, desc: str, progress: bool,
         init: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()) -> Iterator[Any]:
    """``fn`` over ``items`` in ``jobs`` spawned processes (or in this one), results as they come."""
    from tqdm.auto import tqdm

    if not items:
        return
    bar = tqdm(total=len(items), desc=desc, disable=not progress, smoothing=0.05)
    try:
        if jobs == 1 or len(items) == 1:
            if init is not None:
                init(*initargs)
            for it in items:
                yield fn(it)
                bar.update(1)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(jobs, len(items)), initializer=init, initargs=initargs) as pool:
                for r in pool.imap_unordered(fn, items, chunksize=1):
                    yield r
                    bar.update(1)
    finally:
        bar.close()
