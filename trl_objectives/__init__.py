"""trl_objectives: Optuna objectives that finetune LLMs with TRL SFT + LoRA and report into the study.

The objectives write what ``optuna_quicktune`` reads (the storage contract in
``optuna_quicktune.contract``): learning curves as intermediate values, cumulative cost per step,
the task's description and meta-features, and checkpoints of paused runs.
"""

from trl_objectives.data import (
    QADataset,
    format_prompt_completion,
    load_qa_dataset,
    prompt_input_ids,
    toy_qa_records,
)
from trl_objectives.datagen import GenerationReport, expand_facts, generate_qa
from trl_objectives.errors import (
    DatasetFormatError,
    EmptySplitError,
    ModelNotFoundError,
    NonFiniteLossError,
    StudyMismatchError,
    TrialFailure,
    TrialOutOfMemoryError,
    TRLObjectiveInputError,
)
from trl_objectives.evaluate import (
    METRICS,
    evaluate_generation,
    exact_match,
    generate_answers,
    normalize_answer,
    score_answers,
    token_f1,
)
from trl_objectives.metafeatures import METAFEATURE_NAMES, compute_metafeatures
from trl_objectives.models import ModelSource, build_tiny_phi3, load_model, load_tokenizer, resolve_model
from trl_objectives.objective import (
    FAIL_REASON,
    TEST_METRIC_PREFIX,
    TEST_SCORE,
    VAL_METRICS,
    SFTObjective,
)
from trl_objectives.callbacks import DivergenceCallback, ReportCallback, ResumeCallback, TrialRecord
from trl_objectives.checkpoint import load_checkpoint_meta, save_checkpoint
from trl_objectives.memory import free_trial
from trl_objectives.training import LORA_PARAMS, SFT_PARAMS, build_lora_model, build_sft_trainer, training_settings
from trl_objectives.zero_shot import score_base_model

from trl_objectives.tasks import TASKS, FactTask, load_task, task_names, task_records

__all__ = [
    "SFTObjective",
    "score_base_model",
    "training_settings",
    "build_lora_model",
    "build_sft_trainer",
    "LORA_PARAMS",
    "SFT_PARAMS",
    "free_trial",
    "TrialRecord",
    "ResumeCallback",
    "DivergenceCallback",
    "ReportCallback",
    "save_checkpoint",
    "load_checkpoint_meta",
    "TASKS",
    "FactTask",
    "load_task",
    "task_names",
    "task_records",
    "generate_qa",
    "expand_facts",
    "GenerationReport",
    "QADataset",
    "load_qa_dataset",
    "format_prompt_completion",
    "prompt_input_ids",
    "toy_qa_records",
    "evaluate_generation",
    "generate_answers",
    "score_answers",
    "exact_match",
    "token_f1",
    "normalize_answer",
    "METRICS",
    "compute_metafeatures",
    "METAFEATURE_NAMES",
    "ModelSource",
    "resolve_model",
    "load_model",
    "load_tokenizer",
    "build_tiny_phi3",
    "TEST_SCORE",
    "TEST_METRIC_PREFIX",
    "VAL_METRICS",
    "FAIL_REASON",
    "TRLObjectiveInputError",
    "DatasetFormatError",
    "EmptySplitError",
    "ModelNotFoundError",
    "StudyMismatchError",
    "TrialFailure",
    "NonFiniteLossError",
    "TrialOutOfMemoryError",
]
