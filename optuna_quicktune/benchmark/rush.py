"""RUSH's stopping rule (Zappella et al. 2021) as an Optuna pruner.

RUSH warm-starts a multi-fidelity scheduler with the best configurations of earlier tasks and uses
their scores as *hurdles*: at every rung, a later run whose score is below the best score a
warm-start run reached at that rung is stopped, whatever successive halving alone would decide. The
warm-start runs themselves are judged by successive halving only. Rungs are successive halving's:
``min_resource * reduction_factor ** k``.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner, SuccessiveHalvingPruner
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial

__all__ = ["RushPruner"]


class RushPruner(BasePruner):
    """Successive halving plus hurdles set by the first ``n_warm`` trials (the warm-start runs).

    Args:
        n_warm: The trials numbered below this are the warm-start runs (enqueued first).
        min_resource: Successive halving's first rung.
        reduction_factor: Successive halving's reduction factor (rungs grow by it).
    """

    def __init__(self, n_warm: int, *, min_resource: int = 1, reduction_factor: int = 3) -> None:
        if n_warm < 0:
            raise ValueError(f"n_warm must be >= 0, got {n_warm}.")
        self.n_warm = int(n_warm)
        self.min_resource = int(min_resource)
        self.reduction_factor = int(reduction_factor)
        self._sh = SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)

    def _is_rung(self, step: int) -> bool:
        if step < self.min_resource:
            return False
        k = math.log(step / self.min_resource, self.reduction_factor)
        return abs(k - round(k)) < 1e-9

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if trial.number >= self.n_warm and self._is_rung(step):
            sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
            mine = sign * trial.intermediate_values[step]
            warm = [
                sign * t.intermediate_values[step]
                for t in study.get_trials(deepcopy=False)
                if t.number < self.n_warm and step in t.intermediate_values
            ]
            warm = [w for w in warm if math.isfinite(w)]
            if warm and not (math.isfinite(mine) and mine >= max(warm)):
                optuna.logging.get_logger(__name__).debug(
                    f"Trial {trial.number}: below the warm-start hurdle {max(warm):.4g} at step {step}."
                )
                return True
        return self._sh.prune(study, trial)
