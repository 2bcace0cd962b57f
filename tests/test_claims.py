"""The claim protocol: workers that choose the same action at once never both run it, and settle fast."""

import copy
import logging

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from optuna_quicktune import QuickTuneSampler, contract
from optuna_quicktune.claims import claim_steps, confirm_claim, conflicting_claim, write_claim
from optuna_quicktune.decision import Action
from tests.conftest import HELD_OUT


def _actions(family, n):
    configs = family.space.sample(n, seed=0)
    return [Action("new", c, family.space.config_id(c), 0.0, 1) for c in configs]


def _worker(study, trial, preferred, space, kept, attempts=16):
    """A worker as the sampler runs it: read the study, take the best action nobody else holds, claim."""
    for _ in range(attempts):
        held = {t.user_attrs.get(contract.CONFIG_ID) for t in study.get_trials() if t.number != trial.number}
        yield  # others act between this decision's read and its claim
        action = next(a for a in preferred if a.config_id not in held)
        if (yield from claim_steps(study, trial, action, {}, space)):
            kept[trial.number] = action.config_id
            return


def _run(family, schedule_seed, n_workers=3, lockstep=False):
    study = optuna.create_study(direction="maximize")
    trials = [study.ask() for _ in range(n_workers)]
    # As Optuna hands them to samplers; copies, so that a worker's writes reach others only through the storage.
    frozen = [copy.deepcopy(study._storage.get_trial(t._trial_id)) for t in trials]  # noqa: SLF001
    preferred = _actions(family, 12)
    kept: dict[int, str] = {}
    workers = {f.number: _worker(study, f, preferred, family.space, kept) for f in frozen}
    rng = np.random.default_rng(schedule_seed)
    steps = 0
    while workers:
        order = sorted(workers) if lockstep else [int(rng.choice(sorted(workers)))]
        for n in order:
            try:
                next(workers[n])
            except StopIteration:
                del workers[n]
        steps += 1
    return kept, steps


@pytest.mark.parametrize("seed", range(60))
def test_no_two_workers_keep_the_same_action_in_any_order(family, seed):
    kept, _ = _run(family, seed, n_workers=2 + seed % 3)
    assert len(kept) == 2 + seed % 3, "every worker ends with an action"
    assert len(set(kept.values())) == len(kept), kept


def test_workers_in_lockstep_settle_and_lower_numbers_get_better_actions(family):
    # Every worker reads, claims and checks at the same moments. Under the rule "whoever sees a
    # rival yields" all of them stepped back, chose the same next action and stepped back again,
    # for as long as the lockstep lasted. Now each round of claims settles the lowest contender.
    n = 4
    kept, steps = _run(family, 0, n_workers=n, lockstep=True)
    preferred = _actions(family, 12)
    assert [kept[k] for k in range(n)] == [a.config_id for a in preferred[:n]]
    assert steps <= 5 * n  # a decision and four storage steps per round of claims


def test_phases_yield_to_lower_numbers_and_to_confirmed_claims(family):
    study = optuna.create_study(direction="maximize")
    low, high = (study._storage.get_trial(study.ask()._trial_id) for _ in range(2))  # noqa: SLF001
    x = _actions(family, 1)[0]
    trials = lambda: study.get_trials(deepcopy=False)  # noqa: E731
    write_claim(study, high, x, {})
    # A tentative claim of a higher trial does not stop a lower one; a confirmed one does.
    assert not conflicting_claim(trials(), low.number, x.config_id, None, family.space)
    confirm_claim(study, high)
    assert conflicting_claim(trials(), low.number, x.config_id, None, family.space)
    # After confirming, only a lower trial's claim makes a trial step back.
    write_claim(study, low, x, {})
    assert conflicting_claim(trials(), high.number, x.config_id, None, family.space, confirmed=True)
    assert not conflicting_claim(trials(), low.number, x.config_id, None, family.space, confirmed=True)
    # An enqueued or finished trial holding the configuration is always a rival.
    study.enqueue_trial(x.config, user_attrs={contract.CONFIG_ID: x.config_id})
    assert conflicting_claim(trials(), high.number + 5, x.config_id, None, family.space)


def test_a_trial_that_never_wins_a_claim_runs_a_random_configuration(family, surrogate, monkeypatch, caplog):
    # An adversarial schedule in which a rival always holds the chosen action by the time of the
    # check: the trial must not keep a claim that another trial holds.
    import optuna_quicktune.sampler as sampler_module

    sampler = QuickTuneSampler(surrogate, metafeatures=family.tasks[HELD_OUT].metafeatures, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first = study.ask()
    family.space.suggest(first)
    study.tell(first, 0.5)
    chosen = sampler.rank_actions(study, limit=1)[0].config_id
    monkeypatch.setattr(sampler_module, "claim", lambda *a, **k: False)
    with caplog.at_level(logging.WARNING, logger="optuna_quicktune.sampler"):
        trial = study.ask()
    assert "random configuration" in caplog.text
    params = family.space.suggest(trial)
    cid = trial.user_attrs[contract.CONFIG_ID]
    assert cid == family.space.config_id(params) and cid not in (chosen, study.trials[0].user_attrs[contract.CONFIG_ID])
    assert trial.user_attrs[contract.PREDICTED]["source"] == "random"
    study.tell(trial, 0.4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
