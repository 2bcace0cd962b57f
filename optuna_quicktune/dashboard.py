"""QuickTune views in optuna-dashboard: what the surrogates predicted, and what they predict now.

optuna-dashboard shows any Optuna storage; QuickTune adds three things to a study through the
dashboard's public API (``optuna_dashboard.save_plotly_graph_object`` and ``save_note``), so they
appear in the study's page next to the usual plots, for every worker and every later reader of the
storage:

* **Predicted vs observed** (figure ``quicktune-predicted-vs-observed``): each trial's
  ``quicktune.predicted`` mean ± std *at proposal time* against the score it reached. This is the
  honest check of zero-shot transfer: if the points leave the diagonal band, the meta-dataset does
  not describe this task well and ``refit=True`` or more meta-data may help.
* **Learning curves** (figure ``quicktune-learning-curves``): the observed curve of each running or
  paused trial with the surrogate's extrapolation to the last fidelity (mean and a 90 % band);
  finished trials are drawn thin for context. This is what the pruner is looking at.
* **Portfolio note** (the study note, between QuickTune markers): the top-k configurations the
  sampler would start next and the top-k by predicted final score, each with predicted score and
  predicted cost, plus the calibration of the predictions so far.

One line adds it to a study::

    study.optimize(objective, callbacks=[QuickTuneDashboard(sampler)])

Plotly and optuna-dashboard are imported only when used (the ``[dashboard]`` extra), so importing
``optuna_quicktune`` never pulls them in.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import contract

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from optuna_quicktune.sampler import QuickTuneSampler

__all__ = [
    "QuickTuneDashboard",
    "FIGURE_PREDICTED_VS_OBSERVED",
    "FIGURE_LEARNING_CURVES",
    "NOTE_BEGIN",
    "NOTE_END",
    "predicted_vs_observed_figure",
    "learning_curves_figure",
    "portfolio_rows",
    "portfolio_note",
    "publish",
]

#: Fixed graph ids, so publishing again replaces the figures instead of adding new ones.
FIGURE_PREDICTED_VS_OBSERVED = "quicktune-predicted-vs-observed"
FIGURE_LEARNING_CURVES = "quicktune-learning-curves"
#: The study note is shared with the user; QuickTune only rewrites the part between these markers.
#: They are Markdown link reference definitions, which render as nothing (optuna-dashboard shows
#: HTML comments as text).
NOTE_BEGIN = "[//]: # (quicktune:begin)"
NOTE_END = "[//]: # (quicktune:end)"
_Z90 = 1.6448536269514722  # two-sided 90 % interval of a normal


def _require(module: str) -> Any:
    """Import an optional dependency, naming the extra that provides it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"optuna_quicktune.dashboard needs {module.split('.')[0]!r}, which is not installed ({e}). "
            "Install the dashboard extra: pip install 'optuna-quicktune[dashboard]' "
            "(optuna-dashboard and plotly)."
        ) from e


# ====================================================================== figures
def predicted_vs_observed_figure(study: optuna.Study) -> "go.Figure":
    """Predicted final score at proposal time (x, ± std) against the observed score (y).

    Only the storage is read, so the figure can be drawn for any study that followed the contract,
    also after the fact (e.g. ``quicktune dashboard`` on an old storage). Completed trials reached
    the last fidelity and are the fair comparison; pruned or paused trials are drawn hollow at the
    last score they reported, which sits below the final score they would have reached.
    """
    go = _require("plotly.graph_objects")
    groups: dict[str, dict[str, list[Any]]] = {}
    for t in study.get_trials(deepcopy=False):
        rec = t.user_attrs.get(contract.PREDICTED)
        if not isinstance(rec, Mapping) or "mean" not in rec:
            continue
        observed, step = _observed(t)
        if observed is None:
            continue
        label = "completed" if t.state == TrialState.COMPLETE else (
            "paused" if t.user_attrs.get(contract.PAUSED) else "stopped / running")
        g = groups.setdefault(label, {"x": [], "y": [], "e": [], "text": []})
        g["x"].append(float(rec["mean"]))
        g["y"].append(observed)
        g["e"].append(float(rec.get("std", 0.0)) * _Z90)
        g["text"].append(
            f"trial {t.number} ({rec.get('source', '?')})<br>predicted {float(rec['mean']):.4g} ± "
            f"{float(rec.get('std', 0.0)):.3g}<br>observed {observed:.4g} at step {step}"
            + (f"<br>continues trial {t.user_attrs[contract.RESUME_OF]}" if t.user_attrs.get(contract.RESUME_OF) is not None else "")
        )
    fig = go.Figure()
    style = {"completed": ("circle", "#1f77b4"), "paused": ("circle-open", "#ff7f0e"),
             "stopped / running": ("circle-open", "#7f7f7f")}
    lo, hi = math.inf, -math.inf
    for label, g in groups.items():
        symbol, color = style[label]
        fig.add_trace(go.Scatter(
            x=g["x"], y=g["y"], mode="markers", name=f"{label} ({len(g['x'])})", text=g["text"],
            hoverinfo="text", marker={"symbol": symbol, "color": color, "size": 9},
            error_x={"type": "data", "array": g["e"], "visible": True, "thickness": 1},
        ))
        lo = min(lo, *g["x"], *g["y"])
        hi = max(hi, *g["x"], *g["y"])
    if math.isfinite(lo):
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines",
                                 name="observed = predicted", line={"dash": "dot", "color": "black"}))
    n = sum(len(g["x"]) for g in groups.values())
    fig.update_layout(
        title="QuickTune: predicted vs observed score",
        xaxis_title=f"predicted final score at proposal (± 90 % interval; {n} trials)", yaxis_title="observed score",
        template="plotly_white", legend={"orientation": "h", "y": -0.2},
    )
    return fig


def learning_curves_figure(sampler: "QuickTuneSampler", study: optuna.Study, *, max_finished: int = 30) -> "go.Figure":
    """Observed curves, and the surrogate's extrapolation for each running or paused trial.

    Paused trials are the freeze-thaw candidates the sampler may resume, running ones are what the
    pruner judges; their extrapolations (mean and 90 % band, from the sampler's current surrogate
    with the observed prefix as input) show why a run was continued or stopped. Curves of a trial
    and its continuations are stitched, as the sampler sees them.
    """
    go = _require("plotly.graph_objects")
    ctx = sampler.decision(study)  # the exact inputs the sampler decides with
    fmax, surrogate = ctx.fidelity_max, ctx.surrogate
    fig = go.Figure()
    views = sorted(ctx.state.trials.values(), key=lambda v: v.number)
    finished = [v for v in views if v.state == TrialState.COMPLETE and len(v.prefix)][-max_finished:]
    for v in finished:
        fig.add_trace(go.Scatter(
            x=list(range(1, len(v.prefix) + 1)), y=v.prefix.tolist(), mode="lines",
            line={"color": "rgba(120,120,120,0.35)", "width": 1}, name=f"trial {v.number} (completed)",
            legendgroup="completed", showlegend=False, hoverinfo="name+y",
        ))
    live = [v for v in views if len(v.prefix) and len(v.prefix) < fmax and not v.continued and (
        v.state == TrialState.RUNNING or (v.paused and v.state == TrialState.PRUNED))]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, v in enumerate(live):
        color = palette[i % len(palette)]
        what = "running" if v.state == TrialState.RUNNING else "paused"
        steps = np.arange(1, len(v.prefix) + 1)
        fig.add_trace(go.Scatter(x=steps.tolist(), y=v.prefix.tolist(), mode="lines+markers",
                                 line={"color": color}, name=f"trial {v.number} ({what})", legendgroup=str(v.number)))
        if not sampler.space.contains(v.params):
            continue
        ahead = np.arange(len(v.prefix) + 1, fmax + 1)
        X = np.repeat(sampler.space.encode(v.params)[None, :], len(ahead), axis=0)
        mean, std = surrogate.predict(X, [v.prefix] * len(ahead), ahead, fidelity_max=fmax,
                                      metafeatures=ctx.metafeatures, sign=ctx.sign)
        xs = [int(steps[-1]), *ahead.tolist()]
        m = [float(v.prefix[-1]), *mean.tolist()]
        up = [float(v.prefix[-1]), *(mean + _Z90 * std).tolist()]
        down = [float(v.prefix[-1]), *(mean - _Z90 * std).tolist()]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=up + down[::-1], fill="toself", fillcolor=_rgba(color, 0.15),
                                 line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=str(v.number)))
        fig.add_trace(go.Scatter(x=xs, y=m, mode="lines", line={"color": color, "dash": "dash"},
                                 name=f"trial {v.number} predicted", legendgroup=str(v.number)))
    title = "QuickTune: learning curves and surrogate extrapolation"
    if not live:
        title += " (no running or paused trial now)"
    fig.update_layout(title=title, xaxis_title=f"fidelity (1..{fmax})", yaxis_title="score", template="plotly_white")
    return fig


# ====================================================================== portfolio
def portfolio_rows(sampler: "QuickTuneSampler", study: optuna.Study, k: int = 10) -> dict[str, list[dict[str, Any]]]:
    """The ``k`` next actions (acquisition order) and the ``k`` best unused configurations by predicted final score.

    Both lists hold ``{"kind", "config", "config_id", "mean", "std", "cost", "acquisition"}``;
    ``cost`` is the predicted seconds to reach the last fidelity from where the action starts
    (a resumed trial only pays for its remaining steps), which is what a user weighs against the
    predicted score.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    ctx = sampler.decision(study)  # one decision for both lists
    actions = ctx.actions()
    if not actions:
        return {"next": [], "final": []}
    X = sampler.space.encode_many([a.config for a in actions])
    prefixes = [ctx.state.trials[a.resume_of].prefix if a.resume_of is not None else np.zeros(0) for a in actions]
    fmax, s = ctx.fidelity_max, ctx.surrogate
    mean, std = s.predict(X, prefixes, fmax, fidelity_max=fmax, metafeatures=ctx.metafeatures, sign=ctx.sign)
    nxt = list(range(min(k, len(actions))))
    best = [int(i) for i in np.argsort(-ctx.sign * mean, kind="stable")[:k]]
    shown = sorted(set(nxt) | set(best))  # costs only for the rows shown: the pool can hold thousands
    Xs = X[shown]
    start = np.array([len(prefixes[i]) + 1 for i in shown])
    cost_shown = np.zeros(len(shown))
    for b in range(int(start.min()), fmax + 1):
        rows = start <= b
        if rows.any():
            cost_shown[rows] += s.predict_cost(Xs[rows], b, fidelity_max=fmax, metafeatures=ctx.metafeatures)
    cost = dict(zip(shown, cost_shown.tolist()))

    def record(i: int) -> dict[str, Any]:
        a = actions[i]
        # Active parameters only: a resumed trial may also hold values its conditions switched off.
        return {"kind": a.kind if a.resume_of is None else f"resume #{a.resume_of}", "config": sampler.space.project(a.config),
                "config_id": a.config_id, "mean": float(mean[i]), "std": float(std[i]), "cost": float(cost[i]),
                "acquisition": float(a.score)}

    return {"next": [record(i) for i in nxt], "final": [record(i) for i in best]}


def portfolio_note(sampler: "QuickTuneSampler", study: optuna.Study, k: int = 10) -> str:
    """The Markdown of the QuickTune section of the study note (between :data:`NOTE_BEGIN`/:data:`NOTE_END`)."""
    rows = portfolio_rows(sampler, study, k)
    ctx = sampler.decision(study)
    names = sampler.space.names
    lines = [NOTE_BEGIN, "## QuickTune portfolio", ""]
    mode = "refit on this study" if sampler.refit else "zero-shot (surrogate used as meta-trained)"
    lines.append(f"Surrogate: {mode}; space `{sampler.space.name}`; fidelity 1..{ctx.fidelity_max}; "
                 f"horizon `{sampler.horizon}`. Scores are predicted at the last fidelity, "
                 "cost is predicted seconds to get there.")
    lines.append("")
    cal = _calibration(study)
    if cal is not None:
        lines.append(f"Calibration so far: {cal['inside']}/{cal['n']} completed trials inside their 90 % "
                     f"interval at proposal; mean |error| {cal['mae']:.4g}.")
        lines.append("")
    for key, title in (("next", "Next actions (the order the sampler proposes them)"),
                       ("final", "Best unused by predicted final score")):
        lines += [f"### {title}", ""]
        if not rows[key]:
            lines += ["Nothing left in the candidate pool.", ""]
            continue
        lines.append("| # | action | predicted score | ± std | predicted cost (s) | " + " | ".join(names) + " |")
        lines.append("|---|---|---|---|---|" + "---|" * len(names))
        for i, r in enumerate(rows[key], 1):
            vals = " | ".join(_fmt(r["config"].get(n)) for n in names)
            lines.append(f"| {i} | {r['kind']} | {r['mean']:.4g} | {r['std']:.3g} | {r['cost']:.4g} | {vals} |")
        lines.append("")
    lines.append(NOTE_END)
    return "\n".join(lines)


# ====================================================================== publishing
def publish(sampler: "QuickTuneSampler", study: optuna.Study, *, top_k: int = 10, max_finished: int = 30) -> dict[str, str]:
    """Write both figures and the note section into the study (through optuna-dashboard's API).

    Returns the graph object ids. The user's own note text outside the QuickTune markers is kept:
    optuna-dashboard has a single note per study, and it belongs to the user first.
    """
    od = _require("optuna_dashboard")
    ids = {
        "predicted_vs_observed": od.save_plotly_graph_object(
            study, predicted_vs_observed_figure(study), graph_object_id=FIGURE_PREDICTED_VS_OBSERVED),
        "learning_curves": od.save_plotly_graph_object(
            study, learning_curves_figure(sampler, study, max_finished=max_finished), graph_object_id=FIGURE_LEARNING_CURVES),
    }
    section = portfolio_note(sampler, study, top_k)
    old = od.get_note(study) or ""
    od.save_note(study, _merge_note(old, section))
    return ids


class QuickTuneDashboard:
    """A ``study.optimize`` callback that keeps the QuickTune views of optuna-dashboard up to date.

    ``study.optimize(objective, callbacks=[QuickTuneDashboard(sampler, every=1)])`` republishes
    after every ``every``-th finished trial of this process. Publishing reads the study and runs a
    few batched surrogate predictions (milliseconds to a second), so ``every`` > 1 is only useful for
    very short trials. Errors while publishing are logged and never stop the study: a view is not
    worth losing a finetuning run for.

    Args:
        sampler: The study's :class:`~optuna_quicktune.QuickTuneSampler`.
        every: Publish after every ``every`` finished trials.
        top_k: Rows in each portfolio table of the note.
        max_finished: Completed curves drawn for context in the learning-curve figure.
    """

    def __init__(self, sampler: "QuickTuneSampler", *, every: int = 1, top_k: int = 10, max_finished: int = 30) -> None:
        from optuna_quicktune.sampler import QuickTuneSampler

        if not isinstance(sampler, QuickTuneSampler):
            raise TypeError("QuickTuneDashboard needs the study's QuickTuneSampler: QuickTuneDashboard(sampler).")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        _require("optuna_dashboard")  # fail at set-up, not after the first finetuning run
        _require("plotly.graph_objects")
        self.sampler = sampler
        self.every = every
        self.top_k = top_k
        self.max_finished = max_finished
        self._seen = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._seen += 1
        if self._seen % self.every:
            return
        try:
            self.publish(study)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            optuna.logging.get_logger(__name__).warning(f"QuickTuneDashboard: could not publish ({type(e).__name__}: {e}).")

    def publish(self, study: optuna.Study) -> dict[str, str]:
        """Publish now (e.g. once before ``optimize``, or after it); errors propagate here."""
        return publish(self.sampler, study, top_k=self.top_k, max_finished=self.max_finished)


# ====================================================================== helpers
def _observed(t: FrozenTrial) -> tuple[float | None, int | None]:
    if t.state == TrialState.COMPLETE and t.value is not None:
        step = max(t.intermediate_values) if t.intermediate_values else None
        return float(t.value), step
    if t.intermediate_values:
        step = max(t.intermediate_values)
        v = float(t.intermediate_values[step])
        return (v, step) if math.isfinite(v) else (None, None)
    return None, None


def _calibration(study: optuna.Study) -> dict[str, Any] | None:
    errs, inside = [], 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = t.user_attrs.get(contract.PREDICTED)
        if not isinstance(rec, Mapping) or t.value is None:
            continue
        err = float(t.value) - float(rec["mean"])
        errs.append(abs(err))
        inside += abs(err) <= _Z90 * float(rec.get("std", 0.0))
    if not errs:
        return None
    return {"n": len(errs), "inside": int(inside), "mae": float(np.mean(errs))}


def _merge_note(old: str, section: str) -> str:
    pattern = re.compile(re.escape(NOTE_BEGIN) + r".*?" + re.escape(NOTE_END), re.S)
    if pattern.search(old):
        return pattern.sub(lambda _: section, old, count=1)
    return (old.rstrip() + "\n\n" + section) if old.strip() else section


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"

