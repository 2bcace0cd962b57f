"""Held-out quality of surrogates on a collection: leave-one-task-out, per model family, zero-shot.

Why: the number that says whether a meta-learned surrogate helps a new task is how well it ranks
that task's configurations *before any run of it* (Spearman of predicted and observed final
scores) and whether its 90 % interval is honest (coverage). ``meta_train``'s own validation report
uses its validation tasks for early stopping and for scaling the standard deviation, so it is not a
held-out figure. Here, for every task of a model family, a surrogate is meta-trained on the *other*
tasks of that family only and predicts the task's final scores from its meta-features alone.

It also scores what a user would run first on the held-out task: the surrogate's top prediction
against the portfolio's first member built from the same other tasks (the configuration with the
best mean rank there), as the task's normalised regret (0 = the task's best run, 1 = its worst).
``--compare NAME_OR_DIR`` scores an existing surrogate (e.g. the shipped ``smollm2-135m-factqa``)
on the same tasks, zero-shot, so the two can be compared on equal terms.

Usage::

    python tools/heldout_surrogate.py sqlite:///collection.db --steps 1500 --time-limit 60 \\
        --compare smollm2-135m-factqa --json heldout.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's packages, not an installed copy

Z90 = 1.6448536269514722  # two-sided 90 % interval of a normal distribution


def finals_of(md: Any, task: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Configurations and final scores of the task's runs that reached its maximum fidelity."""
    fmax = md.tasks[task].fidelity_max
    runs = [r for r in md.runs_of(task) if r.length == fmax and np.isfinite(r.curve[-1])]
    return [r.config for r in runs], np.array([float(r.curve[-1]) for r in runs])


def _regret(y: np.ndarray, i: int, sign: float) -> float:
    best, worst = (np.max(y), np.min(y)) if sign > 0 else (np.min(y), np.max(y))
    return float(abs(y[i] - best) / abs(worst - best)) if worst != best else 0.0


def mean_ranks(md: Any, tasks: list[int]) -> dict[str, float]:
    """Mean normalised rank (0 best) over ``tasks`` of each configuration (by JSON) run on all of them."""
    ranks: dict[str, list[float]] = defaultdict(list)
    per_task = []
    for t in tasks:
        configs, y = finals_of(md, t)
        keys = [json.dumps(c, sort_keys=True) for c in configs]
        per_task.append(dict(zip(keys, md.tasks[t].sign * y)))
    common = set.intersection(*(set(d) for d in per_task)) if per_task else set()
    for d in per_task:
        order = sorted(common, key=lambda k: (-d[k], k))
        for i, k in enumerate(order):
            ranks[k].append(i / max(len(order) - 1, 1))
    return {k: statistics.fmean(v) for k, v in ranks.items()}


def score(surrogate: Any, md: Any, task: int) -> dict[str, Any]:
    """Zero-shot predictions of ``surrogate`` for ``task``'s final scores against what was observed."""
    from scipy.stats import spearmanr

    t = md.tasks[task]
    configs, y = finals_of(md, task)
    X = surrogate.space.encode_many(configs)
    mean, std = surrogate.predict(X, None, t.fidelity_max, fidelity_max=t.fidelity_max,
                                  metafeatures=dict(t.metafeatures), sign=t.sign)
    top = int(np.argmax(t.sign * mean))
    return {"runs": len(y), "spearman": float(spearmanr(mean, y).statistic) if len(y) > 2 else float("nan"),
            "covered": int(np.sum(np.abs(y - mean) <= Z90 * std)), "top_regret": _regret(y, top, t.sign)}


def compare_score(surrogate: Any, md: Any, task: int) -> dict[str, Any]:
    """:func:`score` of a surrogate that may refuse the task (another fidelity or space): the reason instead."""
    try:
        return score(surrogate, md, task)
    except ValueError as e:  # ContractError and the space/fidelity checks are ValueErrors
        return {"runs": len(finals_of(md, task)[1]), "unscorable": str(e).split("\n")[0]}


def heldout(md: Any, *, steps: int, seed: int, time_limit: float | None, compare: Any = None) -> dict[str, Any]:
    """Leave-one-task-out per model family (module doc); ``compare``: a surrogate scored as it is."""
    from scipy.stats import spearmanr

    from optuna_quicktune.surrogate import meta_train

    families: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(md.tasks):
        families[t.model].append(i)
    out: dict[str, Any] = {}
    for model, idx in families.items():
        rows = {}
        for i in idx:
            others = [j for j in idx if j != i]
            t0 = time.perf_counter()
            sur = meta_train(md.select_tasks(others), steps=steps, seed=seed, time_limit=time_limit)
            row = {"train_seconds": round(time.perf_counter() - t0, 1), **score(sur, md, i)}
            configs, y = finals_of(md, i)
            ranks = mean_ranks(md, others)
            keys = [json.dumps(c, sort_keys=True) for c in configs]
            first = min(ranks, key=lambda k: (ranks[k], k)) if ranks else None
            row["portfolio_regret"] = _regret(y, keys.index(first), md.tasks[i].sign) if first in keys else None
            # no model: rank the task's configurations by their mean rank on the other tasks
            known = [k in ranks for k in keys]
            if sum(known) > 2:
                prior = -md.tasks[i].sign * np.array([ranks[k] for k, ok in zip(keys, known) if ok])  # in y's direction
                row["mean_rank_spearman"] = float(spearmanr(prior, y[np.array(known)]).statistic)
            if compare is not None:
                row["compare"] = compare_score(compare, md, i)
            rows[md.tasks[i].dataset] = row
            print(f"{model} {md.tasks[i].dataset}: {json.dumps(row)}", file=sys.stderr, flush=True)
        out[model] = {"tasks": rows, **summary(rows.values())}
        if compare is not None:
            scored = [r["compare"] for r in rows.values() if "unscorable" not in r["compare"]]
            refused = [r["compare"]["unscorable"] for r in rows.values() if "unscorable" in r["compare"]]
            out[model]["compare"] = {**(summary(scored) if scored else {}), "unscorable_tasks": len(refused),
                                     **({"unscorable_reason": refused[0]} if refused else {})}
    return out


def summary(rows: Any) -> dict[str, float]:
    rows = list(rows)
    rho = [r["spearman"] for r in rows if np.isfinite(r["spearman"])]
    res = {"spearman_mean": float(np.mean(rho)) if rho else float("nan"),
           "coverage90": sum(r["covered"] for r in rows) / max(sum(r["runs"] for r in rows), 1),
           "top_regret_mean": float(np.mean([r["top_regret"] for r in rows]))}
    port = [r["portfolio_regret"] for r in rows if r.get("portfolio_regret") is not None]
    if port:
        res["portfolio_regret_mean"] = float(np.mean(port))
    prior = [r["mean_rank_spearman"] for r in rows if np.isfinite(r.get("mean_rank_spearman", np.nan))]
    if prior:
        res["mean_rank_spearman_mean"] = float(np.mean(prior))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("storage")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds of meta-training per fold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", default=None, help="a packaged surrogate's name or a saved surrogate's folder")
    p.add_argument("--json", default=None, help="write the whole report here")
    args = p.parse_args(argv)

    import optuna

    from optuna_quicktune.metadataset import MetaDataset
    from optuna_quicktune.pretrained import load_surrogate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    md = MetaDataset.from_storage(args.storage)
    compare = load_surrogate(args.compare) if args.compare else None
    report = heldout(md, steps=args.steps, seed=args.seed, time_limit=args.time_limit, compare=compare)
    for model, r in report.items():
        print(f"\n{model}: held-out Spearman {r['spearman_mean']:.3f}, 90 % coverage {r['coverage90']:.3f}, "
              f"top-1 regret {r['top_regret_mean']:.3f} (portfolio's first member "
              f"{r.get('portfolio_regret_mean', float('nan')):.3f}); no model (mean rank on the other tasks): "
              f"Spearman {r.get('mean_rank_spearman_mean', float('nan')):.3f}")
        print("| task | runs | Spearman | no-model Spearman | covered | top-1 regret | portfolio regret |"
              + (" compare Spearman | compare covered | compare top-1 regret |" if compare else ""))
        print("|---|---|---|---|---|---|---|" + ("---|---|---|" if compare else ""))
        for name, row in r["tasks"].items():
            c = row.get("compare")
            if c and "unscorable" in c:
                extra = " - | - | - |"
            else:
                extra = f" {c['spearman']:.3f} | {c['covered']}/{c['runs']} | {c['top_regret']:.3f} |" if c else ""
            pr = row["portfolio_regret"]
            print(f"| {name} | {row['runs']} | {row['spearman']:.3f} | {row.get('mean_rank_spearman', float('nan')):.3f} | "
                  f"{row['covered']}/{row['runs']} | "
                  f"{row['top_regret']:.3f} | {'-' if pr is None else f'{pr:.3f}'} |{extra}")
        if compare:
            cs = r["compare"]
            if "spearman_mean" in cs:
                print(f"compare: Spearman {cs['spearman_mean']:.3f}, coverage {cs['coverage90']:.3f}, "
                      f"top-1 regret {cs['top_regret_mean']:.3f}")
            if cs["unscorable_tasks"]:
                print(f"compare: cannot score {cs['unscorable_tasks']} task(s): {cs['unscorable_reason']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
