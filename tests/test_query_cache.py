"""Incremental predictions (query states, the surrogate's query cache) and the memoised study state."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import optuna
import pytest
import torch

from optuna_quicktune import contract
from optuna_quicktune.claims import conflicting_claim
from optuna_quicktune.study_state import StudyState
from optuna_quicktune.surrogate.gp import ExactGP


def test_query_state_follows_extensions_exactly():
    torch.manual_seed(0)
    gp = ExactGP("matern52")
    Z, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    post = gp.condition(Z, y)
    q = torch.randn(25, 3, dtype=torch.float64)
    state = post.query(q)
    for m in (1, 3, 2):
        post = post.extended(torch.randn(m, 3, dtype=torch.float64), torch.randn(m, dtype=torch.float64))
    advanced = post.advance(state)
    assert advanced is not None and advanced.uid == post.uid
    fresh = gp.condition(post.Z, post.y).query(q)  # refactorised from scratch
    np.testing.assert_allclose(advanced.mean.numpy(), fresh.mean.numpy(), atol=1e-10)
    np.testing.assert_allclose(advanced.var.numpy(), fresh.var.numpy(), atol=1e-10)
    # A posterior outside the lineage (another context) cannot advance the state: recompute.
    assert gp.condition(Z[:10], y[:10]).advance(state) is None


def test_cached_predictions_equal_fresh_ones_across_views(family, surrogate):
    task = family.tasks[-1]
    space = surrogate.space
    kw = dict(fidelity_max=surrogate.max_fidelity, metafeatures=task.metafeatures)
    X = space.encode_many(space.sample(30, 5))
    prefixes = [np.linspace(0.1, 0.3, k) for k in [0, 1, 2] * 10]
    view = surrogate
    for step in range(3):
        obs = space.encode_many(space.sample(2, 100 + step))
        view = view.conditioned_on(obs, np.array([1, 2]), np.array([0.3, 0.5]), **kw)
        # Named pool (query_key) and row-keyed prefixes, both cached across the views.
        pool = view.predict(X, None, surrogate.max_fidelity, query_key=("pool", "test"), **kw)
        rows = view.predict(X, prefixes, surrogate.max_fidelity, **kw)
        ref = copy.deepcopy(view)
        ref.performance.queries.clear()
        ref.performance.invalidate()
        for got, want in ((pool, ref.predict(X, None, surrogate.max_fidelity, **kw)),
                          (rows, ref.predict(X, prefixes, surrogate.max_fidelity, **kw))):
            np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
    assert len(surrogate.performance.queries) > 0  # the views share the base's cache
    assert len(copy.deepcopy(surrogate).performance.queries) == 0  # a copy (other weights later) shares nothing


def test_rows_added_one_at_a_time_stay_exact_in_few_blocks(family, surrogate):
    """A long study adds a paused run (one row) per trial: the row cache keeps O(log q) blocks,
    each advanced on its own, and its predictions equal fresh ones."""
    task = family.tasks[-1]
    space = surrogate.space
    kw = dict(fidelity_max=surrogate.max_fidelity, metafeatures=task.metafeatures)
    X = space.encode_many(space.sample(40, 7))
    prefixes = [np.linspace(0.1, 0.3, 1 + i % 4) for i in range(40)]
    view = surrogate.copy()
    for i in range(1, 41):
        if i % 5 == 0:  # a run ended: a new view extends the last
            obs = space.encode_many(space.sample(1, 200 + i))
            view = view.conditioned_on(obs, np.array([2]), np.array([0.4]), **kw)
        got = view.predict(X[:i], prefixes[:i], surrogate.max_fidelity, **kw)
    state, _ = next(reversed(view.performance.queries._states.values()))  # noqa: SLF001
    assert len(state) == 40 and [len(b) for b in state.blocks] == [32, 8]  # like 40 in binary
    ref = copy.deepcopy(view)
    ref.performance.invalidate()
    want = ref.predict(X, prefixes, surrogate.max_fidelity, **kw)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


def _chain_study(family):
    space = family.space
    dists = dict(space.distributions)
    configs = space.sample(4, 7)
    trials = []
    for i, c in enumerate(configs):
        trials.append(optuna.trial.create_trial(
            params=c, distributions=dists, state=optuna.trial.TrialState.PRUNED,
            intermediate_values={1: 0.1 * i, 2: 0.1 * i + 0.05},
            user_attrs={contract.CONFIG_ID: space.config_id(c), contract.CHECKPOINT: f"ck{i}", contract.PAUSED: True},
        ))
    # Trial 4 resumes trial 0 and reports steps 3-4.
    trials.append(optuna.trial.create_trial(
        params=configs[0], distributions=dists, state=optuna.trial.TrialState.COMPLETE, value=0.4,
        intermediate_values={3: 0.3, 4: 0.4},
        user_attrs={contract.CONFIG_ID: space.config_id(configs[0]), contract.RESUME_OF: 0},
    ))
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


def _same(a: StudyState, b: StudyState) -> None:
    assert a.trials.keys() == b.trials.keys() and a.best_at == b.best_at
    assert [v.number for v in a.ends] == [v.number for v in b.ends] and a.end_points == b.end_points
    for n in a.trials:
        va, vb = a.trials[n], b.trials[n]
        np.testing.assert_array_equal(va.prefix, vb.prefix)
        assert (va.paused, va.continued, va.config_id, va.resume_of, va.in_space) == (
            vb.paused, vb.continued, vb.config_id, vb.resume_of, vb.in_space)
    # The head index's answers equal the walk over every trial (index=None), for every question.
    walk = dataclasses.replace(b, index=None)
    for st in (a, b):
        assert [v.number for v in st.resumable()] == [v.number for v in walk.resumable()]
        assert [v.number for v in st.best_runs(3)] == [v.number for v in walk.best_runs(3)]
        for n in [None, *a.trials]:
            assert st.used_config_ids(exclude=n) == walk.used_config_ids(exclude=n)
            assert st.n_started(exclude=n) == walk.n_started(exclude=n)
        for n, v in a.trials.items():
            for step in range(1, len(v.prefix) + 1):
                assert st.leads(n, step, 1.0) == walk.leads(n, step, 1.0), (n, step)


def test_memoised_study_state_equals_a_fresh_build(family):
    study = _chain_study(family)
    memo: dict = {}
    trials = study.get_trials(deepcopy=False)
    first = StudyState.build(trials, family.space, 1.0, memo)
    _same(first, StudyState.build(trials, family.space, 1.0))
    assert first.trials[0].continued and not first.trials[1].continued
    np.testing.assert_allclose(first.trials[4].prefix, [0.0, 0.05, 0.3, 0.4])
    # Views are shared between builds (memoised), so nobody may change one.
    with pytest.raises(Exception):
        first.trials[2].continued = True  # type: ignore[misc]
    _same(StudyState.build(trials, family.space, 1.0, memo), StudyState.build(trials, family.space, 1.0))
    # A running trial is never memoised: its next report shows in the next build.
    running = study.ask()
    running.report(0.2, 1)
    assert len(StudyState.build(study.get_trials(deepcopy=False), family.space, 1.0, memo).trials[5].prefix) == 1
    running.report(0.25, 2)
    again = StudyState.build(study.get_trials(deepcopy=False), family.space, 1.0, memo)
    np.testing.assert_allclose(again.trials[5].prefix, [0.2, 0.25])
    _same(again, StudyState.build(study.get_trials(deepcopy=False), family.space, 1.0))


def test_the_reused_head_of_finished_trials_equals_a_fresh_build(family):
    """The memo keeps the state of the leading finished trials; later trials, a resumption of a
    head trial, another study read with the same memo: each build equals one without it."""
    study = _chain_study(family)
    memo: dict = {}
    fresh = lambda s: StudyState.build(s.get_trials(deepcopy=False), family.space, 1.0)  # noqa: E731
    memoised = lambda s: StudyState.build(s.get_trials(deepcopy=False), family.space, 1.0, memo)  # noqa: E731
    _same(memoised(study), fresh(study))
    assert [v.number for v in fresh(study).ends] == [0, 1, 2, 3, 4]
    running = study.ask()  # trial 5 stops the head; trial 6 finishes after it
    study.tell(study.ask(), 0.9)
    running.report(0.3, 1)
    _same(memoised(study), fresh(study))
    # Trial 7 resumes trial 2 (in the head): the head's own view of trial 2 stays as it was.
    resume = study.ask()
    resume.set_user_attr(contract.RESUME_OF, 2)
    resume.report(0.5, 3)
    got = memoised(study)
    _same(got, fresh(study))
    assert got.trials[2].continued and not memo[("head", family.space.fingerprint, 1.0)].trials[2].continued
    study.tell(running, 0.35)
    study.tell(resume, 0.5)
    _same(memoised(study), fresh(study))
    assert len(memo[("head", family.space.fingerprint, 1.0)].ids) == 8
    # Another study with the same trial numbers and ids (its own in-memory storage) but other
    # values: its trials are not mistaken for the head of the first.
    memo.clear()
    first = _chain_study(family)
    memoised(first)
    other = optuna.create_study(direction="maximize")
    other.add_trials([optuna.trial.create_trial(
        params=t.params, distributions=t.distributions, state=t.state, value=t.value, user_attrs=t.user_attrs,
        intermediate_values={k: v - 0.01 for k, v in t.intermediate_values.items()},
    ) for t in first.get_trials()])
    assert [t._trial_id for t in other.get_trials()] == [t._trial_id for t in first.get_trials()]  # noqa: SLF001
    _same(memoised(other), fresh(other))
    assert memo[("head", family.space.fingerprint, 1.0)].ids != tuple(
        (t._trial_id, t.datetime_start) for t in first.get_trials())  # noqa: SLF001


@pytest.mark.parametrize("resume_of, config_of, expected", [
    (None, 1, True),    # trial 1 started that configuration
    (None, 0, False),   # trial 4 holds config 0 but as a continuation, and trial 0 is "us"
    (0, None, True),    # trial 4 already continues trial 0
    (2, None, False),   # nobody continues trial 2
])
def test_conflicting_claim_reads_claims_of_other_trials(family, resume_of, config_of, expected):
    study = _chain_study(family)
    trials = study.get_trials(deepcopy=False)
    cid = None if config_of is None else trials[config_of].user_attrs[contract.CONFIG_ID]
    assert conflicting_claim(trials, 0 if resume_of is None else 99, cid or "", resume_of, family.space) is expected


def test_task_effect_is_exact_conditioning_with_a_shared_task_offset():
    """Study rows and prefix-free queries share an offset b ~ N(0, tau2); context rows do not."""
    torch.manual_seed(1)
    gp = ExactGP()
    n_ctx, tau2 = 30, 0.7
    Zc, yc = torch.randn(n_ctx, 3, dtype=torch.float64), torch.randn(n_ctx, dtype=torch.float64)
    zs, ys = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64) - 2.0
    q = torch.randn(6, 3, dtype=torch.float64)
    target = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    post = gp.condition(Zc, yc).with_task_effect(tau2)
    early = post.query(q, target)
    post = post.extended(zs[:2], ys[:2]).extended(zs[2:], ys[2:])
    got = post.advance(early)
    # Reference: one exact GP on all rows with k'(u, v) = k(u, v) + tau2 for target pairs.
    with torch.no_grad():
        Z = torch.cat([Zc, zs])
        t_rows = torch.cat([torch.zeros(n_ctx), torch.ones(4)]).double()
        K = gp.covariance(Z, Z) + tau2 * torch.outer(t_rows, t_rows) + (gp.noise + 1e-5) * torch.eye(len(Z), dtype=Z.dtype)
        kq = gp.covariance(q, Z) + tau2 * torch.outer(target, t_rows)
        y = torch.cat([yc, ys])
        mean = gp.mean + kq @ torch.linalg.solve(K, y - gp.mean)
        var = gp.outputscale + tau2 * target - (kq @ torch.linalg.solve(K, kq.T)).diagonal() + gp.noise
    np.testing.assert_allclose(got.mean.numpy(), mean.numpy(), atol=1e-8)
    np.testing.assert_allclose(got.var.numpy(), var.numpy(), atol=1e-8)
    np.testing.assert_allclose(post.query(q, target).mean.numpy(), mean.numpy(), atol=1e-8)
    # Low study scores pull every prefix-free prediction down, even far from the study's points.
    plain = gp.condition(Zc, yc).extended(zs, ys).query(q, target)
    assert float((got.mean - plain.mean)[target == 1].max()) < 0.0
    with pytest.raises(ValueError):
        post.with_task_effect(0.1)  # only on the context posterior


def test_meta_training_estimates_the_task_effect(train_md):
    from optuna_quicktune.surrogate import meta_train

    with_effect = meta_train(train_md, steps=60, seed=0, task_effect=True)
    without = meta_train(train_md, steps=60, seed=0)  # off by default
    assert with_effect.performance.task_effect > 0.0 and without.performance.task_effect == 0.0
    assert with_effect.info["validation"]["task_effect"] == with_effect.performance.task_effect


def test_query_cache_is_bounded_and_still_exact(family, surrogate):
    from optuna_quicktune.surrogate.query_cache import QueryCache

    task = family.tasks[-1]
    kw = dict(fidelity_max=surrogate.max_fidelity, metafeatures=task.metafeatures)
    space = surrogate.space
    perf = surrogate.performance
    small = QueryCache(max_rows=10, max_states=2)
    post = perf.posterior()
    for seed in range(4):  # four requests of 8 new rows each: the cache must drop old rows
        X = space.encode_many(space.sample(8, 200 + seed))
        b = surrogate.batch(X, None, surrogate.max_fidelity, **kw)
        mean, var = small.predict(post, b, perf.embed)
        want_mean, want_var = post.predict(perf.embed(b))
        np.testing.assert_allclose(mean.numpy(), want_mean.numpy(), atol=1e-10)
        np.testing.assert_allclose(var.numpy(), want_var.numpy(), atol=1e-10)
        assert len(small) <= 10 + 8
    small.clear()
    assert len(small) == 0


def test_uncached_predictions_equal_cached_ones_and_leave_the_cache_alone(family, surrogate):
    task = family.tasks[-1]
    kw = dict(fidelity_max=surrogate.max_fidelity, metafeatures=task.metafeatures)
    view = surrogate.conditioned_on(surrogate.space.encode_many(surrogate.space.sample(2, 7)), np.array([1, 2]),
                                    np.array([0.3, 0.5]), **kw)
    X = view.space.encode_many(view.space.sample(5, 8))
    prefixes = [np.linspace(0.1, 0.4, k) for k in (1, 2, 3, 4, 5)]
    before = len(view.performance.queries)
    once = view.predict(X, prefixes, surrogate.max_fidelity, cache=False, **kw)
    assert len(view.performance.queries) == before
    cached = view.predict(X, prefixes, surrogate.max_fidelity, **kw)
    np.testing.assert_allclose(once[0], cached[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(once[1], cached[1], rtol=1e-6, atol=1e-6)
