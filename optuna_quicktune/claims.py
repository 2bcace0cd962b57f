"""How workers that share a study agree on who runs what: the claim protocol.

A trial *holds* an action when its ``quicktune.config_id`` names the configuration (a fresh run)
or its ``quicktune.resume_of`` names the paused trial it continues. Workers decide from the same
storage at the same moment and often pick the same action, so a claim goes in two phases:

1. The trial marks its claim *tentative* (system attribute ``quicktune.claim_tentative``), writes
   it, and re-reads the study. It steps back if another trial holds the same action and either
   has a lower number or is not tentative (a confirmed claim, a finished or enqueued trial, or a
   trial written by a version without this protocol).
2. Otherwise it confirms (``tentative = False``) and re-reads once more. It steps back if a
   lower-numbered trial holds the action by now.

Two trials can never both keep an action. If the higher-numbered one kept it, its second read came
before the lower one's claim was written, so the lower one's first read, later still, saw a
confirmed claim and stepped back. And when two trials claim at the same moment, the lower number
wins deterministically, instead of both stepping back and choosing the same next action again
(the lockstep that an earlier "whoever sees the other yields" rule fell into under load).

The claim's other attributes are what the objective reads (the resumption and checkpoint) and what
the dashboard shows (the prediction).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import contract
from optuna_quicktune.decision import Action
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.study_state import trial_config_id

__all__ = [
    "claim", "claim_steps", "write_claim", "confirm_claim", "conflicting_claim",
    "set_user_attr", "set_system_attr",
]


def claim(study: Study, trial: FrozenTrial, action: Action, record: dict[str, Any], space: SearchSpace) -> bool:
    """Run the two-phase claim of ``action`` for ``trial``; False when it must step back."""
    steps = claim_steps(study, trial, action, record, space)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return bool(done.value)


def claim_steps(
    study: Study, trial: FrozenTrial, action: Action, record: dict[str, Any], space: SearchSpace
) -> Generator[None, None, bool]:
    """:func:`claim` as a generator that pauses after each write and read of the storage.

    Other workers may act at any of these points; tests drive several claims step by step in every
    order to check that no two keep the same action.
    """
    write_claim(study, trial, action, record)
    yield
    fresh = study.get_trials(deepcopy=False)
    yield
    if conflicting_claim(fresh, trial.number, action.config_id, action.resume_of, space):
        return False
    confirm_claim(study, trial)
    yield
    fresh = study.get_trials(deepcopy=False)
    yield
    if conflicting_claim(fresh, trial.number, action.config_id, action.resume_of, space, confirmed=True):
        confirm_claim(study, trial, confirmed=False)
        return False
    return True


def write_claim(study: Study, trial: FrozenTrial, action: Action, record: dict[str, Any]) -> None:
    """Write ``action`` (its parameters, configuration id, prediction and resumption) into ``trial``, tentatively."""
    set_system_attr(study, trial, contract.TENTATIVE, True)  # before the claim: never a confirmed new claim
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


def confirm_claim(study: Study, trial: FrozenTrial, confirmed: bool = True) -> None:
    """Mark the trial's claim confirmed (phase 2), or tentative again when it steps back after confirming."""
    set_system_attr(study, trial, contract.TENTATIVE, not confirmed)


def conflicting_claim(
    trials: Sequence[FrozenTrial], number: int, config_id: str, resume_of: int | None, space: SearchSpace,
    *, confirmed: bool = False,
) -> bool:
    """Whether trial ``number`` must step back from its claim (read on freshly read ``trials``).

    ``confirmed=False``: phase 1 (yield to a lower-numbered holder or to any confirmed one);
    ``confirmed=True``: phase 2 (yield to a lower-numbered holder only). Reads the attributes
    directly: no state is built for this check.
    """
    # Most trials of a long study hold something else, told by one stored attribute: only the
    # others are read in full (this runs over every trial twice per claim).
    if resume_of is None:
        trials = [t for t in trials if t.user_attrs.get(contract.CONFIG_ID) in (config_id, None)]
    else:
        trials = [t for t in trials if t.user_attrs.get(contract.RESUME_OF) is not None]
    for t in trials:
        if t.number == number or not _holds(t, config_id, resume_of, space):
            continue
        if t.number < number or not (confirmed or _tentative(t)):
            return True
    return False


def _holds(t: FrozenTrial, config_id: str, resume_of: int | None, space: SearchSpace) -> bool:
    if resume_of is not None:
        return contract.read_resume_of(t) == resume_of
    stored = t.user_attrs.get(contract.CONFIG_ID)
    if stored is not None and stored != config_id:
        return False
    return contract.read_resume_of(t) is None and (stored if stored is not None else trial_config_id(t, space)) == config_id


def _tentative(t: FrozenTrial) -> bool:
    return t.state == TrialState.RUNNING and t.system_attrs.get(contract.TENTATIVE) is True


def set_user_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    # Samplers get a FrozenTrial; like Optuna's own samplers we write through the study's storage,
    # and keep the frozen copy in step so that the running Trial sees the value too.
    study._storage.set_trial_user_attr(trial._trial_id, key, value)  # noqa: SLF001
    trial.user_attrs[key] = value


def set_system_attr(study: Study, trial: FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)  # noqa: SLF001
    trial.system_attrs[key] = value
