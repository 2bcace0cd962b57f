"""How well a fold surrogate ranks a held-out task's configurations zero-shot, against two alternatives.

Why: after the portfolio start, QuickTune's choice among fresh configurations is the surrogate's
ranking. For each task of a finished ``quicktune bench`` run this loads the task's cached fold
surrogate (meta-trained without the task) and ranks the task's meta-table configurations by their
predicted final score, with no run of the task seen; it compares that ranking with

* **copula**: a surrogate meta-trained like the fold's (the same table, steps, seed and
  ``meta_train`` arguments) on *per-task Gaussian-copula targets* (Salinas et al. 2020): each
  meta-training task's scores (all runs, all steps) are replaced by ``Phi^-1`` of their mid-rank
  empirical CDF, so every task has the same standard-normal marginal and the model learns which
  configurations win on a task rather than each task's score level;
* **center** (``--targets copula,center``): the same, with each task's scores only shifted by their
  task's mean (the level removed, the scale and shape kept), to tell how much of the copula's
  effect is the level alone;
* **mean rank**: no model, each configuration's mean within-task rank on the other tasks (only when
  every task holds the same configurations, as the bench's meta-tables do).

Reported per task and averaged: Spearman's rho between ranking and final scores, and the normalised
regret (``(best - chosen) / (best - worst)`` within the task's table) of the best of the top 1, 5
and 10. Not a benchmark of the decision rule: the copula surrogate cannot be used by the sampler as
it is, because a study's own scores have no copula map until the task's score distribution is
known (docs/benchmarks.md, stop 26).

Usage::

    python tools/zero_shot_ranking.py OUT                       # OUT: a bench results folder (its cache/)
    python tools/zero_shot_ranking.py OUT --tasks 167200,189354 --json ranking.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's packages, not an installed copy

TOPS = (1, 5, 10)


def _copula(pooled: np.ndarray, sign: float) -> Any:
    from scipy.stats import norm

    ranked = np.sort(sign * pooled)

    def f(v: np.ndarray) -> np.ndarray:
        mid = (np.searchsorted(ranked, sign * v, "left") + np.searchsorted(ranked, sign * v, "right")) / 2.0
        return sign * norm.ppf((mid + 0.5) / (len(ranked) + 1.0))

    return f


def copula_targets(md: Any) -> Any:
    """``md`` with each task's scores replaced by normal quantiles of their mid-rank empirical CDF.

    Higher stays better: scores are multiplied by the task's sign before ranking, and the
    quantiles by it again, so a minimised metric stays minimised.
    """
    from optuna_quicktune.surrogate.task_scale import remap_tasks

    return remap_tasks(md, _copula)


def centred_targets(md: Any) -> Any:
    """``md`` with each task's scores shifted by the mean of all its scores (all runs, all steps)."""
    from optuna_quicktune.surrogate.task_scale import remap_tasks

    def shift(pooled: np.ndarray, sign: float) -> Any:
        level = float(np.mean(pooled))
        return lambda v: v - level

    return remap_tasks(md, shift)


TARGETS = {"copula": copula_targets, "center": centred_targets}


def _scores(y: np.ndarray, ranking_score: np.ndarray) -> dict[str, float]:
    """rho and top-k regret of ranking ``y`` (higher is better) by ``ranking_score`` (higher first)."""
    from scipy.stats import spearmanr

    order = np.argsort(-ranking_score, kind="stable")
    span = float(y.max() - y.min()) or 1.0
    out = {"rho": float(spearmanr(ranking_score, y).statistic)}
    for k in TOPS:
        out[f"top{k}"] = float((y.max() - y[order[:k]].max()) / span)
    return out


def ranking(out: Path, tasks: list[str] | None, meta_kwargs: dict[str, Any] | None = None,
            steps: int | None = None, seed: int | None = None, targets: tuple[str, ...] = ("copula",)) -> list[dict[str, Any]]:
    """One record per task: ``{"task", "default": {...}, <each of targets>: {...}, "mean_rank": {...} or None}``."""
    from scipy.stats import rankdata

    from optuna_quicktune.metadataset import MetaDataset
    from optuna_quicktune.surrogate import load, meta_train

    cache = out / "cache"
    tables = sorted(cache.glob("table-*.csv"))
    if not tables:
        raise SystemExit(f"{cache} holds no meta-table: pass the --out folder of a finished quicktune bench run.")
    cfg: dict[str, Any] = {}
    if (out / "results.json").exists():
        cfg = json.loads((out / "results.json").read_text()).get("meta", {}).get("config", {})
    kwargs = dict(cfg.get("meta_kwargs", {}) if meta_kwargs is None else meta_kwargs)
    steps = int(cfg.get("meta_steps", 400) if steps is None else steps)
    seed = int(cfg.get("meta_seed", 0) if seed is None else seed)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}: choose from {sorted(TARGETS)}.")
    md = MetaDataset.from_csv(tables[0])
    transformed = {t: TARGETS[t](md) for t in targets}
    keys = [[json.dumps(r.config, sort_keys=True, default=str) for r in md.runs_of(i)] for i in range(len(md.tasks))]
    shared = all(k == keys[0] for k in keys)
    finals = [np.array([r.curve[-1] for r in md.runs_of(i)]) * md.tasks[i].sign for i in range(len(md.tasks))]
    records = []
    for name in tasks or [t.name for t in md.tasks]:
        folds = sorted((cache / "surrogates").glob(f"{name}-*"))
        if not folds:
            print(f"{name}: no cached fold surrogate, skipped")
            continue
        ti = md.task_index(name)
        task, runs = md.tasks[ti], md.runs_of(ti)
        X = np.stack([md.space.encode(r.config) for r in runs])
        L, mf, y = task.fidelity_max, dict(task.metafeatures) or None, finals[ti]
        others = [i for i in range(len(md.tasks)) if i != ti]
        rec: dict[str, Any] = {"task": name}

        def ranked(sur: Any) -> dict[str, float]:
            m, _ = sur.predict(X, None, L, fidelity_max=L, metafeatures=mf, sign=task.sign)
            return _scores(y, task.sign * m)

        rec["default"] = ranked(load(str(folds[0])))
        for t in targets:
            rec[t] = ranked(meta_train(transformed[t].select_tasks(others), steps=steps, seed=seed, **kwargs))
        if shared:
            rec["mean_rank"] = _scores(y, np.mean([rankdata(finals[j]) / len(finals[j]) for j in others], axis=0))
        else:
            rec["mean_rank"] = None
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each method's mean of every figure over the tasks (methods missing on some task are left out)."""
    out = {}
    labels = [k for k in (records[0] if records else {}) if k != "task"]
    for label in labels:
        rows = [r[label] for r in records if r.get(label)]
        if rows and len(rows) == len(records):
            out[label] = {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the results folder of a finished quicktune bench run")
    ap.add_argument("--tasks", help="comma-separated task ids (default: every task of the meta-table)")
    ap.add_argument("--targets", default="copula", help=f"comma-separated target transforms to meta-train on: {sorted(TARGETS)}")
    ap.add_argument("--json", type=Path, help="also write the records and the means here")
    a = ap.parse_args()
    records = ranking(a.out, a.tasks.split(",") if a.tasks else None, targets=tuple(a.targets.split(",")))
    means = summary(records)
    for label, vals in means.items():
        print(f"{label:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in vals.items()))
    if a.json:
        a.json.write_text(json.dumps({"tasks": records, "mean": means}, indent=1))


if __name__ == "__main__":
    main()
