"""trl_objectives: Optuna objectives that finetune LLMs with TRL SFT + LoRA and report into the study.

The objectives write what ``optuna_quicktune`` reads (the storage contract in
``optuna_quicktune.contract``): learning curves as intermediate values, cumulative cost per step,
the task's description and meta-features, and checkpoints of paused runs.

Names are imported on first use (PEP 562): ``import trl_objectives`` and the ``quicktune`` command
line stay fast (transformers, PEFT and TRL take several seconds to import), and a name is the
object of its module, e.g. ``trl_objectives.SFTObjective is trl_objectives.objective.SFTObjective``.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "SFTObjective": "trl_objectives.objective",
    "score_base_model": "trl_objectives.zero_shot",
    "training_settings": "trl_objectives.training",
    "build_lora_model": "trl_objectives.training",
    "build_sft_trainer": "trl_objectives.training",
    "LORA_PARAMS": "trl_objectives.training",
    "SFT_PARAMS": "trl_objectives.training",
    "free_trial": "trl_objectives.memory",
    "TrialRecord": "trl_objectives.callbacks",
    "ResumeCallback": "trl_objectives.callbacks",
    "DivergenceCallback": "trl_objectives.callbacks",
    "ReportCallback": "trl_objectives.callbacks",
    "save_checkpoint": "trl_objectives.checkpoint",
    "load_checkpoint_meta": "trl_objectives.checkpoint",
    "TASKS": "trl_objectives.tasks",
    "FactTask": "trl_objectives.tasks",
    "load_task": "trl_objectives.tasks",
    "task_names": "trl_objectives.tasks",
    "task_records": "trl_objectives.tasks",
    "generate_qa": "trl_objectives.datagen",
    "expand_facts": "trl_objectives.datagen",
    "GenerationReport": "trl_objectives.datagen",
    "QADataset": "trl_objectives.data",
    "load_qa_dataset": "trl_objectives.data",
    "format_prompt_completion": "trl_objectives.prompts",
    "prompt_input_ids": "trl_objectives.prompts",
    "toy_qa_records": "trl_objectives.datagen",
    "evaluate_generation": "trl_objectives.evaluate",
    "generate_answers": "trl_objectives.evaluate",
    "score_answers": "trl_objectives.evaluate",
    "exact_match": "trl_objectives.evaluate",
    "token_f1": "trl_objectives.evaluate",
    "normalize_answer": "trl_objectives.evaluate",
    "METRICS": "trl_objectives.evaluate",
    "compute_metafeatures": "trl_objectives.metafeatures",
    "METAFEATURE_NAMES": "trl_objectives.metafeatures",
    "ModelSource": "trl_objectives.models",
    "resolve_model": "trl_objectives.models",
    "load_model": "trl_objectives.models",
    "load_tokenizer": "trl_objectives.models",
    "build_tiny_phi3": "trl_objectives.tiny",
    "TEST_SCORE": "trl_objectives.objective",
    "TEST_METRIC_PREFIX": "trl_objectives.objective",
    "VAL_METRICS": "trl_objectives.objective",
    "FAIL_REASON": "trl_objectives.objective",
    "TRLObjectiveInputError": "trl_objectives.errors",
    "DatasetFormatError": "trl_objectives.errors",
    "EmptySplitError": "trl_objectives.errors",
    "ModelNotFoundError": "trl_objectives.errors",
    "StudyMismatchError": "trl_objectives.errors",
    "TrialFailure": "trl_objectives.errors",
    "NonFiniteLossError": "trl_objectives.errors",
    "TrialOutOfMemoryError": "trl_objectives.errors",
}

__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_objectives' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
