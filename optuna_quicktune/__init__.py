"""optuna-quicktune: tune LLM finetuning by zero-shot transfer of meta-learned surrogates."""

from __future__ import annotations

__version__ = "0.1.0"

from optuna_quicktune.errors import (
    EmptyMetaDatasetError,
    MetaFeatureError,
    MixedSpaceError,
    QuickTuneError,
    SpaceMismatchError,
    SurrogateFormatError,
)
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, SearchSpace, lora_space

__all__ = [
    "__version__",
    "SearchSpace",
    "lora_space",
    "DEFAULT_LORA_CONFIG",
    "MetaDataset",
    "QuickTuneError",
    "EmptyMetaDatasetError",
    "MixedSpaceError",
    "MetaFeatureError",
    "SurrogateFormatError",
    "SpaceMismatchError",
]

from optuna_quicktune.sampler import QuickTuneSampler  # noqa: E402
from optuna_quicktune.pruner import QuickTunePruner  # noqa: E402
from optuna_quicktune.pretrained import load_surrogate  # noqa: E402

__all__ += ["QuickTuneSampler", "QuickTunePruner", "load_surrogate"]
