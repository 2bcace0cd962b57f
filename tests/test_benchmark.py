"""The replay benchmark: clock accounting, regret conventions, baselines and a CI smoke run.

The smoke runs (a simulated table, and the YAHPO LCBench folder at ../shared/benchmarks/yahpo-lcbench
relative to the repository root when it is there) check structure and sanity, not who wins.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest

from optuna_quicktune.benchmark import methods as bm
from optuna_quicktune.benchmark.replay import BudgetExhausted, Session
from optuna_quicktune.benchmark.report import FRACTIONS, Reference, incumbent_at
from optuna_quicktune.benchmark.runner import BenchConfig, run_benchmark
from optuna_quicktune.benchmark.scenarios import TableScenario, configspace_to_space
from optuna_quicktune.portfolio import greedy_order

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

ROOT = Path(__file__).resolve().parents[1]
LCBENCH = (ROOT / ".." / "shared" / "benchmarks" / "yahpo-lcbench").resolve()
needs_lcbench = pytest.mark.skipif(
    not (LCBENCH / "model.onnx").exists(),
    reason=f"YAHPO LCBench folder not found at {LCBENCH} (CI provides it at ../shared/benchmarks/yahpo-lcbench)",
)


@pytest.fixture(scope="module")
def sim_scenario():
    from optuna_quicktune.simulate import SimulatedFamily
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG

    fam = SimulatedFamily(3, fidelity_max=6, seed=0)
    md = fam.metadataset(40, seed=1)
    zero_shot = {t.name: 0.12 for t in md.tasks}  # an un-finetuned base model's score
    return TableScenario(md, name="sim", default_config=DEFAULT_LORA_CONFIG, zero_shot=zero_shot)


# ---------------------------------------------------------------------- units
def test_greedy_portfolio_picks_best_on_average_then_complements():
    # task 0 loves candidate 0, task 1 loves candidate 1; candidate 2 is second-best on both.
    S = np.array([[1.0, 0.0, 0.8, 0.1], [0.0, 1.0, 0.8, 0.1]])
    R = (S.max(1, keepdims=True) - S) / (S.max(1, keepdims=True) - S.min(1, keepdims=True))
    order = greedy_order(R, np.ones(2), 3)
    assert order[0] == 2  # best on average
    assert set(order[1:]) == {0, 1}


def test_regret_conventions():
    ref = Reference("t", 1.0, best=10.0, worst=0.0, n=1, oracle_config={}, oracle_step=1, median_full_cost=1.0, budget=10.0)
    inc = incumbent_at([1.0, 2.0, 3.0], [5.0, 4.0, 9.0], 1.0, np.array([0.5, 1.0, 2.5, 3.0]))
    assert np.isnan(inc[0]) and list(inc[1:]) == [5.0, 5.0, 9.0]
    r = ref.regret(inc)
    assert r[0] == 1.0 and np.allclose(r[1:], [0.5, 0.5, 0.1])
    assert ref.regret(np.array([12.0]))[0] == 0.0  # beating the reference clips at 0
    mini = Reference("t", -1.0, best=1.0, worst=3.0, n=1, oracle_config={}, oracle_step=1, median_full_cost=1.0, budget=1.0)
    assert np.allclose(mini.regret(np.array([2.0, 1.0, 5.0])), [0.5, 0.0, 1.0])


def test_session_charges_every_step_and_stops_at_budget(sim_scenario):
    task = sim_scenario.tasks[0]
    cfg = sim_scenario.task_configs(task)[0]
    values, step_costs, _ = Session(sim_scenario, task, 1.0).curve(cfg)
    s = Session(sim_scenario, task, budget=float(step_costs[:3].sum()) - 1e-9, audit=True)
    for k in range(1, 4):
        v, c = s.step(cfg, k)
        assert v == values[k - 1] and c == step_costs[k - 1]
    assert s.exhausted and s.clock == pytest.approx(step_costs[:3].sum())
    with pytest.raises(BudgetExhausted):
        s.step(cfg, 4)
    assert len(s.traj.ledger) == 3 and s.traj.steps == 3


def test_table_scenario_snaps_to_nearest_configuration(sim_scenario):
    task = sim_scenario.tasks[1]
    cfg = dict(sim_scenario.task_configs(task)[5])
    cfg["learning_rate"] *= 1.0001  # not in the table: replayed as its nearest neighbour
    c = sim_scenario.curves(task, [cfg, sim_scenario.task_configs(task)[5]])
    assert np.array_equal(c.values[0], c.values[1])


def test_configspace_parsing_and_conditions():
    cs = {
        "hyperparameters": [
            {"name": "lr", "type": "uniform_float", "lower": 1e-4, "upper": 1e-1, "log": True, "default": 1e-3},
            {"name": "depth", "type": "uniform_int", "lower": 1, "upper": 5, "log": False, "default": 2},
            {"name": "kind", "type": "categorical", "choices": ["a", "b"], "default": "a"},
            {"name": "trainsize", "type": "uniform_float", "lower": 0.05, "upper": 1.0, "log": False},
        ],
        "conditions": [],
        "forbiddens": [],
    }
    space, defaults, excluded = configspace_to_space(cs, exclude=["trainsize"])
    assert space.names == ["lr", "depth", "kind"] and "trainsize" in excluded
    assert defaults == {"lr": 1e-3, "depth": 2, "kind": "a"}
    with pytest.raises(ValueError, match="conditions"):
        configspace_to_space({**cs, "conditions": [{"child": "depth"}]})


def test_dehb_unit_cube_mapping(sim_scenario):
    space = sim_scenario.space
    for u in (np.zeros(len(space.names)), np.ones(len(space.names)), np.full(len(space.names), 0.37)):
        assert space.contains(bm._unit_to_config(space, u))


# ---------------------------------------------------------------------- smoke runs
def _check_results(result, scenario, out: Path):
    for f in ("results.json", "results.md", "rank_vs_budget.png", "regret_vs_budget.png", "regret_per_task.png"):
        assert (out / f).exists(), f
    json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert not [r for r in runs if r["error"]], [r["error"] for r in runs if r["error"]]
    for r in runs:
        reg = np.asarray(r["regret"])
        assert reg.shape == FRACTIONS.shape and np.all((reg >= 0) & (reg <= 1))
        assert np.all(np.diff(reg) <= 1e-12), f"{r['method']}: regret rose over time"
        # Every method is charged at least the (independently replayed) cost of the steps it trained.
        owed = 0.0
        for e in r["ledger"]:
            c = scenario.curves(r["task"], [e["config"]])
            owed += (c.step_costs if e["kind"] == "step" else c.scratch_costs)[0, e["step"] - 1]
        assert r["charged"] >= owed * (1 - 1e-6) and r["steps"] >= len(r["ledger"])
        if r["method"] == "zero-shot":
            assert r["charged"] == 0 and r["n_trials"] == 1
        else:
            assert r["ledger"]
        if r["method"] == "oracle":
            assert r["final_regret"] == 0.0 and r["regret_after_trials"]["1"] == 0.0
        if r["method"] not in ("default", "oracle", "zero-shot"):
            assert r["charged"] >= r["budget"]  # they use the whole budget
    summary = result["summary"]["methods"]
    for m in result["meta"]["config"]["methods"]:
        assert m in summary
        if m != "oracle":
            assert len(summary[m]["mean_rank"]) == len(FRACTIONS)
    assert "| quicktune |" in (out / "results.md").read_text()


def test_smoke_simulated_table(tmp_path, sim_scenario):
    cfg = BenchConfig(
        methods=[*bm.DEFAULT_METHODS, "zero-shot"], seeds=[0], budget_factor=3.0, n_meta_configs=40, meta_steps=100, meta_time_limit=4, jobs=1,
        progress=False, audit=True, top_k_first=4, portfolio_size=8, quicktune_kwargs={"n_candidates": 200},
    )
    result = run_benchmark(sim_scenario, cfg, tmp_path)
    _check_results(result, sim_scenario, tmp_path)
    assert set(result["meta"]["references"]) == set(sim_scenario.tasks)
    # Cached folds: a second run retrains nothing; with resume, recorded runs are not run again.
    again = run_benchmark(sim_scenario, BenchConfig(**{**cfg.__dict__, "methods": ["quicktune", "oracle"], "resume": True}), tmp_path)
    assert again["meta"]["fold_train_seconds"] == {}
    assert again["meta"]["timings"]["runs_s"] < 1.0
    assert [r["final_regret"] for r in again["runs"]] == [
        r["final_regret"] for r in result["runs"] if r["method"] in ("quicktune", "oracle")
    ]
    # --pruner-kwargs reach QuickTunePruner (and make a new run key): with min_steps beyond the
    # fidelity nothing is stopped, so every trial but one the budget cut short is a full run.
    unpruned = run_benchmark(sim_scenario, BenchConfig(**{**cfg.__dict__, "methods": ["quicktune"], "resume": True,
                                                          "pruner_kwargs": {"min_steps": 10**6}}), tmp_path)
    assert len(unpruned["runs"]) == len(sim_scenario.tasks)
    for r in unpruned["runs"]:
        assert r["error"] is None and r["n_trials"] >= 2 and r["full_runs"] >= r["n_trials"] - 1, r


@needs_lcbench
def test_smoke_lcbench_two_tasks(tmp_path):
    from optuna_quicktune.benchmark.yahpo import lcbench

    scenario = lcbench(LCBENCH, epochs="2-11")
    scenario.tasks = scenario.tasks[:2]
    assert scenario.fidelity_max == 10 and len(scenario.metafeatures(scenario.tasks[0])) == 10
    cfg = BenchConfig(
        seeds=[0], budget_factor=2.0, n_meta_configs=16, meta_steps=100, meta_time_limit=5, n_reference=500,
        jobs=1, progress=False, audit=True, top_k_first=8, portfolio_size=8, quicktune_kwargs={"n_candidates": 200},
    )
    result = run_benchmark(scenario, cfg, tmp_path)
    _check_results(result, scenario, tmp_path)


@needs_lcbench
def test_a_tasks_reference_does_not_depend_on_which_tasks_a_run_selects(tmp_path):
    """Budget, regret scale and oracle of a task are the same alone, in another order and in the
    whole list (a subset run must score a task as the full benchmark does)."""
    from optuna_quicktune.benchmark.runner import prepare_references
    from optuna_quicktune.benchmark.yahpo import lcbench

    scenario = lcbench(LCBENCH, epochs="2-11")
    scenario.tasks = scenario.tasks[:3]
    a, b, c = scenario.tasks
    cfg = BenchConfig(n_reference=200)
    whole = prepare_references(scenario, cfg, [a, b, c], tmp_path)
    for selection in ([c], [c, a], [b, c]):
        assert prepare_references(scenario, cfg, selection, tmp_path)[c] == whole[c]
    assert prepare_references(scenario, cfg, [c, a], None)[a] == whole[a]  # without the cache too
    assert whole[a].budget != whole[c].budget  # each task its own reference set


@needs_lcbench
def test_yahpo_fidelity_that_is_not_epochs():
    """Per-fidelity costs (each level retrains, like a training-set fraction) and float levels."""
    from optuna_quicktune.benchmark.yahpo import YahpoScenario

    sc = YahpoScenario(LCBENCH, fidelity="epoch", metric="val_balanced_accuracy", cost="time", preset="lcbench",
                       fidelity_values=[2.0, 4.5, 10.0, 25.0, 51.0], cost_mode="per-fidelity", metafeatures="none",
                       tasks=["34539"])
    assert sc.fidelity_max == 5 and sc.direction == "maximize" and sc.metafeatures("34539") == {}
    cfg = sc.space.sample(3, 0)
    c = sc.curves("34539", cfg)
    assert np.allclose(c.step_costs, c.scratch_costs)  # going up a level costs a whole retraining
    s = Session(sc, "34539", budget=1e9)
    v, cost = s.scratch(cfg[0], 3)
    assert cost == pytest.approx(c.scratch_costs[0, 2], rel=1e-3) and s.traj.values == [v]  # only level 3 is seen
    with pytest.raises(ValueError, match="not one of the model's outputs"):
        YahpoScenario(LCBENCH, metric="accuracy", preset="lcbench")


def test_cli_parser_builds_a_run(tmp_path):
    import argparse

    from optuna_quicktune.benchmark.cli import add_bench_parser, build_scenario

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--simulated", "3", "--seeds", "0,2", "--methods", "random,oracle", "--out", str(tmp_path)])
    assert args.func.__name__ == "run_bench"
    sc = build_scenario(args)
    assert len(sc.tasks) == 3 and sc.default_config is not None


def test_storage_scenario_reads_zero_shot_scores(tmp_path):
    import shutil

    from optuna_quicktune.benchmark.cli import add_bench_parser, build_scenario

    db = ROOT / "optuna_quicktune" / "pretrained" / "data" / "smollm2-135m-factqa.db"
    if not db.exists():
        pytest.skip(f"{db} not found")
    shutil.copy(db, tmp_path / "meta.db")  # never touch the packaged file
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    sc = build_scenario(parser.parse_args(["bench", "--storage", f"sqlite:///{tmp_path / 'meta.db'}"]))
    assert sc.has_zero_shot and sc.direction == "minimize"
    task = sc.tasks[0]
    s = Session(sc, task, budget=1.0)
    bm.run_zero_shot(s, bm.MethodContext(seed=0))
    assert s.traj.values == [sc.zero_shot_score(task)] and s.clock == 0.0


def test_quicktune_run_key_follows_the_library_defaults(sim_scenario, monkeypatch):
    # --resume must not reuse QuickTune records made under other sampler/pruner defaults.
    from optuna_quicktune.benchmark.settings import run_key
    from optuna_quicktune.pruner import QuickTunePruner

    cfg = BenchConfig(methods=["quicktune", "random"], seeds=[0])
    before = {m: run_key(sim_scenario, cfg, m) for m in ("quicktune", "quicktune-refit", "random")}
    monkeypatch.setitem(QuickTunePruner.__init__.__kwdefaults__, "keep_leader", False)
    after = {m: run_key(sim_scenario, cfg, m) for m in ("quicktune", "quicktune-refit", "random")}
    assert after["quicktune"] != before["quicktune"] and after["quicktune-refit"] != before["quicktune-refit"]
    assert after["random"] == before["random"]


def test_bad_sampler_or_pruner_arguments_are_refused_before_any_run():
    from optuna_quicktune.benchmark.cli import _json_object

    with pytest.raises(ValueError, match=r"pruner-kwargs.*keep_leadr.*keep_leader"):
        BenchConfig(methods=["quicktune"], seeds=[0], pruner_kwargs={"keep_leadr": False}).validate()
    with pytest.raises(ValueError, match=r"quicktune-kwargs.*'seed'"):  # the benchmark sets the seed itself
        BenchConfig(methods=["quicktune"], seeds=[0], quicktune_kwargs={"seed": 3}).validate()
    BenchConfig(methods=["quicktune"], seeds=[0], quicktune_kwargs={"n_candidates": 10},
                pruner_kwargs={"keep_leader": False, "margin": 0.2}).validate()
    with pytest.raises(ValueError, match="--pruner-kwargs is not valid JSON"):
        _json_object("{bad", "--pruner-kwargs")
    with pytest.raises(ValueError, match="must be a JSON object"):
        _json_object("[1]", "--pruner-kwargs")
    assert _json_object('{"margin": 0.2}', "--pruner-kwargs") == {"margin": 0.2}
