"""Search spaces: :class:`SearchSpace` (any Optuna distributions, encoded in [0, 1]) and the LoRA spaces.

The import path of both since the first release; the definitions live in
:mod:`optuna_quicktune.search_space` (the class and its encoding) and :mod:`optuna_quicktune.lora`.
"""

from optuna_quicktune.lora import (
    DEFAULT_LORA_CONFIG,
    LORA_CONDITIONAL_SPACE_NAME,
    LORA_SPACE_NAME,
    TARGET_MODULE_PRESETS,
    lora_conditional_space,
    lora_space,
)
from optuna_quicktune.search_space import INACTIVE_VALUE, Condition, SearchSpace

__all__ = [
    "SearchSpace", "Condition", "INACTIVE_VALUE", "lora_space", "lora_conditional_space", "DEFAULT_LORA_CONFIG",
    "LORA_SPACE_NAME", "LORA_CONDITIONAL_SPACE_NAME", "TARGET_MODULE_PRESETS",
]
