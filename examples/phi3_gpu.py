"""Phi-3-mini LoRA finetuning tuned by QuickTune on a GPU: the setting of Strangmann et al. (2024).

NEEDS: a CUDA GPU (about 16 GB for Phi-3-mini-4k in bf16 with LoRA) and network access to the
Hugging Face Hub to download ``microsoft/Phi-3-mini-4k-instruct`` once (or a local copy: pass a
folder to ``--model``). It cannot run in CI, which has neither; the same code path runs there with
the tiny Phi-3 in ``tests/test_trl_objective.py`` and ``examples/build_metadataset.py --smoke``.

What it does (the real code path, nothing simulated):

1. Loads a surrogate meta-trained on Phi-3 runs: ``--surrogate DIR`` from
   ``examples/build_metadataset.py`` (see docs/phi3_metadataset.md).
2. Wraps the new QA dataset (a JSONL file with ``question``/``answer`` [/``fact_id``] columns, or a
   fact-QA task name) in ``trl_objectives.SFTObjective``: TRL ``SFTTrainer`` + PEFT LoRA, one
   evaluation per epoch, checkpoints when paused.
3. Describes the task in the study (meta-features computed with Phi-3's tokenizer), enqueues the
   top-k portfolio, and runs ``study.optimize`` with ``QuickTuneSampler`` + ``QuickTunePruner``
   (zero-shot: the surrogate is never refit; ``--refit`` for Quick-Tune's original behaviour).
4. Publishes the dashboard views after every trial; watch them with
   ``quicktune dashboard sqlite:///phi3-tuning.db``.

    python examples/phi3_gpu.py --surrogate phi3-surrogate --dataset my_qa.jsonl --hours 5
    python examples/phi3_gpu.py --surrogate phi3-surrogate --dataset timezones --trials 20
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import optuna


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--surrogate", required=True, help="Surrogate folder meta-trained on Phi-3 runs (build_metadataset.py).")
    p.add_argument("--dataset", required=True, help="QA JSONL file, or a fact-QA task name of trl_objectives.tasks.")
    p.add_argument("--model", default="microsoft/Phi-3-mini-4k-instruct")
    p.add_argument("--metric", default="exact_match", choices=["exact_match", "token_f1", "eval_loss"])
    p.add_argument("--epochs", type=int, default=5, help="Fidelity: epochs of a full run (<= the surrogate's).")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--hours", type=float, default=None, help="Wall-clock budget of the search.")
    p.add_argument("--portfolio", type=int, default=4, help="Best predicted configurations enqueued first.")
    p.add_argument("--refit", action="store_true", help="Refit the surrogate on this study (Quick-Tune) instead of zero-shot.")
    p.add_argument("--storage", default="sqlite:///phi3-tuning.db")
    p.add_argument("--checkpoints", default="quicktune_checkpoints")
    args = p.parse_args(argv)
    if args.trials is None and args.hours is None:
        p.error("give --trials or --hours")

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("This example needs a CUDA GPU (Phi-3-mini LoRA on a CPU takes days). "
                         "Try examples/cpu_demo.py or `quicktune demo` instead.")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    from optuna_quicktune import QuickTunePruner, QuickTuneSampler, load_surrogate
    from optuna_quicktune.dashboard import QuickTuneDashboard
    from trl_objectives import TEST_SCORE, SFTObjective, load_qa_dataset
    from trl_objectives.tasks import load_task, task_names

    surrogate = load_surrogate(args.surrogate)
    if args.epochs > surrogate.max_fidelity:
        raise SystemExit(f"--epochs {args.epochs} exceeds the surrogate's fidelity {surrogate.max_fidelity}: "
                         "it never saw curves that long; meta-train on longer runs or use fewer epochs.")
    qa = load_task(args.dataset) if args.dataset in task_names() else load_qa_dataset(args.dataset, name=Path(args.dataset).stem)
    objective = SFTObjective(args.model, qa, metric=args.metric, max_epochs=args.epochs, space=surrogate.space,
                             checkpoint_dir=args.checkpoints, device="cuda")
    sampler = QuickTuneSampler(surrogate, refit=args.refit)
    study = optuna.create_study(storage=args.storage, study_name=f"{qa.name}/{objective.model_name}",
                                direction=objective.direction, sampler=sampler, pruner=QuickTunePruner(sampler),
                                load_if_exists=True)
    objective.describe(study)  # task, fidelity, meta-features (Phi-3 tokenizer), space: before the first proposal
    sampler.enqueue_portfolio(study, k=args.portfolio)
    dashboard = QuickTuneDashboard(sampler)
    dashboard.publish(study)  # the portfolio is visible before the first run ends
    study.optimize(objective, n_trials=args.trials, timeout=None if args.hours is None else args.hours * 3600,
                   callbacks=[dashboard])
    best = study.best_trial
    print(f"best trial {best.number}: {args.metric} {best.value:.4f}; test {best.user_attrs.get(TEST_SCORE)}")
    print(f"parameters: {best.params}")
    print(f"dashboard: quicktune dashboard {args.storage}")


if __name__ == "__main__":
    main()
