"""What the sampler writes into a trial when it claims an action (the storage side of a decision).

Every worker reads these attributes back to agree on who runs what (``study_state.conflicting_claim``),
the objective reads the resumption and checkpoint, and the dashboard reads the prediction.
"""

from __future__ import annotations

from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial

from optuna_quicktune import contract
from optuna_quicktune.decision import Action

__all__ = ["write_claim", "set_user_attr", "set_system_attr"]


def write_claim(study: Study, trial: FrozenTrial, action: Action, record: dict[str, Any]) -> None:
    """Write ``action`` (its parameters, configuration id, prediction and resumption) into ``trial``."""
    set_system_attr(study, trial, contract.PARAMS, dict(action.config))
    set_user_attr(study, trial, contract.CONFIG_ID, action.config_id)
    set_user_attr(study, trial, contract.PREDICTED, record)
    if action.resume_of is not None:
        set_user_attr(study, trial, contract.RESUME_OF, action.resume_of)
        set_user_attr(study, trial, contract.CHECKPOINT, action.checkpoint)
    elif trial.user_attrs.get(contract.RESUME_OF) is not None:
        # An earlier claim of this trial (a resumption another worker took) must not stay:
        # the objective would continue that checkpoint with this configuration.
        set_user_attr(study, trial, contract.RESUME_OF, None)
        set_user_attr(study, trial, contract.CHECKPOINT, None)


def set_user_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    # Samplers get a FrozenTrial; like Optuna's own samplers we write through the study's storage,
    # and keep the frozen copy in step so that the running Trial sees the value too.
    study._storage.set_trial_user_attr(trial._trial_id, key, value)  # noqa: SLF001
    trial.user_attrs[key] = value


def set_system_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)  # noqa: SLF001
    trial.system_attrs[key] = value
