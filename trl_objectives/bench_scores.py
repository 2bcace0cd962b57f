"""Test scores of the configurations each benchmark method returned on an LLM table.

Why: ``quicktune bench`` ranks methods by *validation* regret, the score they optimise. A user
finetuning an LLM cares about the held-out *test* score of the configuration they end up with, next
to the two baselines they have without tuning: the un-finetuned base model (zero-shot) and the
default LoRA configuration. This reads a bench results folder (``runs.jsonl``) and the collection
storage it replayed, and for every (task, method) reports the mean test score over seeds of the
configuration the method returned: its best validation score observed within the budget, matched
back to the stored run that produced it (an exact curve value), and that run's
``quicktune.test_score``.

Usage::

    python -m trl_objectives.bench_scores results/factqa \\
        --storage sqlite:///optuna_quicktune/pretrained/data/smollm2-135m-factqa.db
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from optuna_quicktune import contract

__all__ = ["StoredRun", "returned_runs", "returned_test_scores", "format_table"]

TEST_SCORE = contract.TEST_SCORE


class StoredRun(NamedTuple):
    """One complete run of the collection: what ``returned_runs`` matches a bench result to."""

    number: int
    params: dict[str, Any]
    curve: list[float]
    test_score: float


def _stored_runs(storage: str) -> tuple[dict[str, list[StoredRun]], dict[str, str]]:
    """Per study: the complete runs with a test score, and the direction."""
    import optuna

    runs: dict[str, list[StoredRun]] = {}
    direction: dict[str, str] = {}
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        direction[name] = (study.user_attrs.get(contract.TASK) or {}).get("direction", "maximize")
        runs[name] = [
            StoredRun(t.number, dict(t.params), [float(v) for _, v in sorted(t.intermediate_values.items())],
                      float(t.user_attrs[TEST_SCORE]))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if TEST_SCORE in t.user_attrs
        ]
    return runs, direction


def returned_runs(results: str | Path, storage: str) -> dict[str, dict[str, list[StoredRun]]]:
    """``{task: {method: [the stored run each seed returned]}}`` (the zero-shot method is left out).

    A method returns its best validation score observed within the budget; that value is matched
    back to the stored complete run whose curve holds it (an exact value). A seed whose best value
    matches no complete run (it came from a stopped run only) is left out.
    """
    runs, direction = _stored_runs(storage)
    out: dict[str, dict[str, list[StoredRun]]] = defaultdict(lambda: defaultdict(list))
    for line in Path(results, "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        task, method = r["task"], r["method"]
        if r.get("error") or task not in runs or method == "zero-shot":
            continue
        sign = -1.0 if direction[task] == "minimize" else 1.0
        seen = [v for t, v in zip(r["trace"]["t"], r["trace"]["v"]) if t <= r["budget"] and math.isfinite(v)]
        if not seen:
            continue
        best = max(seen, key=lambda v: sign * v)
        match = [run for run in runs[task] if any(abs(c - best) <= 1e-9 * max(1.0, abs(best)) for c in run.curve)]
        if match:
            out[task][method].append(match[0])
    return {t: dict(ms) for t, ms in out.items()}


def returned_test_scores(results: str | Path, storage: str) -> dict[str, dict[str, float]]:
    """``{task: {method: mean test score over seeds}}`` of the configurations the methods returned.

    The zero-shot method returns the base model; ``oracle`` the best validation run (see
    :func:`returned_runs` for the matching).
    """
    from optuna_quicktune.benchmark.scenarios import zero_shot_from_storage

    zero = zero_shot_from_storage(storage, split="test")
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in Path(results, "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["method"] == "zero-shot" and not r.get("error") and r["task"] in zero:
            scores[r["task"]]["zero-shot"].append(zero[r["task"]])
    for task, methods in returned_runs(results, storage).items():
        for method, matched in methods.items():
            scores[task][method].extend(run.test_score for run in matched)
    return {t: {m: float(sum(v) / len(v)) for m, v in ms.items() if v} for t, ms in scores.items()}


def format_table(scores: dict[str, dict[str, float]], methods: list[str] | None = None) -> str:
    """A Markdown table: one row per task, one column per method, plus the mean over tasks."""
    methods = methods or sorted({m for ms in scores.values() for m in ms})
    head = "| task | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods)
    rows = []
    for task in sorted(scores):
        cells = [f"{scores[task][m]:.3f}" if m in scores[task] else "-" for m in methods]
        rows.append(f"| {task.split('/')[0]} | " + " | ".join(cells) + " |")
    means = []
    for m in methods:
        vals = [scores[t][m] for t in scores if m in scores[t]]
        means.append(f"**{sum(vals) / len(vals):.3f}**" if vals else "-")
    rows.append("| mean | " + " | ".join(means) + " |")
    return head + "\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a quicktune bench output folder (with runs.jsonl)")
    p.add_argument("--storage", required=True, help="the collection storage the bench replayed")
    p.add_argument("--methods", default=None, help="comma-separated columns (default: every method)")
    args = p.parse_args(argv)
    scores = returned_test_scores(args.results, args.storage)
    if not scores:
        raise SystemExit(f"No run of {args.results}/runs.jsonl matches a study of {args.storage}.")
    table = format_table(scores, args.methods.split(",") if args.methods else None)
    Path(args.results, "test_scores.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
