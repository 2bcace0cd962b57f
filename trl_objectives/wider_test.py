"""Returned configurations scored again on a wider test split of a natural task (retrained).

Why: a CPU-sized collection's natural tasks (FanOutQA sub-questions, each question its own fact)
hold 2 test questions, so "is the configuration QuickTune returned at least as good as the default
configuration on test?" is decided by two answers. The task's question pool has hundreds more
questions of the same source and category that no run saw. This retrains the configurations that
a bench method returned (matched back to the stored runs, :func:`~trl_objectives.bench_scores.returned_runs`)
and the default configuration with the collection's own settings (same train and validation
questions, seed, epochs, sequence length and model), checks that each validation curve reproduces
the stored one, and scores each run and the base model on ``extra`` further questions drawn (seeded)
from the pool outside the task's collected questions.

Templated fact tasks are refused: their test questions are paraphrases of trained facts, and the
pool holds no further paraphrases of the same facts.

Usage::

    python -m trl_objectives.wider_test sqlite:///benchmarks/llm-cpu/smollm2-cpu-4ep.db \\
        --results OUT --tasks fanoutqa-society,fanoutqa-sports --extra 48 --json wider.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from optuna_quicktune import contract

__all__ = ["wider_dataset", "rescore_task", "main"]


def wider_dataset(task: str, facts: int, *, seed: int, extra: int, extra_seed: int = 0) -> Any:
    """The collection's dataset of ``task`` with its test split replaced by ``extra`` unseen questions.

    Train and validation are exactly the collection's (``load_task(task, facts, seed=seed)``); the
    new test questions are a seeded sample of the task's pool without any question the collection
    drew (train, validation or test), duplicates removed.

    Raises:
        ValueError: a templated task, or fewer than ``extra`` unseen questions in the pool.
    """
    import datasets

    from trl_objectives.tasks import get_task, load_task, task_names, task_records

    fact_task = get_task(task)
    if not fact_task.natural:
        raise ValueError(f"{task!r} is a templated fact task: its test questions are paraphrases of trained facts "
                         "and there are no more of them. A wider test split exists only for natural tasks "
                         f"(tags 'natural'), e.g. {', '.join(task_names(natural=True)[:3])}.")
    base = load_task(task, facts, seed=seed)
    seen = {r["question"] for r in task_records(task, facts, seed=seed)}
    unseen = {question: answer for question, answer in fact_task.facts() if question not in seen}  # facts() is de-duplicated
    if extra < 1 or extra > len(unseen):
        raise ValueError(f"extra must be in 1..{len(unseen)} (the unseen questions of {task!r}), got {extra}.")
    picked = sorted(random.Random(f"{task}:wider:{extra_seed}").sample(sorted(unseen), extra))
    test = datasets.Dataset.from_list([{"question": q, "answer": unseen[q]} for q in picked])
    return dataclasses.replace(base, test=test)


def rescore_task(
    storage: str, study_name: str, configs: Mapping[str, Mapping[str, Any]], *, extra: int,
    extra_seed: int = 0, num_threads: int | None = 1, model: str | None = None,
) -> dict[str, Any]:
    """Retrain ``configs`` (``{label: params}``) on the collection's data; score them on the wider test.

    Returns ``{"task", "model", "metric", "questions", "base_model": {split: score}, "runs": [...]}``;
    each run has its label, the validation curve (``val_curve``), the stored curve of the same
    configuration when the collection has it (``stored_val_curve``, ``stored_test``) and the test
    score on the wider split (``wider_test``). ``model``: the model spec when the stored name is not
    one (a local folder is stored by its name only); default: the study's ``quicktune.task`` model.
    """
    import optuna

    from optuna_quicktune.space import lora_space
    from trl_objectives.objective import SFTObjective
    from trl_objectives.zero_shot import score_base_model

    study = optuna.load_study(study_name=study_name, storage=storage)
    task_info = study.user_attrs.get(contract.TASK) or {}
    info = study.user_attrs.get(contract.COLLECT_INFO) or {}
    if not task_info or not info:
        raise ValueError(f"Study {study_name!r} has no {contract.TASK} / {contract.COLLECT_INFO} record: "
                         "it was not made by `quicktune collect`.")
    task, metric = task_info["dataset"], task_info["metric"]
    fidelity = info.get("fidelity") or {"unit": "epoch", "epochs": info["epochs"]}
    dataset = wider_dataset(task, int(info["facts"]), seed=int(info["seed"]), extra=extra, extra_seed=extra_seed)
    space = lora_space()
    stored = {t.user_attrs.get(contract.CONFIG_ID): t for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    scratch_dir = tempfile.mkdtemp(prefix="quicktune-wider-")
    try:
        objective = SFTObjective(
            model or task_info["model"], dataset, metric=metric, max_epochs=int(fidelity.get("epochs") or 1),
            eval_every_steps=fidelity.get("eval_every_steps"), max_steps=fidelity.get("max_steps"),
            max_length=int(info["max_length"]), seed=int(info["seed"]), num_threads=num_threads, space=space,
            dataset_name=task, checkpoint_dir=scratch_dir,
        )
        base = score_base_model(objective, ("validation", "test"))
        out: dict[str, Any] = {"task": task, "study": study_name, "model": task_info["model"], "metric": metric,
                               "questions": len(dataset.test), "extra_seed": extra_seed,
                               "base_model": {split: scores[metric] for split, scores in base.items()}, "runs": []}
        for label, params in configs.items():
            run = optuna.create_study(direction=objective.direction, pruner=optuna.pruners.NopPruner(),
                                      sampler=optuna.samplers.PartialFixedSampler(dict(params), optuna.samplers.RandomSampler(0)))
            run.optimize(objective, n_trials=1)
            trial = run.trials[-1]
            if trial.state != optuna.trial.TrialState.COMPLETE:
                raise RuntimeError(f"{task}: the run of {label} ended {trial.state.name}: "
                                   f"{trial.user_attrs.get(contract.FAIL_REASON, 'no reason recorded')}.")
            cid = space.config_id(dict(params))
            before = stored.get(cid)
            out["runs"].append({
                "label": label, "config_id": cid, "params": dict(params),
                "val_curve": [float(v) for _, v in sorted(trial.intermediate_values.items())],
                "stored_val_curve": None if before is None else [float(v) for _, v in sorted(before.intermediate_values.items())],
                "stored_test": None if before is None else before.user_attrs.get(contract.TEST_SCORE),
                "wider_test": float(trial.user_attrs[contract.TEST_SCORE]),
            })
        return out
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def returned_configs(runs: Mapping[str, Sequence[Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{label: params}``: the default configuration and each distinct configuration ``methods`` returned.

    ``runs``: one study's entry of :func:`~trl_objectives.bench_scores.returned_runs` (method -> runs per seed).
    """
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

    space = lora_space()
    labels: dict[str, list[str]] = {space.config_id(DEFAULT_LORA_CONFIG): ["default"]}
    params: dict[str, dict[str, Any]] = {space.config_id(DEFAULT_LORA_CONFIG): dict(DEFAULT_LORA_CONFIG)}
    for method in methods:
        for seed, run in enumerate(runs.get(method, [])):
            cid = space.config_id(run.params)
            params.setdefault(cid, dict(run.params))
            labels.setdefault(cid, []).append(f"{method}#{seed}")
    return {"+".join(_compress(v)): params[cid] for cid, v in labels.items()}


def _compress(labels: list[str]) -> list[str]:
    """``["quicktune#0", "quicktune#1"]`` -> ``["quicktune x2"]`` (how many seeds returned it)."""
    counts: dict[str, int] = {}
    for label in labels:
        name = label.split("#")[0]
        counts[name] = counts.get(name, 0) + 1
    return [name if n == 1 and name == "default" else f"{name} x{n}" for name, n in counts.items()]


def format_rows(result: Mapping[str, Any]) -> list[str]:
    """Markdown rows: task, configuration, stored test (2 questions), wider test, validation reproduced."""
    rows = [f"| {result['task']} | base model | - | {result['base_model']['test']:.3f} | - |"]
    for r in result["runs"]:
        stored = r["stored_val_curve"]
        diff = "-" if stored is None else f"{max(abs(a - b) for a, b in zip(r['val_curve'], stored)):.1e}"
        st = "-" if r["stored_test"] is None else f"{float(r['stored_test']):.3f}"
        rows.append(f"| {result['task']} | {r['label']} (`{r['config_id']}`) | {st} | {r['wider_test']:.3f} | {diff} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    import optuna

    from trl_objectives.runtime import quiet_libraries

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("storage", help="the collection storage the bench replayed")
    p.add_argument("--results", required=True, help="a quicktune bench output folder (runs.jsonl) of that storage")
    p.add_argument("--tasks", required=True, help="comma-separated natural task names, e.g. fanoutqa-society")
    p.add_argument("--methods", default="quicktune", help="comma-separated bench methods whose returned configurations to rescore")
    p.add_argument("--extra", type=int, default=48, help="unseen questions in the wider test split")
    p.add_argument("--extra-seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model spec, when the stored model name is a local folder's name")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the collection's runs used 1)")
    p.add_argument("--json", default=None, help="write every figure here")
    args = p.parse_args(argv)
    quiet_libraries()
    names = optuna.get_all_study_names(args.storage)
    from trl_objectives.bench_scores import returned_runs

    matched = returned_runs(args.results, args.storage)  # read once for every task
    results = []
    print("| task | configuration | stored test (collection split) | wider test | max abs validation difference to the stored run |")
    print("|---|---|---|---|---|")
    for task in [t for t in args.tasks.split(",") if t]:
        study = [n for n in names if n.split("/")[0] == task]
        if len(study) != 1:
            raise SystemExit(f"{args.storage} has {len(study)} studies of task {task!r} (need exactly one).")
        configs = returned_configs(matched.get(study[0], {}), args.methods.split(","))
        result = rescore_task(args.storage, study[0], configs, extra=args.extra, extra_seed=args.extra_seed,
                              num_threads=args.threads, model=args.model)
        results.append(result)
        print("\n".join(format_rows(result)), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
