"""Paused runs' inputs kept across decisions (optuna_quicktune.paused_rows)."""

from __future__ import annotations

import threading

import numpy as np
import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.paused_rows import PausedInputs, PausedRows
from optuna_quicktune.sampler import QuickTuneSampler
from optuna_quicktune.study_state import TrialView


def _paused(space, dists, config, curve):
    return optuna.trial.create_trial(
        params=config, distributions=dists, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={i + 1: v for i, v in enumerate(curve)},
        user_attrs={contract.CONFIG_ID: space.config_id(config), contract.CHECKPOINT: "ck", contract.PAUSED: True},
    )


def _direct(d, views):
    """Resumption scores computed from scratch: every input built again, no cache of any kind."""
    X = d.encode(views)
    prefixes = [v.prefix for v in views]
    return d.predict_horizon(X, prefixes, steps=d.step_costs(X), cache=False)


@pytest.mark.parametrize("horizon", ["final", "next"])
def test_resumption_scores_equal_a_fresh_computation_as_the_study_grows(family, surrogate, horizon):
    task = family.tasks[-1]
    space = surrogate.space
    dists = dict(space.distributions)
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=0, horizon=horizon)
    configs = space.sample(24, 3)
    for round_ in range(4):  # each round: new paused runs and one finished run (a new view)
        for c in configs[6 * round_: 6 * round_ + 5]:
            study.add_trial(_paused(space, dists, c, rng.uniform(0.2, 0.6, int(rng.integers(1, 4)))))
        c = configs[6 * round_ + 5]
        study.add_trial(optuna.trial.create_trial(
            params=c, distributions=dists, state=optuna.trial.TrialState.COMPLETE, value=0.5,
            intermediate_values={i + 1: 0.3 + 0.05 * i for i in range(surrogate.max_fidelity)},
            user_attrs={contract.CONFIG_ID: space.config_id(c)}))
        d = sampler.decision(study)
        views = [v for v in d.state.resumable() if len(v.prefix) < d.fidelity_max]
        assert len(views) == 5 * (round_ + 1)
        got = d.continuations(views, kind="resume")
        mean, std, cost = _direct(d, views)
        inc = d.state.incumbent(d.fidelity_max if horizon == "final" else 1)
        assert np.isfinite(inc)
        for a, m, s in zip(got, mean, std):
            if horizon == "final":
                np.testing.assert_allclose(d.sign * a.final_mean, m, rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(a.final_std, s, rtol=1e-6, atol=1e-6)
        scores = np.array([a.score for a in got])
        want = d._continuation_scores(views, "continue")[0]  # the uncached path (a running trial's)
        np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-9)
        # The same views in another order get the same scores, row by row.
        back = d.continuations(views[::-1], kind="resume")
        np.testing.assert_allclose([a.score for a in back], scores[::-1], rtol=1e-12)


def _fake_inputs(views):
    from optuna_quicktune.surrogate.preprocessing import Batch

    q = len(views)
    n = np.array([v.number for v in views], dtype=np.float64)
    b = Batch.without_curve(n[:, None], np.ones(q), np.ones(q), np.zeros((q, 0)))
    return PausedInputs(b, [bytes([v.number]) for v in views], np.full(q, 3), n * 10.0)


def _views(numbers):
    return [TrialView(number=k, state=optuna.trial.TrialState.PRUNED, params={}, config_id=None,
                      prefix=np.zeros(1 + k % 2), resume_of=None, paused=True) for k in numbers]


def test_rows_are_built_once_and_the_table_stays_bounded():
    built: list[int] = []

    def build(views):
        built.extend(v.number for v in views)
        return _fake_inputs(views)

    table = PausedRows(max_extra=4)
    rows, name = table.lookup(_views([3, 1, 2]), build)
    assert built == [3, 1, 2] and rows.cost.tolist() == [30.0, 10.0, 20.0]
    token = table.token
    rows, name2 = table.lookup(_views([2, 5, 3]), build)
    assert built == [3, 1, 2, 5] and table.token == token and name2 != name  # only the new run was built
    assert rows.cost.tolist() == [20.0, 50.0, 30.0] and rows.keys == [b"\x02", b"\x05", b"\x03"]
    assert rows.batch.x[:, 0].tolist() == [2.0, 5.0, 3.0]
    assert table.lookup(_views([2, 5, 3]), build)[1] == name2  # the same rows, the same name
    # Past max_extra rows beyond the request, the table keeps the request's rows only and
    # renumbers them under a new token, so no prediction keyed by the old names is read again.
    table.lookup(_views([9, 8, 7, 6]), build)
    assert len(table) == 8 and table.token == token
    rows, name = table.lookup(_views([6, 10]), build)
    assert len(table) == 2 and table.token != token and name[0] == table.token
    assert rows.cost.tolist() == [60.0, 100.0]
    assert table.lookup(_views([10]), build)[0].cost.tolist() == [100.0] and built[-1] == 10


def test_threads_share_one_table():
    """The decision's cache (and so one table) is shared by the threads of one process."""
    table = PausedRows(max_extra=8)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                numbers = [int(k) for k in rng.choice(200, size=int(rng.integers(1, 30)), replace=False)]
                rows, _ = table.lookup(_views(numbers), _fake_inputs)
                assert rows.cost.tolist() == [10.0 * k for k in numbers]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
