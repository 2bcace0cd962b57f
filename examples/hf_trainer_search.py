"""QuickTune through ``transformers.Trainer.hyperparameter_search(backend="optuna", sampler=...)``.

For code that already finetunes with the Hugging Face ``Trainer``: the search keeps the Trainer's
own loop, and QuickTune only supplies the sampler and pruner. transformers 5 passes every extra
keyword of ``hyperparameter_search`` (``sampler``, ``pruner``, ``storage``, ``study_name``,
``load_if_exists``) to ``optuna.create_study``; ``n_trials``, ``timeout``, ``n_jobs``, ``catch``
and ``gc_after_trial`` go to ``study.optimize`` (callbacks cannot be passed, so the dashboard views
are published after the search).

Three things connect the Trainer to QuickTune's storage contract:

* ``hp_space`` suggests the whole LoRA space; the ``TrainingArguments`` fields among it are
  returned (the Trainer sets them), the LoRA fields are read by ``model_init(trial)``.
* Fidelity ``k`` is the ``k``-th evaluation (``eval_steps`` optimizer steps each, ``max_steps``
  fixed): the Trainer reports at the global step, so :class:`QuickTuneTrainer` reports ``k``
  instead, as the contract (curves indexed 1..max) and the surrogate expect.
* A callback records the cumulative seconds at each evaluation (``quicktune.cost``), the input of
  the cost-aware acquisition and of later meta-training.

The objective is the Trainer's default (``eval_loss``, minimised), so use a surrogate meta-trained
on ``eval_loss`` curves of the same base model (``examples/build_metadataset.py --metric eval_loss``).
The Trainer cannot resume a stopped trial here, so pruning stops runs (no freeze-thaw).

    # Phi-3-mini on a GPU (downloads the weights once):
    python examples/hf_trainer_search.py --surrogate phi3-surrogate --trials 12
    # CI: the tiny Phi-3 and the surrogate of `build_metadataset.py --smoke`
    python examples/hf_trainer_search.py --smoke --surrogate /tmp/qt/surrogate --workdir /tmp/qt
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract, load_surrogate
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, TARGET_MODULE_PRESETS


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="microsoft/Phi-3-mini-4k-instruct")
    p.add_argument("--surrogate", required=True, help="Surrogate folder meta-trained on eval_loss curves of this model.")
    p.add_argument("--task", default="timezones", help="A fact-QA task of trl_objectives.tasks (the new dataset).")
    p.add_argument("--facts", type=int, default=8)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--evals", type=int, default=None, help="Fidelity steps (evaluations) of a full run; default the surrogate's.")
    p.add_argument("--eval-steps", type=int, default=20, help="Optimizer steps between two evaluations.")
    p.add_argument("--storage", default=None)
    p.add_argument("--workdir", default=None)
    p.add_argument("--smoke", action="store_true", help="Tiny Phi-3 on CPU, 2 trials of 2 evaluations of 2 steps.")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                              TrainingArguments)
    from transformers.utils import logging as hf_logging

    from trl_objectives import compute_metafeatures, load_tokenizer
    from trl_objectives.tasks import load_task

    hf_logging.set_verbosity_error()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="quicktune-hf-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        torch.set_num_threads(1)
        args.trials, args.eval_steps, args.facts = 2, 2, 2
        tiny = work / "tiny-phi3-hf"
        if not (tiny / "config.json").exists():
            from trl_objectives.models import build_tiny_phi3
            from trl_objectives.tasks import task_records

            texts = [r[k] for r in task_records(args.task, args.facts) for k in ("question", "answer")]
            build_tiny_phi3(texts, save_to=tiny, seed=0)
        args.model = str(tiny)

    surrogate = load_surrogate(args.surrogate)
    space = surrogate.space
    evals = min(args.evals or surrogate.max_fidelity, surrogate.max_fidelity)
    qa = load_task(args.task, args.facts)
    tokenizer = load_tokenizer(args.model)
    metafeatures = compute_metafeatures(qa, tokenizer)

    def tokenize(split: Any) -> Any:
        def one(r: dict[str, str]) -> dict[str, list[int]]:
            text = f"Question: {r['question']}\nAnswer: {r['answer']}{tokenizer.eos_token}"
            return tokenizer(text, truncation=True, max_length=128)
        return split.map(one, remove_columns=split.column_names)

    train_ds, eval_ds = tokenize(qa.train), tokenize(qa.validation)
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments)}

    def lora_config(trial: optuna.Trial | None) -> dict[str, Any]:
        # Suggesting a parameter twice returns the first value, so hp_space and model_init agree.
        return dict(DEFAULT_LORA_CONFIG) if trial is None else space.suggest(trial)

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        config = lora_config(trial)
        out = {k: v for k, v in config.items() if k in training_fields}
        if "warmup_ratio" in config:  # transformers 5 takes a ratio in [0, 1) as a float warmup_steps
            out["warmup_steps"] = float(config["warmup_ratio"])
        return out

    current: dict[str, Any] = {}

    def model_init(trial: optuna.Trial | None) -> torch.nn.Module:
        c = lora_config(trial)
        model = AutoModelForCausalLM.from_pretrained(args.model)
        preset = TARGET_MODULE_PRESETS[c["target_modules"]]  # Phi-3 and Llama-style names both listed
        peft_config = LoraConfig(
            r=int(c["lora_r"]), lora_alpha=float(c["lora_r"] * c["lora_alpha_ratio"]), lora_dropout=float(c["lora_dropout"]),
            target_modules=preset if isinstance(preset, str) else list(preset),  # PEFT skips names the model lacks
            use_dora=bool(c.get("use_dora", False)), use_rslora=bool(c.get("use_rslora", False)), task_type="CAUSAL_LM",
        )
        current.update(trial=trial, start=time.perf_counter(), costs=[])
        return get_peft_model(model, peft_config)

    class CostCallback(TrainerCallback):
        """Cumulative seconds at each evaluation into ``quicktune.cost`` (before the Trainer reports it)."""

        def on_evaluate(self, targs: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trial = current.get("trial")
            if isinstance(trial, optuna.Trial):
                current["costs"].append(time.perf_counter() - current["start"])
                contract.record_cost(trial, current["costs"])

    class QuickTuneTrainer(Trainer):
        """Reports the evaluation index (1..evals) instead of the global step: the contract's fidelity."""

        def _report_to_hp_search(self, trial: Any, step: int, metrics: dict[str, float]) -> None:
            super()._report_to_hp_search(trial, max(1, round(step / args.eval_steps)), metrics)

    targs = TrainingArguments(
        output_dir=str(work / "hf-out"), max_steps=evals * args.eval_steps, eval_strategy="steps",
        eval_steps=args.eval_steps, save_strategy="no", report_to=[], logging_strategy="no",
        disable_tqdm=True, use_cpu=args.smoke, seed=0,
    )
    trainer = QuickTuneTrainer(
        model_init=model_init, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[CostCallback()],
    )

    storage = args.storage or f"sqlite:///{work / 'hf-search.db'}"
    study_name = f"{args.task}/hf-trainer-{int(time.time())}"
    # Describe the task first: the sampler reads the meta-features and fidelity from the study.
    study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize")
    contract.describe_task(study, dataset=args.task, model=Path(args.model).name, metric="eval_loss",
                           fidelity_max=evals, fidelity_unit="step", metafeatures=metafeatures, space=space)
    sampler = QuickTuneSampler(surrogate, metafeatures=metafeatures, fidelity_max=evals,
                               n_candidates=100 if args.smoke else 1000)
    best = trainer.hyperparameter_search(
        direction="minimize", backend="optuna", hp_space=hp_space, n_trials=args.trials,
        # n_startup_trials=1: hyperparameter_search reads study.best_trial, so one run must finish.
        sampler=sampler, pruner=QuickTunePruner(sampler, n_startup_trials=1), storage=storage, study_name=study_name,
        load_if_exists=True,
    )
    study = optuna.load_study(study_name=study_name, storage=storage)
    try:
        from optuna_quicktune.dashboard import publish

        publish(sampler, study)
        print(f"dashboard views published: quicktune dashboard {storage}")
    except ImportError as e:
        print(f"(no dashboard views: {e})")
    states = [t.state.name for t in study.trials]
    predicted = sum(contract.PREDICTED in t.user_attrs for t in study.trials)
    print(f"best run {best.run_id}: eval_loss {best.objective:.4f} with {best.hyperparameters}; "
          f"trials {states}; {predicted} proposed by QuickTune")
    return {"best": best.objective, "trials": len(states), "predicted": predicted, "storage": storage, "study": study_name}


if __name__ == "__main__":
    main()
