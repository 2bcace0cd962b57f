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
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, SearchSpace, lora_conditional_space, lora_space

__all__ = [
    "__version__",
    "SearchSpace",
    "lora_space",
    "lora_conditional_space",
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


def __getattr__(name: str) -> object:
    # QuickTuneDashboard is exported lazily: its module imports nothing heavy at import time, but
    # the [dashboard] extra (plotly, optuna-dashboard) is optional and must not be needed here.
    if name == "QuickTuneDashboard":
        from optuna_quicktune.dashboard import QuickTuneDashboard

        return QuickTuneDashboard
    raise AttributeError(f"module 'optuna_quicktune' has no attribute {name!r}")


__all__ += ["QuickTuneDashboard"]
