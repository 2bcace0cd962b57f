"""From a configuration to a ready ``SFTTrainer``: LoRA / SFT settings, the PEFT model, the trainer.

Why a module of its own: the trial loop (:mod:`trl_objectives.objective`), the base-model scoring
(:func:`trl_objectives.score_base_model`) and users' own scripts all need the same model and
trainer for a configuration; building them in one place keeps a zero-shot score and a trial's
scores measured the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna_quicktune.space import DEFAULT_LORA_CONFIG, TARGET_MODULE_PRESETS
from trl_objectives.errors import TRLObjectiveInputError
from trl_objectives.memory import bfloat16
from trl_objectives.models import ModelSource, load_model, pick_device_and_dtype

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

__all__ = ["LORA_PARAMS", "SFT_PARAMS", "training_settings", "build_lora_model", "build_sft_trainer"]

#: Search-space names that configure ``peft.LoraConfig``.
LORA_PARAMS = frozenset(
    {"lora_r", "lora_alpha", "lora_alpha_ratio", "lora_dropout", "target_modules", "use_dora", "use_rslora"}
)
#: Search-space names passed to ``trl.SFTConfig`` as they are (``warmup_ratio`` becomes ``warmup_steps``).
SFT_PARAMS = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "warmup_steps",
        "lr_scheduler_type",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "optim",
        "neftune_noise_alpha",
        "max_length",
    }
)


def training_settings(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a configuration into ``LoraConfig`` kwargs and ``SFTConfig`` kwargs.

    Missing LoRA-space parameters take their ``DEFAULT_LORA_CONFIG`` value; parameters outside
    :data:`LORA_PARAMS` and :data:`SFT_PARAMS` are left out of both.
    """
    full = {**DEFAULT_LORA_CONFIG, **{k: v for k, v in config.items() if k in LORA_PARAMS | SFT_PARAMS}}
    if "lora_alpha" in config:
        full.pop("lora_alpha_ratio", None)
    r = int(full["lora_r"])
    alpha = float(full["lora_alpha"]) if "lora_alpha" in full else float(full["lora_alpha_ratio"]) * r
    targets = full["target_modules"]
    if isinstance(targets, str) and targets in TARGET_MODULE_PRESETS:
        targets = TARGET_MODULE_PRESETS[targets]
    lora = {
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": float(full["lora_dropout"]),
        "target_modules": targets,
        "use_dora": bool(full["use_dora"]),
        "use_rslora": bool(full["use_rslora"]),
    }
    sft: dict[str, Any] = {key: full[key] for key in SFT_PARAMS if key in full}
    if "warmup_ratio" in sft:  # transformers 5 takes a ratio in [0, 1) as a float warmup_steps
        ratio = float(sft.pop("warmup_ratio"))
        sft.setdefault("warmup_steps", ratio if ratio < 1 else 0.999)
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
        if key in sft:
            sft[key] = int(sft[key])
    return lora, sft


def build_lora_model(
    source: ModelSource,
    lora_kwargs: Mapping[str, Any],
    *,
    seed: int = 0,
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> "PreTrainedModel":
    """Load the base model afresh and wrap it with a new LoRA adapter (initialised from ``seed``).

    Target modules the model lacks are dropped; none present is an error that lists the model's
    linear layers (what to target instead).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(source, device=device, cache_dir=cache_dir)
    lora_kwargs = dict(lora_kwargs)
    targets = lora_kwargs["target_modules"]
    if isinstance(targets, list):
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        found = [t for t in targets if t in present]
        if not found:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise TRLObjectiveInputError(
                f"None of the LoRA target modules {targets} exists in {source.name}; its linear layers are {linear}."
            )
        lora_kwargs["target_modules"] = found
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))


def build_sft_trainer(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    *,
    train: "datasets.Dataset",
    validation: "datasets.Dataset",
    sft_kwargs: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    max_length: int,
    eval_batch_size: int,
    max_epochs: int,
    eval_every_steps: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    sft_overrides: Mapping[str, Any] | None = None,
    callbacks: Sequence["TrainerCallback"] = (),
) -> Any:
    """An ``SFTTrainer`` that evaluates at every fidelity and saves nothing by itself.

    Evaluation runs each epoch, or every ``eval_every_steps`` optimizer steps up to ``max_steps``;
    loss is logged at every step (so divergence is seen at once); TRL's console printers are
    removed (the caller shows progress).  ``sft_kwargs`` (from the configuration) and then
    ``sft_overrides`` (from the user) override these settings.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    dev, dtype = pick_device_and_dtype(device)
    on_gpu = dev.type == "cuda"
    kwargs: dict[str, Any] = {
        "output_dir": str(Path(out_dir)),
        "use_cpu": dev.type == "cpu",
        "bf16": on_gpu and dtype == bfloat16(),
        "fp16": on_gpu and dtype != bfloat16(),
        # TRL defaults to activation (gradient) checkpointing; it only slows small LoRA runs down.
        "activation_checkpointing": False,
        "max_length": max_length,
        "per_device_eval_batch_size": eval_batch_size,
        "eval_strategy": "epoch" if eval_every_steps is None else "steps",
        "save_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }
    if eval_every_steps is None:
        kwargs["num_train_epochs"] = max_epochs
    else:
        kwargs["max_steps"] = max_steps
        kwargs["eval_steps"] = eval_every_steps
    kwargs.update(sft_kwargs)
    kwargs.update(sft_overrides or {})
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**kwargs),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    return trainer
