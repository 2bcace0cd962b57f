"""QuickTune end to end on a CPU in a minute: meta-dataset -> surrogate -> zero-shot tuning -> dashboard.

Runs anywhere (no GPU, no downloads): the "finetuning runs" come from
``optuna_quicktune.simulate``, a family of tasks whose best learning rate and LoRA rank differ per
task and are hinted at by the tasks' meta-features, like real datasets. The steps are those of a
real project:

1. Earlier runs live in an Optuna storage, one study per task (here written from the simulated
   family; in practice ``quicktune collect`` or your own ``SFTObjective`` studies).
2. ``MetaDataset.from_storage`` + ``meta_train`` give a surrogate, saved as a folder.
3. A held-out task is tuned zero-shot by ``QuickTuneSampler`` + ``QuickTunePruner`` (freeze-thaw:
   the simulated objective checkpoints when paused and resumes later).
4. ``QuickTuneDashboard`` publishes the predicted-vs-observed figure, learning curves and the
   portfolio note; ``quicktune dashboard sqlite:///...`` shows them.

    python examples/cpu_demo.py                 # about a minute on a laptop
    python examples/cpu_demo.py --smoke         # seconds of work: what CI runs
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import optuna

from optuna_quicktune import DEFAULT_LORA_CONFIG, MetaDataset, QuickTunePruner, QuickTuneSampler, load_surrogate
from optuna_quicktune.simulate import SimulatedFamily, SimulatedObjective
from optuna_quicktune.surrogate import meta_train


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="A tiny run (few tasks, steps and trials) for CI.")
    parser.add_argument("--workdir", default=None, help="Where the storages and the surrogate go (default: a temp dir).")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--no-dashboard", action="store_true", help="Do not publish the optuna-dashboard views.")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    # The surrogates' matrices are small: torch's thread pool costs more than the work, and many
    # times more on a busy CPU (meta-training measured 1.2 s on one thread vs 35 s on two contended).
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="quicktune-demo-"))
    work.mkdir(parents=True, exist_ok=True)

    n_tasks, n_configs, steps, trials = (5, 12, 30, 6) if args.smoke else (10, 48, 600, 20)
    trials = args.trials or trials
    family = SimulatedFamily(n_tasks, fidelity_max=8 if args.smoke else 10, seed=0)
    target = family.tasks[-1]

    # 1. The meta-dataset: every task but the target, as studies of an ordinary Optuna storage.
    runs_db = f"sqlite:///{work / 'runs.db'}"
    family.metadataset(n_configs, seed=1, tasks=list(range(n_tasks - 1))).to_storage(runs_db)
    md = MetaDataset.from_storage(runs_db)
    print(f"meta-dataset: {md}")

    # 2. Meta-train and save (what `quicktune meta-train --storage ... --out ...` does).
    surrogate = meta_train(md, steps=steps, context_size=64 if args.smoke else 256, seed=0)
    surrogate.save(str(work / "surrogate"))
    print(f"surrogate: {surrogate.info['steps']} steps in {surrogate.info['train_seconds']} s; "
          f"validation {surrogate.info.get('validation')}")

    # 3. Zero-shot tuning of the held-out task.
    sampler = QuickTuneSampler(load_surrogate(work / "surrogate"), metafeatures=target.metafeatures,
                               n_candidates=100 if args.smoke else 1000, seed=0)
    study = optuna.create_study(storage=f"sqlite:///{work / 'target.db'}", study_name=target.name,
                                direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler))
    sampler.enqueue_portfolio(study, k=2)  # the two best predicted configurations first
    objective = SimulatedObjective(target)
    callbacks = []
    if not args.no_dashboard:
        try:
            from optuna_quicktune.dashboard import QuickTuneDashboard

            callbacks.append(QuickTuneDashboard(sampler, every=1))
        except ImportError as e:
            print(f"(no dashboard views: {e})")
    study.optimize(objective, n_trials=trials, callbacks=callbacks)

    # Scores a full run reaches (the curve's last point; slow learning rates have not converged there).
    random_scores = sorted(float(target.curve(c)[-1]) for c in family.space.sample(2000, 123))
    best_possible, median_random = random_scores[-1], random_scores[len(random_scores) // 2]
    default = float(target.curve(DEFAULT_LORA_CONFIG)[-1])
    states = [t.state.name for t in study.trials]
    result = {
        "best_value": float(study.best_value),
        "best_of_2000_random": float(best_possible),
        "median_random": float(median_random),
        "default_config": float(default),
        "simulated_seconds": float(objective.clock),
        "trials": float(len(states)),
        "paused_or_stopped": float(states.count("PRUNED")),
    }
    print(f"best score {result['best_value']:.4f}; for comparison: the default LoRA configuration {default:.4f}, "
          f"the median random configuration {median_random:.4f}, the best of 2000 random ones {best_possible:.4f}")
    print(f"  {len(states)} trials, {states.count('PRUNED')} stopped/paused; simulated cost {objective.clock:.0f} s")
    if args.smoke:
        print("  (--smoke: a surrogate of 30 steps on 4 tasks checks that everything runs; it is not a fair result)")
    if callbacks:
        print(f"dashboard: quicktune dashboard sqlite:///{work / 'target.db'}")
    return result


if __name__ == "__main__":
    main()
