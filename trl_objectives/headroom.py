"""Headroom of a collection: is there anything left for a tuner to decide, per task and model?

Why: a meta-dataset whose tasks are solved by every reasonable configuration teaches a surrogate
nothing, and one where a single configuration is the best everywhere makes the static portfolio
the oracle (the first fact-QA collection was both). This report reads a collection storage (the
storage contract only, any Optuna storage) and says, per task: how many runs, how many
facts/questions, the metric, and the best / median / default configuration's final score; and per
model family: how often the *portfolio's first member* (the configuration with the best mean rank
over the tasks) is a task's best, both in-sample and leave-one-task-out (the first member chosen
on the other tasks, which is what a new task gets). The data card prints :func:`headroom_markdown`.

"A task's best" is strict, so where a metric collapses (every good run of a memorised fact table
ends at ``eval_loss`` 1e-6 or 0.0) the winner is decided by rounding noise. The report therefore
also gives the share of tasks where the first member is *within* ``NEAR`` of the best in the
benchmark's normalised regret ((first - best) / (worst - best), over the configurations run on
every task): a task counts as headroom only where the first member is measurably beaten.

Usage::

    python -m trl_objectives.headroom sqlite:///collection.db [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from typing import Any

import optuna

from optuna_quicktune import contract

__all__ = ["NEAR", "headroom", "headroom_markdown", "main"]

NEAR = 0.01  # normalised regret under which the first member counts as tied with a task's best


def _sizes(study: optuna.Study) -> dict[str, int]:
    """Example counts from the study's meta-features (``log1p`` counts), so any collection has them."""
    mf = contract.read_metafeatures(study) or {}
    out = {}
    for key, name in (("train", "log_n_train"), ("validation", "log_n_validation"), ("test", "log_n_test"),
                      ("facts", "log_n_facts")):
        if name in mf:
            out[key] = int(round(math.expm1(mf[name])))
    return out


def _task_report(study: optuna.Study, default_id: str) -> dict[str, Any] | None:
    task = study.user_attrs.get(contract.TASK)
    if not task:
        return None
    sign = -1.0 if task["direction"] == "minimize" else 1.0
    finals: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]):
        cid = t.user_attrs.get(contract.CONFIG_ID)
        if cid is not None and t.value is not None and math.isfinite(t.value):
            finals[str(cid)] = float(t.value)  # the last complete run of a configuration counts
    if not finals:
        return None
    best_id = max(finals, key=lambda c: sign * finals[c])
    return {
        "dataset": task["dataset"], "model": task["model"], "metric": task["metric"], "direction": task["direction"],
        "runs": len(finals), **_sizes(study),
        "best": finals[best_id], "median": statistics.median(finals.values()), "default": finals.get(default_id),
        "worst": min(finals.values(), key=lambda v: sign * v), "best_config": best_id, "finals": finals,
    }


def _mean_ranks(tasks: list[dict[str, Any]]) -> dict[str, float]:
    """Mean normalised rank (0 best, 1 worst) of every configuration run on all ``tasks``."""
    common = set.intersection(*(set(t["finals"]) for t in tasks)) if tasks else set()
    ranks: dict[str, list[float]] = defaultdict(list)
    for t in tasks:
        sign = -1.0 if t["direction"] == "minimize" else 1.0
        order = sorted(common, key=lambda c: (-sign * t["finals"][c], c))
        for i, cid in enumerate(order):
            ranks[cid].append(i / max(len(order) - 1, 1))
    return {cid: statistics.fmean(r) for cid, r in ranks.items()}


def _common(tasks: list[dict[str, Any]]) -> set[str]:
    return set.intersection(*(set(t["finals"]) for t in tasks)) if tasks else set()


def _best_among(task: dict[str, Any], ids: set[str]) -> str | None:
    """The task's best configuration among ``ids``: a table cut short (configurations run on some tasks
    only) must not count a configuration the portfolio could not choose as a task's best."""
    sign = -1.0 if task["direction"] == "minimize" else 1.0
    ran = [c for c in sorted(ids) if c in task["finals"]]
    return max(ran, key=lambda c: sign * task["finals"][c]) if ran else None


def _near_best(task: dict[str, Any], ids: set[str], cid: str | None) -> bool:
    """Whether ``cid``'s normalised regret among ``ids`` on ``task`` is at most :data:`NEAR`."""
    sign = -1.0 if task["direction"] == "minimize" else 1.0
    vals = [sign * task["finals"][c] for c in ids if c in task["finals"]]
    if cid is None or cid not in task["finals"] or not vals:
        return False
    best, worst = max(vals), min(vals)
    return best == worst or (best - sign * task["finals"][cid]) / (best - worst) <= NEAR


def _first_member(tasks: list[dict[str, Any]]) -> str | None:
    ranks = _mean_ranks(tasks)
    return min(ranks, key=lambda c: (ranks[c], c)) if ranks else None


def headroom(storage: str | optuna.storages.BaseStorage) -> dict[str, Any]:
    """Per task and per model family, the headroom figures described in the module docstring.

    Returns:
        ``{"tasks": {study name: {...}}, "models": {model: {"tasks", "portfolio_first",
        "share_best_is_first", "share_best_is_first_loo", "share_near_best_is_first",
        "share_near_best_is_first_loo"}}}``; a task's ``finals`` maps each
        configuration id to its final score.
    """
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

    default_id = lora_space().config_id(DEFAULT_LORA_CONFIG)
    reports: dict[str, dict[str, Any]] = {}
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False), key=lambda s: s.study_name):
        r = _task_report(optuna.load_study(study_name=summary.study_name, storage=storage), default_id)
        if r is not None:
            reports[summary.study_name] = r
    by_model: dict[str, list[str]] = defaultdict(list)
    for name, r in reports.items():
        by_model[r["model"]].append(name)
    models: dict[str, Any] = {}
    for model, names in by_model.items():
        tasks = [reports[n] for n in names]
        first = _first_member(tasks)
        common = _common(tasks)
        hits = [_best_among(reports[n], common) == first for n in names]
        near = [_near_best(reports[n], common, first) for n in names]
        loo, near_loo = [], []
        for n in names:
            others = [reports[m] for m in names if m != n]
            pick = _first_member(others) if others else None
            loo.append(pick is not None and _best_among(reports[n], _common(others)) == pick)
            near_loo.append(_near_best(reports[n], _common(others), pick))
        models[model] = {
            "tasks": len(names), "portfolio_first": first, "configs_on_every_task": len(common),
            "share_best_is_first": sum(hits) / len(hits) if first else None,
            "share_best_is_first_loo": sum(loo) / len(loo) if len(names) > 1 else None,
            "share_near_best_is_first": sum(near) / len(near) if first else None,
            "share_near_best_is_first_loo": sum(near_loo) / len(near_loo) if len(names) > 1 else None,
        }
    return {"tasks": reports, "models": models}


def _f(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def headroom_markdown(report: dict[str, Any]) -> str:
    """The headroom section of a data card: one row per task and model, then the portfolio share."""
    lines = ["| task | model | runs | facts | train / val / test questions | metric | best | median | default |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["tasks"].values():
        sizes = "/".join(str(r.get(k, "?")) for k in ("train", "validation", "test"))
        lines.append(f"| {r['dataset']} | `{r['model']}` | {r['runs']} | {r.get('facts', '?')} | {sizes} | "
                     f"{r['metric']} ({'lower' if r['direction'] == 'minimize' else 'higher'} is better) | "
                     f"{_f(r['best'])} | {_f(r['median'])} | {_f(r['default'])} |")
    lines.append("")
    for model, m in report["models"].items():
        share, loo = m["share_best_is_first"], m["share_best_is_first_loo"]
        lines.append(
            f"* `{model}`: the portfolio's first member (best mean rank over {m['tasks']} tasks, "
            f"`{m['portfolio_first']}`) is a task's best (among the {m.get('configs_on_every_task', '?')} "
            f"configurations run on every task) on {_f(share)} of them in-sample, "
            f"{_f(loo)} leave-one-task-out (first member chosen on the other tasks; target: under 0.5); "
            f"within {NEAR:g} normalised regret of the best (a tie where the metric collapses) on "
            f"{_f(m['share_near_best_is_first'])} in-sample, {_f(m['share_near_best_is_first_loo'])} "
            "leave-one-task-out."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Headroom of a collection storage, per task and model family.")
    p.add_argument("storage", help="Optuna storage URL of the collection")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = p.parse_args(argv)
    report = headroom(args.storage)
    print(json.dumps(report, indent=1) if args.json else headroom_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
