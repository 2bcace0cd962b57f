"""Build your own meta-dataset (LoRA runs of one base model on several datasets) and meta-train a surrogate.

This is how a surrogate for *your* base model is made, e.g. Phi-3-mini on a GPU (the setting of
Strangmann et al. 2024): the same configurations are finetuned on several QA datasets with
``trl_objectives.collect`` (TRL ``SFTTrainer`` + PEFT LoRA; one Optuna study per dataset, written
in the storage contract), then ``meta_train`` learns the performance and cost surrogates from that
storage and saves them as a folder that ``QuickTuneSampler`` loads.

    # Phi-3-mini on a GPU (downloads the weights from the Hugging Face Hub once; hours of GPU time):
    python examples/build_metadataset.py --model microsoft/Phi-3-mini-4k-instruct \\
        --tasks http-status,mime-types,html-entities,unicode-names,errno-messages,country-codes \\
        --configs 24 --epochs 5 --facts 8 --storage sqlite:///phi3-runs.db --out phi3-surrogate

    # CI (CPU, no downloads): a tiny random Phi-3 (same module names) on three tasks, 2 configs, 2 epochs.
    python examples/build_metadataset.py --smoke --workdir /tmp/qt

The collection resumes where it stopped (run the same command again), so it can be spread over
several sessions or machines sharing one storage. The datasets are the fact-QA tasks of
``trl_objectives.tasks`` (``trl_objectives.tasks.task_names()``); for your own datasets, run
``SFTObjective`` studies on them the same way (see docs/metadataset.md and docs/trl_objectives.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def tiny_phi3(tasks: list[str], facts: int, folder: Path) -> str:
    """A tiny random Phi-3 with a tokenizer trained on the tasks' texts, saved as a model folder."""
    from trl_objectives.models import build_tiny_phi3
    from trl_objectives.tasks import task_records

    texts = [r[k] for t in tasks for r in task_records(t, facts) for k in ("question", "answer")]
    build_tiny_phi3(texts, save_to=folder, seed=0)
    return str(folder)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="microsoft/Phi-3-mini-4k-instruct", help="Base model spec (hub id, folder, .gguf).")
    p.add_argument("--tasks", default="http-status,mime-types,html-entities,unicode-names,errno-messages,country-codes")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in --workdir).")
    p.add_argument("--workdir", default=None, help="Folder for the default storage, checkpoints and model.")
    p.add_argument("--out", default=None, help="Folder to save the surrogate to (default: <workdir>/surrogate).")
    p.add_argument("--configs", type=int, default=24)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--facts", type=int, default=8)
    p.add_argument("--metric", default="exact_match", choices=["exact_match", "token_f1", "eval_loss"])
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500, help="Meta-training steps.")
    p.add_argument("--smoke", action="store_true", help="Tiny Phi-3 on 3 tasks, 2 configs, 2 epochs (CPU, seconds).")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="quicktune-metadataset-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.smoke:
        import torch

        # Tiny matrices: torch's thread pool costs more than the work, and many times more on a
        # busy CPU (meta-training measured 1.2 s on one thread vs 35 s on two contended ones).
        torch.set_num_threads(1)
        tasks = tasks[:3]
        args.configs, args.epochs, args.facts, args.metric, args.max_length, args.steps = 2, 2, 2, "eval_loss", 64, 20
        args.model = tiny_phi3(tasks, args.facts, work / "tiny-phi3")
    storage = args.storage or f"sqlite:///{work / 'runs.db'}"
    out = args.out or str(work / "surrogate")

    from trl_objectives.collect import collect

    summary = collect(tasks, model=args.model, storage=storage, configs=args.configs, epochs=args.epochs,
                      facts=args.facts, metric=args.metric, max_length=args.max_length,
                      num_threads=1 if args.smoke else None, checkpoint_dir=str(work / "checkpoints"),
                      zero_shot=not args.smoke, progress=not args.smoke)
    print(f"collected: {summary['trials_run']} runs this call; {json.dumps(summary['tasks'])}")

    from optuna_quicktune import MetaDataset
    from optuna_quicktune.surrogate import meta_train

    md = MetaDataset.from_storage(storage)
    print(f"meta-dataset: {md}")
    surrogate = meta_train(md, steps=args.steps, context_size=64 if args.smoke else 256, seed=0, progress=not args.smoke)
    surrogate.save(out)
    print(f"surrogate saved to {out} ({surrogate.info['train_seconds']} s); validation: {surrogate.info.get('validation')}")
    print(f"inspect it with: quicktune inspect {out}")
    return {"storage": storage, "surrogate": out, "tasks": len(md.tasks), "runs": len(md.runs),
            "metafeatures": surrogate.metafeature_names}


if __name__ == "__main__":
    main()
