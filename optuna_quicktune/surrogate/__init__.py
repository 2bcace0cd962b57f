"""Meta-learned surrogates: a deep-kernel GP for scores and a log-cost regressor for step costs."""

from optuna_quicktune.surrogate.model import CostSurrogate, PerformanceSurrogate, QuickTuneSurrogate
from optuna_quicktune.surrogate.persistence import load, save
from optuna_quicktune.surrogate.training import fine_tune, meta_train

__all__ = [
    "PerformanceSurrogate",
    "CostSurrogate",
    "QuickTuneSurrogate",
    "meta_train",
    "fine_tune",
    "save",
    "load",
]
