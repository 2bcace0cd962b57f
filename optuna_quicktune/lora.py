"""The LoRA finetuning spaces the TRL objectives, the collections and the shipped surrogates use.

A space is data (a :class:`~optuna_quicktune.search_space.SearchSpace`); these are the two the
project defines, with the names and fingerprints stored with every collection, and the configuration
nobody tuned (the tutorials' LoRA defaults) that every benchmark compares with.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from optuna_quicktune.search_space import SearchSpace

__all__ = [
    "lora_space", "lora_conditional_space", "DEFAULT_LORA_CONFIG", "LORA_SPACE_NAME",
    "LORA_CONDITIONAL_SPACE_NAME", "TARGET_MODULE_PRESETS",
]

LORA_SPACE_NAME = "lora-v1"
LORA_CONDITIONAL_SPACE_NAME = "lora-optim-v1"

#: What each ``target_modules`` choice of the LoRA space means, per architecture family.  Names
#: cover Llama/Mistral/SmolLM (q_proj...) and Phi-3 (qkv_proj, gate_up_proj) module naming.
TARGET_MODULE_PRESETS: dict[str, list[str] | str] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"],
    "attention_mlp": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "qkv_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "gate_up_proj",
    ],
    "all_linear": "all-linear",
}


def lora_space() -> SearchSpace:
    """The default LoRA finetuning space (``lora-v1``).

    The ranges follow common practice for LoRA SFT of 0.1B-4B models (and the Phi-3 runs of
    Strangmann et al. 2024): the learning rate is log-uniform because its effect is multiplicative;
    alpha is a multiple of the rank because that ratio, not alpha itself, sets the update scale.
    """
    return SearchSpace(
        {
            "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
            "lora_r": IntDistribution(4, 128, log=True),
            "lora_alpha_ratio": CategoricalDistribution([0.5, 1.0, 2.0, 4.0]),
            "lora_dropout": FloatDistribution(0.0, 0.2),
            "target_modules": CategoricalDistribution(list(TARGET_MODULE_PRESETS)),
            "weight_decay": FloatDistribution(0.0, 0.1),
            "warmup_ratio": FloatDistribution(0.0, 0.2),
            "lr_scheduler_type": CategoricalDistribution(["linear", "cosine", "constant_with_warmup"]),
            "per_device_train_batch_size": CategoricalDistribution([2, 4, 8, 16]),
            "gradient_accumulation_steps": CategoricalDistribution([1, 2, 4, 8]),
            "max_grad_norm": FloatDistribution(0.1, 2.0, log=True),
            "use_dora": CategoricalDistribution([False, True]),
            "use_rslora": CategoricalDistribution([False, True]),
        },
        name=LORA_SPACE_NAME,
    )


def lora_conditional_space() -> SearchSpace:
    """``lora-v1`` plus the optimizer, with Adam's own settings only when the optimizer is AdamW.

    ``optim`` is the ``TrainingArguments.optim`` name: AdamW (the TRL default), Adafactor (no
    second-moment matrix: less memory, often used for larger models) or plain SGD. ``adam_beta1``
    and ``adam_beta2`` exist only for AdamW: Adafactor and SGD ignore them, and a surrogate that saw
    them there would learn from noise. ``lora_space()`` is unchanged, so meta-datasets collected on
    it stay valid; this is a second space with its own fingerprint.
    """
    base = lora_space().distributions
    dists: dict[str, BaseDistribution] = {
        **base,
        "optim": CategoricalDistribution(["adamw_torch", "adafactor", "sgd"]),
        "adam_beta1": FloatDistribution(0.8, 0.95),
        "adam_beta2": FloatDistribution(0.95, 0.999),
    }
    adam_only = ("optim", ["adamw_torch"])
    return SearchSpace(
        dists, name=LORA_CONDITIONAL_SPACE_NAME, conditions={"adam_beta1": adam_only, "adam_beta2": adam_only}
    )


#: The default configuration of the LoRA space: what PEFT/TRL tutorials use when nobody tunes.
DEFAULT_LORA_CONFIG: dict[str, Any] = {
    "learning_rate": 2e-4,
    "lora_r": 16,
    "lora_alpha_ratio": 2.0,
    "lora_dropout": 0.05,
    "target_modules": "attention",
    "weight_decay": 0.0,
    "warmup_ratio": 0.03,
    "lr_scheduler_type": "linear",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_grad_norm": 1.0,
    "use_dora": False,
    "use_rslora": False,
}
