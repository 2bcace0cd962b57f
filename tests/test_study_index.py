"""The head index answers the decision's questions as a walk over every trial would."""

from __future__ import annotations

import dataclasses

import optuna

from optuna_quicktune import contract
from optuna_quicktune.study_state import StudyState


def _answers(st: StudyState, sign: float) -> dict:
    out = {
        "resumable": [v.number for v in st.resumable()],
        "best": [v.number for v in st.best_runs(3)],
        "used": {n: st.used_config_ids(exclude=n) for n in [None, *st.trials]},
        "started": {n: st.n_started(exclude=n) for n in [None, *st.trials]},
        "leads": {(n, s): st.leads(n, s, sign) for n, v in st.trials.items() for s in range(1, len(v.prefix) + 1)},
        "scorable": {(f, n): _scorable(st, f, n) for f in (2, 4, 10) for n in [None, *st.trials]},
    }
    return out


def _scorable(st: StudyState, fmax: int, exclude: int | None) -> tuple:
    views, names = st.scorable_paused(fmax, exclude)
    assert list(names) == [(v.number, len(v.prefix)) for v in views]
    return tuple(v.number for v in views), tuple(names)


def _add(study, space, dists, config, values, state, **attrs):
    user = {contract.CONFIG_ID: space.config_id(config), **attrs}
    study.add_trial(optuna.trial.create_trial(
        params=config, distributions=dists, state=state, intermediate_values=values, user_attrs=user,
        value=list(values.values())[-1] if state == optuna.trial.TrialState.COMPLETE else None,
    ))


def test_head_index_equals_the_full_walk_as_the_study_grows(family):
    """Chains whose continuation falls below its parent's last score (the ancestor must not count
    against it), paused runs resumed later, a running trial after the head, both directions."""
    space, dists = family.space, dict(family.space.distributions)
    configs = space.sample(6, 11)
    P, C = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE
    paused = {contract.PAUSED: True}
    for direction, sign in (("maximize", 1.0), ("minimize", -1.0)):
        study = optuna.create_study(direction=direction)
        memo: dict = {}
        steps = [
            lambda: _add(study, space, dists, configs[0], {1: 0.5, 2: 0.6}, P, **paused, **{contract.CHECKPOINT: "a"}),
            lambda: _add(study, space, dists, configs[1], {1: 0.4, 2: 0.5, 3: 0.52}, C),
            lambda: _add(study, space, dists, configs[2], {1: 0.2}, P, **paused, **{contract.CHECKPOINT: "b"}),
            # Resumes trial 0 and dips below its last score at step 3.
            lambda: _add(study, space, dists, configs[0], {3: 0.57, 4: 0.59}, P, **paused,
                         **{contract.CHECKPOINT: "c", contract.RESUME_OF: 0}),
            lambda: _add(study, space, dists, configs[3], {1: float("nan"), 2: 0.45}, C),
            lambda: _add(study, space, dists, configs[2], {2: 0.3, 3: 0.7}, C, **{contract.RESUME_OF: 2}),
        ]
        for i, step in enumerate(steps):
            step()
            trials = study.get_trials(deepcopy=False)
            got = StudyState.build(trials, space, sign, memo)
            fresh = StudyState.build(trials, space, sign)
            walk = dataclasses.replace(fresh, index=None)
            assert _answers(got, sign) == _answers(walk, sign) == _answers(fresh, sign)
            if i == 3 and sign > 0:  # the dip: 0.57 beats trial 1's 0.52 though its own parent ended at 0.6
                assert got.leads(3, 3, sign) is True
        # A running trial after the head resumes trial 3 (a paused run in the head).
        running = study.ask()
        running.set_user_attr(contract.RESUME_OF, 3)
        running.set_user_attr(contract.CONFIG_ID, space.config_id(configs[0]))
        running.report(0.58, 5)
        got = StudyState.build(study.get_trials(deepcopy=False), space, sign, memo)
        walk = dataclasses.replace(StudyState.build(study.get_trials(deepcopy=False), space, sign), index=None)
        assert _answers(got, sign) == _answers(walk, sign)
        assert 3 not in [v.number for v in got.resumable()]
