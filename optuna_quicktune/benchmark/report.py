"""Normalised regret, average ranks and the files of a benchmark run.

Conventions
-----------
* Scores are sign-adjusted so that higher is better. For a task, ``best`` is the best score at
  any fidelity of the reference set (the oracle's) and ``worst`` the worst final score in it.
* The incumbent at simulated time ``t`` is the best score the method has *observed* by ``t`` at
  any fidelity (a pruned run's intermediate scores count).
* Normalised regret = ``(best - incumbent) / (best - worst)``, clipped to [0, 1]; it is 1 before
  the first observation. A method that beats the reference set's best gets 0 (counted in
  ``beat_reference``).
* Budget fractions are fractions of the task's budget in simulated seconds. Ranks are computed per
  (task, seed) over every method except the oracle (ties share the mean rank) and averaged.
* "Regret after k trials" is the regret when the k-th trial (an Optuna trial, a DEHB job, a
  portfolio run, ...) ended; methods that ran fewer trials keep the regret of their last one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Reference", "summarise_run", "aggregate", "write_report", "FRACTIONS", "REPORT_FRACTIONS"]

FRACTIONS = np.round(np.arange(0, 101) / 100.0, 2)  # budget grid (0%..100% by 1%)
REPORT_FRACTIONS = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
AFTER_TRIALS = (1, 3, 5)


@dataclass
class Reference:
    task: str
    sign: float
    best: float  # in the metric's own units
    worst: float
    n: int  # size of the reference set
    oracle_config: dict[str, Any]
    oracle_step: int
    median_full_cost: float
    budget: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Reference":
        return cls(**d)

    def regret(self, incumbent: np.ndarray) -> np.ndarray:
        """Normalised regret of (raw-unit) incumbents; NaN/None (nothing observed) -> 1."""
        b, w = self.sign * self.best, self.sign * self.worst
        inc = self.sign * np.asarray(incumbent, dtype=np.float64)
        r = (b - inc) / max(b - w, 1e-12)
        return np.where(np.isfinite(r), np.clip(r, 0.0, 1.0), 1.0)


def incumbent_at(times: Sequence[float], values: Sequence[float], sign: float, at: np.ndarray) -> np.ndarray:
    """Best observed (raw-unit) score by each time in ``at``; NaN before the first observation."""
    t = np.asarray(times, dtype=np.float64)
    if t.size == 0:
        return np.full(np.shape(at), np.nan)
    inc = np.maximum.accumulate(sign * np.asarray(values, dtype=np.float64)) * sign
    idx = np.searchsorted(t, np.asarray(at, dtype=np.float64), side="right") - 1
    return np.where(idx >= 0, inc[np.clip(idx, 0, None)], np.nan)


def summarise_run(traj: Any, ref: Reference) -> dict[str, Any]:
    """A run's regret on the budget grid, after the first trials, and its accounting."""
    grid_t = FRACTIONS * ref.budget
    reg = ref.regret(incumbent_at(traj.times, traj.values, ref.sign, grid_t))
    after = {}
    for k in AFTER_TRIALS:
        if traj.trial_ends:
            t_k = traj.trial_ends[min(k, len(traj.trial_ends)) - 1]
            after[str(k)] = float(ref.regret(incumbent_at(traj.times, traj.values, ref.sign, np.array([t_k])))[0])
        else:
            after[str(k)] = 1.0
    # Compact incumbent trace: the observations that improved it.
    trace_t, trace_v, best = [], [], -np.inf
    for t, v in zip(traj.times, traj.values):
        if ref.sign * v > best:
            best = ref.sign * v
            trace_t.append(float(t))
            trace_v.append(float(v))
    in_budget = [v for t, v in zip(traj.times, traj.values) if t <= ref.budget]
    beat = bool(in_budget) and bool(np.max(ref.sign * np.asarray(in_budget)) > ref.sign * ref.best + 1e-9)
    out = {
        "regret": [float(x) for x in reg],
        "regret_after_trials": after,
        "final_regret": float(reg[-1]),
        "n_trials": len(traj.trial_ends),
        "n_trials_in_budget": int(sum(1 for t in traj.trial_ends if t <= ref.budget)),
        "steps": int(traj.steps),
        "full_runs": int(traj.full_runs),
        "charged": float(traj.charged),
        "replayed_cost": float(traj.replayed_cost),
        "budget": float(ref.budget),
        "overhead_s": float(traj.overhead),
        "wall_s": float(traj.wall),
        "beat_reference": beat,
        "trace": {"t": trace_t, "v": trace_v},
        "trial_ends": [float(x) for x in traj.trial_ends],
    }
    if getattr(traj, "ledger", None) is not None:
        out["ledger"] = traj.ledger
    return out


# ---------------------------------------------------------------------- aggregation
def _rankdata(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def aggregate(records: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Mean regret, average rank and first-trial regrets of every method."""
    by_key: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for r in records:
        by_key.setdefault((r["task"], r["seed"]), {})[r["method"]] = np.asarray(r["regret"])
    ranked = [m for m in methods if m != "oracle"]
    ranks: dict[str, list[np.ndarray]] = {m: [] for m in ranked}
    for runs in by_key.values():
        if not all(m in runs for m in ranked):
            continue
        R = np.stack([runs[m] for m in ranked])  # (methods, fractions)
        rk = np.apply_along_axis(_rankdata, 0, R)
        for i, m in enumerate(ranked):
            ranks[m].append(rk[i])
    out: dict[str, Any] = {"fractions": FRACTIONS.tolist(), "methods": {}}
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        reg = np.stack([r["regret"] for r in rs])
        entry: dict[str, Any] = {
            "n_runs": len(rs),
            "errors": sum(1 for r in rs if r.get("error")),
            "mean_regret": reg.mean(0).tolist(),
            "median_regret": np.median(reg, 0).tolist(),
            "regret_after_trials": {k: float(np.mean([r["regret_after_trials"][k] for r in rs])) for k in map(str, AFTER_TRIALS)},
            "mean_trials": float(np.mean([r["n_trials_in_budget"] for r in rs])),
            "mean_steps": float(np.mean([r["steps"] for r in rs])),
            "mean_full_runs": float(np.mean([r["full_runs"] for r in rs])),
            "mean_charged_over_budget": float(np.mean([r["charged"] / r["budget"] for r in rs])),
            "mean_overhead_s": float(np.mean([r["overhead_s"] for r in rs])),
            "beat_reference": int(sum(r["beat_reference"] for r in rs)),
            "per_task_final_regret": _per_task(rs, -1),
            "per_task_regret_10pct": _per_task(rs, int(np.argmin(np.abs(FRACTIONS - 0.1)))),
        }
        if m in ranks and ranks[m]:
            entry["mean_rank"] = np.mean(np.stack(ranks[m]), 0).tolist()
        out["methods"][m] = entry
    return out


def _per_task(rs: Sequence[Mapping[str, Any]], idx: int) -> dict[str, float]:
    tasks: dict[str, list[float]] = {}
    for r in rs:
        tasks.setdefault(r["task"], []).append(r["regret"][idx])
    return {t: float(np.mean(v)) for t, v in tasks.items()}


def _at(curve: Sequence[float], f: float) -> float:
    return float(curve[int(np.argmin(np.abs(FRACTIONS - f)))])


def markdown(agg: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    methods = agg["methods"]
    pct = [f"{int(f * 100)}%" for f in REPORT_FRACTIONS]
    lines = [
        f"# Replay benchmark: {meta['scenario']['name']}",
        "",
        f"{len(meta['references'])} tasks x {len(meta['config']['seeds'])} seeds; budget = "
        f"{meta['config']['budget_factor']:g} x the median cost of one full run (simulated seconds). "
        "Normalised regret (best - incumbent) / (best - worst) over the reference set, incumbent = best "
        "score observed at any fidelity. Ranks exclude the oracle (1 = best).",
        "",
        "| method | " + " | ".join(f"rank @{p}" for p in pct) + " | " + " | ".join(f"regret @{p}" for p in pct)
        + " | regret after 1 / 3 / 5 trials | trials | overhead s/run |",
        "|---" * (2 + 2 * len(pct) + 2) + "|---|",
    ]
    for m, e in methods.items():
        ranks = [f"{_at(e['mean_rank'], f):.2f}" if "mean_rank" in e else "–" for f in REPORT_FRACTIONS]
        regs = [f"{_at(e['mean_regret'], f):.3f}" for f in REPORT_FRACTIONS]
        after = " / ".join(f"{e['regret_after_trials'][k]:.3f}" for k in map(str, AFTER_TRIALS))
        err = f" ({e['errors']} failed)" if e["errors"] else ""
        lines.append(
            f"| {m}{err} | " + " | ".join(ranks) + " | " + " | ".join(regs)
            + f" | {after} | {e['mean_trials']:.1f} | {e['mean_overhead_s']:.2f} |"
        )
    tasks = list(meta["references"])
    lines += ["", "Final regret per task (mean over seeds):", "",
              "| task | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(f"{methods[m]['per_task_final_regret'].get(t, float('nan')):.3f}" for m in methods) + " |")
    tm = meta.get("timings", {})
    if tm:
        lines += ["", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in tm.items())]
    return "\n".join(lines) + "\n"


def plots(agg: Mapping[str, Any], meta: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    x = 100 * np.asarray(agg["fractions"])
    methods = agg["methods"]
    styles = {"quicktune": dict(lw=2.6, color="C3"), "quicktune-refit": dict(lw=1.8, color="C1", ls="--"),
              "portfolio": dict(lw=1.8, color="k")}
    files = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m, e in methods.items():
        if "mean_rank" in e:
            ax.plot(x, e["mean_rank"], label=m, **styles.get(m, dict(lw=1.2)))
    ax.set_xlabel("% of budget (simulated time)")
    ax.set_ylabel("average rank (lower is better)")
    ax.set_xscale("symlog", linthresh=2)
    ax.set_xlim(1, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"{meta['scenario']['name']}: average rank")
    fig.tight_layout()
    fig.savefig(out / "rank_vs_budget.png", dpi=120)
    plt.close(fig)
    files.append("rank_vs_budget.png")

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for m, e in methods.items():
        if m == "oracle":
            continue
        ax.plot(x, np.maximum(e["mean_regret"], 1e-4), label=m, **styles.get(m, dict(lw=1.2)))
    ax.set_xlabel("% of budget (simulated time)")
    ax.set_ylabel("mean normalised regret")
    ax.set_xscale("symlog", linthresh=2)
    ax.set_yscale("log")
    ax.set_xlim(1, 100)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"{meta['scenario']['name']}: mean normalised regret")
    fig.tight_layout()
    fig.savefig(out / "regret_vs_budget.png", dpi=120)
    plt.close(fig)
    files.append("regret_vs_budget.png")

    tasks = list(meta["references"])
    cols = min(6, len(tasks))
    rows = int(np.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), sharex=True, squeeze=False)
    per = agg.get("per_task_curves", {})
    for i, t in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        for m in methods:
            if m == "oracle" or m not in per or t not in per[m]:
                continue
            ax.plot(x, np.maximum(per[m][t], 1e-4), label=m, **{**styles.get(m, dict(lw=0.9)), "lw": styles.get(m, {}).get("lw", 0.9) * 0.7})
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xscale("symlog", linthresh=2)
        ax.set_title(t, fontsize=8)
        ax.tick_params(labelsize=6)
    for j in range(len(tasks), rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / "regret_per_task.png", dpi=100)
    plt.close(fig)
    files.append("regret_per_task.png")
    return files


def write_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(meta["config"]["methods"])
    agg = aggregate(records, methods)
    per: dict[str, dict[str, list[float]]] = {}
    for m in methods:
        tasks: dict[str, list[np.ndarray]] = {}
        for r in records:
            if r["method"] == m:
                tasks.setdefault(r["task"], []).append(np.asarray(r["regret"]))
        per[m] = {t: np.mean(v, 0).tolist() for t, v in tasks.items()}
    agg["per_task_curves"] = per
    files = plots(agg, meta, out)
    md = markdown(agg, meta)
    (out / "results.md").write_text(md)
    result = {"meta": dict(meta), "summary": agg, "runs": [dict(r) for r in records], "files": ["results.json", "results.md", *files]}
    (out / "results.json").write_text(json.dumps(result, default=_json_default))
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
