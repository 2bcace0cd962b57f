"""Transfer pieces of the decision core: the fair meta-table, the portfolio, the decision object,
the surrogate's own conditioning, and the portfolio baselines of the benchmark."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest

from optuna_quicktune import QuickTuneSampler
from optuna_quicktune.benchmark import methods as bm
from optuna_quicktune.benchmark.replay import Session
from optuna_quicktune.benchmark.runner import portfolio_table
from optuna_quicktune.benchmark.rush import RushPruner
from optuna_quicktune.benchmark.scenarios import TableScenario
from optuna_quicktune.decision import Decision, PredictionCache
from optuna_quicktune.portfolio import PortfolioTable, greedy_order, metafeature_weights
from optuna_quicktune.pruner import QuickTunePruner, is_rung

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _ids(space, X):
    return {space.config_id(space.decode(x)) for x in X}


def test_fair_meta_table_gives_portfolio_and_surrogate_the_same_configurations(train_md, surrogate):
    table = portfolio_table(train_md)
    md_ids = {train_md.space.config_id(r.config) for r in train_md.runs}
    assert _ids(train_md.space, table.X) == md_ids
    # The surrogate carries the same table it was meta-trained on (what a user with the storage has).
    assert surrogate.portfolio is not None and surrogate.portfolio.tasks == table.tasks
    assert _ids(surrogate.space, surrogate.portfolio.X) == md_ids
    np.testing.assert_allclose(surrogate.portfolio.R, table.R)
    # A fold's portfolio only chooses among those configurations.
    fold = table.without_tasks([table.tasks[0]])
    assert table.tasks[0] not in fold.tasks and len(fold.tasks) == len(table.tasks) - 1
    assert {train_md.space.config_id(c) for c in fold.configs(train_md.space)} <= md_ids


def test_portfolio_table_survives_save_and_load(surrogate, tmp_path):
    from optuna_quicktune.surrogate import load

    surrogate.save(str(tmp_path / "s"))
    back = load(str(tmp_path / "s"))
    assert back.portfolio is not None
    np.testing.assert_array_equal(back.portfolio.R, surrogate.portfolio.R)
    assert back.portfolio.order(size=5) == surrogate.portfolio.order(size=5)


def test_dataset_aware_weights_favour_similar_tasks():
    # Three tasks, three candidates: each task's best is its own candidate.
    R = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    mf = np.array([[10.0, 1.0], [1000.0, 50.0], [100000.0, 3.0]])
    table = PortfolioTable(X=np.eye(3), R=R, metafeatures=mf, metafeature_names=("a", "b"), tasks=("t0", "t1", "t2"))
    assert table.order(size=1) == [2]  # uniform weights: candidate 2 has the lowest mean regret
    w = table.weights({"a": 12.0, "b": 1.0})  # a dataset like t0
    assert np.argmax(w) == 0 and w[0] > w[1] and w[0] > w[2]
    assert table.order(np.array([1.0, 0.0, 0.0]), size=1) == [0]  # all weight on t0: t0's best
    assert np.allclose(table.weights(None), 1.0)
    # Unknown (NaN) entries earn no credit.
    assert greedy_order(np.array([[np.nan, 0.2], [np.nan, 0.2]]), np.ones(2), 1) == [1]
    assert table.task_bests() == [2, 0, 1] or sorted(table.task_bests()) == [0, 1, 2]
    assert metafeature_weights(mf, mf[1]).argmax() == 1


def test_first_proposal_is_the_portfolios_first_member(family, surrogate):
    task = family.tasks[-1]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=3)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    decision = sampler.decision(study)
    assert isinstance(decision, Decision) and decision.portfolio_order
    trial = study.ask()
    assert trial.user_attrs["quicktune.config_id"] == decision.portfolio_order[0]
    off = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=3, portfolio_first=0)
    assert off.decision(optuna.create_study(direction="maximize", sampler=off)).portfolio_order == ()


def test_pruner_and_dashboard_read_the_samplers_decision(family, surrogate, monkeypatch):
    from optuna_quicktune.dashboard import portfolio_rows

    task = family.tasks[-1]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=1, n_candidates=100)
    pruner = QuickTunePruner(sampler, rungs="every", keep_leader=False)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    from optuna_quicktune.simulate import SimulatedObjective

    objective = SimulatedObjective(task)
    study.optimize(objective, n_trials=3)
    built: list[Decision] = []
    original = sampler.decision

    def recording(s):
        d = original(s)
        built.append(d)
        return d

    monkeypatch.setattr(sampler, "decision", recording)
    trial = study.ask()
    family.space.suggest(trial)
    trial.report(0.1, 1)
    n = len(built)
    pruner.prune(study, study._storage.get_trial(trial._trial_id))  # noqa: SLF001 - a frozen running trial
    assert len(built) == n + 1  # one decision per prune call, nothing else read
    rows = portfolio_rows(sampler, study, k=3)
    shown = built[-1]
    assert [r["config_id"] for r in rows["next"]] == [a.config_id for a in shown.actions(limit=3)]
    # Frozen: the decision cannot be changed by a reader.
    with pytest.raises(Exception):
        shown.fidelity_max = 1  # type: ignore[misc]


def test_conditioned_view_extends_the_posterior_exactly(family, surrogate):
    import torch

    # Without the residual correlation the study's rows are ordinary context rows, so the view must
    # equal a context that holds them (with it, tests/test_residual.py checks against a direct solve).
    surrogate = surrogate.copy()
    surrogate.performance.set_residual(0.0, [])
    task = family.tasks[-1]
    space = surrogate.space
    configs = space.sample(6, 11)
    X = space.encode_many(configs)
    y = np.linspace(0.2, 0.6, 6)
    fid = np.array([1, 2, 3, 3, 2, 1])
    kw = dict(fidelity_max=surrogate.max_fidelity, metafeatures=task.metafeatures)
    before = surrogate.predict(X, None, surrogate.max_fidelity, **kw)
    view = surrogate.conditioned_on(X, fid, y, **kw)
    assert view.view_id != surrogate.view_id and view.cost_id == surrogate.cost_id
    # The base is untouched; the view equals a from-scratch conditioning on the union.
    np.testing.assert_allclose(surrogate.predict(X, None, surrogate.max_fidelity, **kw)[0], before[0])
    ref = surrogate.copy()
    b = surrogate.batch(X, None, fid, **kw)
    ctx = surrogate.performance
    ref.performance.set_context(ctx.context.cat(b), torch.cat([ctx.context_y, torch.as_tensor(surrogate.prep.z(y, 1.0))]))
    got, want = view.predict(X, None, 3, **kw), ref.predict(X, None, 3, **kw)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_prediction_cache_is_bounded():
    cache = PredictionCache(maxsize=3)
    for i in range(10):
        assert cache.get(("k", i), lambda i=i: i * i) == i * i
    assert len(cache) == 3 and cache.get(("k", 9), lambda: -1) == 81 and cache.get(("k", 0), lambda: -1) == -1


def test_geometric_rungs():
    assert [s for s in range(1, 60) if is_rung(s)] == [1, 2, 3, 4, 6, 8, 12, 18, 26, 39, 58]


@pytest.fixture(scope="module")
def sim_scenario():
    from optuna_quicktune.simulate import SimulatedFamily

    fam = SimulatedFamily(3, fidelity_max=9, seed=0)
    return TableScenario(fam.metadataset(40, seed=1), name="sim")


@pytest.mark.parametrize("method", ["portfolio+sh", "rush"])
def test_portfolio_baselines_respect_the_clock(sim_scenario, method):
    task = sim_scenario.tasks[0]
    table = portfolio_table(sim_scenario.table(40, 0)).without_tasks([task])
    configs = table.configs(sim_scenario.space)
    ctx = bm.MethodContext(seed=0, portfolio=[configs[j] for j in table.order(size=8)],
                           task_bests=[configs[j] for j in table.task_bests()])
    costs = [sim_scenario.curves(task, [c]).step_costs[0] for c in configs]
    budget = 6 * float(np.median([c.sum() for c in costs]))
    s = Session(sim_scenario, task, budget, audit=True)
    bm.run_method(method, s, ctx)
    traj = s.finish()
    largest_step = max(float(c.max()) for c in costs)
    assert budget <= traj.charged <= budget + largest_step  # the budget is used, never overrun by more than a step
    assert traj.ledger and traj.ledger[0]["config"] == dict(ctx.portfolio[0] if method == "portfolio+sh" else ctx.task_bests[0])
    stopped = sum(1 for e in traj.ledger if e["step"] == 1) - traj.full_runs
    assert stopped > 0  # successive halving stopped runs before their end


def test_rush_hurdles_stop_later_runs_below_the_warm_start():
    study = optuna.create_study(direction="maximize", pruner=RushPruner(1, min_resource=1, reduction_factor=3))
    warm = study.ask()
    for step, v in enumerate([0.5, 0.6, 0.7], start=1):
        warm.report(v, step)
    study.tell(warm, 0.7)
    good, bad = study.ask(), study.ask()
    good.report(0.55, 1)
    bad.report(0.4, 1)
    assert not good.should_prune()  # clears the hurdle (0.5 at rung 1)
    assert bad.should_prune()


def test_a_trial_choosing_again_does_not_count_its_own_earlier_claim(family, surrogate):
    task = family.tasks[-1]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, seed=3, n_candidates=50)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first = sampler.decision(study).portfolio_order[0]
    trial = study.ask()  # claims the portfolio's first member
    assert trial.user_attrs["quicktune.config_id"] == first
    d = sampler.decision(study)
    # Another trial sees the member as taken; the claimant itself may choose it again.
    assert d.actions(limit=1)[0].config_id != first
    assert d.actions(limit=1, claimant=trial.number)[0].config_id == first
