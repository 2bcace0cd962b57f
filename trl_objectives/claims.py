"""Several processes on one storage: which configurations are done or taken, and who trains a contested one.

Why a module of its own: ``quicktune collect`` may run in several processes at once (one GPU fits
several small runs), and each finished run costs real compute; so every process must see the same
answer to "is this configuration done, or being run?", and two processes that start the same
configuration at the same moment must agree, without a lock server, on which of them trains it.
The storage is the only shared state: a trial's state, number and ``quicktune.config_id`` decide.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from optuna_quicktune import contract

_logger = logging.getLogger(__name__)

__all__ = ["config_states", "settles", "ClaimedRun"]


def settles(trial: Any) -> bool:
    """Whether ``trial`` is its configuration's result, so the configuration needs no other run.

    COMPLETE, or FAIL with a reason that belongs to the configuration (it diverged, it ran out of
    memory). A trial that ``quicktune recover`` failed because its worker died
    (``quicktune.recovered_by``) says nothing about its configuration, so that one runs again:
    otherwise recovering a collection would leave a permanent hole in its table. The one rule for
    :func:`config_states` (what collect picks) and :class:`ClaimedRun` (what a trial yields to):
    if they disagree, collect picks a configuration that every trial then refuses, forever.
    """
    import optuna

    State = optuna.trial.TrialState
    return trial.state == State.COMPLETE or (
        trial.state == State.FAIL and bool(trial.user_attrs.get(contract.FAIL_REASON))
        and not trial.user_attrs.get(contract.RECOVERED_BY)
    )


def config_states(study: Any) -> tuple[set[str], set[str]]:
    """Config ids of ``study`` that are done (see :func:`settles`) and that are RUNNING now."""
    import optuna

    done, running = set(), set()
    for t in study.get_trials(deepcopy=False):
        cid = t.user_attrs.get(contract.CONFIG_ID)
        if cid is None:
            continue
        if settles(t):
            done.add(cid)
        elif t.state == optuna.trial.TrialState.RUNNING:
            running.add(cid)
    return done, running


class ClaimedRun:
    """Runs the objective on a trial unless an earlier trial already claims its configuration.

    Claims: a trial that :func:`settles` the configuration, any other RUNNING trial, or a WAITING
    trial with a lower number. A trial writes its own claim *before* it looks at the others, so of two
    processes that start the same configuration at once at least one sees the other (whoever reads
    last); a trial that sees a rival yields. If both saw each other both yield, each after a short
    pause seeded by its trial number, so the two processes fall out of step: the configuration stays
    not done, and the next process to pick it trains it. No configuration is run twice.
    (Letting the lower trial number win was not enough: the higher one could read before the lower
    one had written its claim, and both trained.)
    """

    def __init__(self, objective: Any, ids: Sequence[str]) -> None:
        self.objective = objective
        self.index = {cid: i for i, cid in enumerate(ids)}
        self.ran = False

    def __call__(self, trial: Any) -> float:
        import optuna

        State = optuna.trial.TrialState
        cid = self.objective.space.config_id(self.objective.suggest(trial))
        trial.set_user_attr(contract.CONFIG_ID, cid)  # the claim: written before reading the others'
        for other in trial.study.get_trials(deepcopy=False):
            if other.number == trial.number or other.user_attrs.get(contract.CONFIG_ID) != cid:
                continue
            claims = settles(other) or other.state == State.RUNNING or (
                other.state == State.WAITING and other.number < trial.number)
            if claims:
                trial.set_user_attr(contract.DUPLICATE_OF, other.number)
                _logger.warning("Trial %d stops before training: trial %d (%s) already has its configuration; "
                                "Optuna marks it FAIL and this process moves on.", trial.number, other.number,
                                other.state.name)
                if other.state == State.RUNNING:  # a rival that may have yielded too: fall out of step
                    time.sleep(random.Random(trial.number).uniform(0.05, 1.0))
                return float("nan")  # FAIL, before any training
        if cid in self.index:
            trial.set_user_attr(contract.CONFIG_INDEX, self.index[cid])
        self.ran = True
        return self.objective(trial)
