"""YAHPO replay of scenarios with inputs held constant and (later) conditional spaces.

The rbv2_rpart tests use the real folder at ../shared/benchmarks/yahpo-rbv2_rpart (CI has it) and
only the task ids of its tasks.txt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from optuna_quicktune.benchmark.cli import add_bench_parser, build_scenario
from optuna_quicktune.benchmark.yahpo import YahpoScenario

ROOT = Path(__file__).resolve().parents[1]
RPART = (ROOT / ".." / "shared" / "benchmarks" / "yahpo-rbv2_rpart").resolve()
needs_rpart = pytest.mark.skipif(
    not (RPART / "model.onnx").exists(),
    reason=f"YAHPO rbv2_rpart folder not found at {RPART} (CI provides it at ../shared/benchmarks/yahpo-rbv2_rpart)",
)
RPART_DEFAULT = {"cp": 0.01, "maxdepth": 30, "minbucket": 1, "minsplit": 20, "num.impute.selected.cpo": "impute.mean"}


def _bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


@needs_rpart
def test_rbv2_rpart_runs_as_it_is_with_repl_held_at_10():
    # Only the folder on the command line: metric, cost mode and repl come from the folder's files.
    sc = build_scenario(_bench_args("--yahpo", str(RPART)))
    assert sc.space.names == ["cp", "maxdepth", "minbucket", "minsplit", "num.impute.selected.cpo"]
    assert sc.constants == {"repl": 10}
    assert (sc.metric, sc.direction, sc.cost_name, sc.cost_mode) == ("acc", "maximize", "timetrain", "per-fidelity")
    assert len(sc.tasks) == 80 and sc.metafeatures(sc.tasks[0]) == {}
    assert sc.default_config == RPART_DEFAULT
    c = sc.curves("182", [RPART_DEFAULT])
    # USAGE.md's printed query (repl = 10): acc 0.653 at trainsize 0.03 and 0.857 at 1.
    assert c.values[0, 0] == pytest.approx(0.653, abs=1e-3) and c.values[0, -1] == pytest.approx(0.857, abs=1e-3)
    assert np.allclose(c.step_costs, c.scratch_costs)  # each trainsize level is a retraining

    # The option moves the constant (and so the curves and the fingerprint); a replicate is not tuned.
    other = build_scenario(_bench_args("--yahpo", str(RPART), "--yahpo-constant", "repl=1"))
    assert other.constants == {"repl": 1} and "repl" not in other.space.names
    assert other.fingerprint() != sc.fingerprint()
    assert not np.allclose(other.curves("182", [RPART_DEFAULT]).values, c.values)


@needs_rpart
def test_bad_constants_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"outside its range \[1, 10\]"):
        YahpoScenario(RPART, constants={"repl": 11})
    with pytest.raises(ValueError, match="not in config_space.json"):
        YahpoScenario(RPART, constants={"rep": 10})
    with pytest.raises(ValueError, match="instance or the fidelity"):
        YahpoScenario(RPART, constants={"trainsize": 0.5})
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        build_scenario(_bench_args("--yahpo", str(RPART), "--yahpo-constant", "repl"))
    # A constant that is a hyperparameter leaves the space, and the queries use its value.
    sc = YahpoScenario(RPART, constants={"num.impute.selected.cpo": "impute.hist", "maxdepth": 3}, tasks=["182"])
    assert sc.space.names == ["cp", "minbucket", "minsplit"]
    deep = YahpoScenario(RPART, tasks=["182"])
    cfg = {"cp": 0.001, "minbucket": 1, "minsplit": 2}
    assert sc.curves("182", [cfg]).values[0, -1] == pytest.approx(
        deep.curves("182", [{**cfg, "maxdepth": 3, "num.impute.selected.cpo": "impute.hist"}]).values[0, -1])


# ---------------------------------------------------------------------- conditional scenarios
from tests.tiny_onnx import TINY_CAT, TINY_CONT, TINY_Y, write_conditional_scenario  # noqa: E402


def _echo(out: np.ndarray, name: str) -> np.ndarray:
    return out[..., TINY_Y.index(f"echo.{name}")]


def test_configspace_conditions_are_read_parents_first():
    from optuna_quicktune.benchmark.configspace import configspace_to_space

    cs = {"hyperparameters": [
        {"name": "a", "type": "uniform_float", "lower": 0.0, "upper": 1.0},
        {"name": "b", "type": "uniform_int", "lower": 1, "upper": 4},
        {"name": "c", "type": "uniform_float", "lower": 0.0, "upper": 1.0},
        {"name": "p", "type": "categorical", "choices": ["x", "y", "z"]},
    ], "conditions": [
        {"type": "OR", "conditions": [{"child": "a", "parent": "p", "type": "EQ", "value": "x"},
                                      {"child": "a", "parent": "p", "type": "IN", "values": ["y"]}]},
        {"type": "AND", "conditions": [{"child": "c", "parent": "p", "type": "NE", "value": "x"},
                                       {"child": "c", "parent": "p", "type": "NE", "value": "y"}]},
    ]}
    space, _, _ = configspace_to_space(cs)
    assert space.names == ["p", "a", "b", "c"]  # the parent moved before its children
    assert space.conditions["a"].values == ("x", "y") and space.conditions["c"].values == ("z",)
    gt = {**cs, "conditions": [{"child": "a", "parent": "b", "type": "GT", "value": 2}]}
    with pytest.raises(ValueError, match="Supported conditions: EQ, IN, NE"):
        configspace_to_space(gt)
    two_parents = {**cs, "conditions": [{"type": "AND", "conditions": [
        {"child": "a", "parent": "p", "type": "EQ", "value": "x"}, {"child": "a", "parent": "b", "type": "EQ", "value": 2}]}]}
    with pytest.raises(ValueError, match="does not support"):
        configspace_to_space(two_parents)
    with pytest.raises(ValueError, match="hold the child constant too"):
        configspace_to_space({**cs, "conditions": cs["conditions"][:1]}, exclude=["p"])


def test_conditional_scenario_sends_inactive_inputs_as_yahpo_does(tmp_path):
    folder = write_conditional_scenario(tmp_path / "tiny")
    sc = YahpoScenario(folder)
    assert sc.space.names == ["kind", "depth", "drop_rate", "eta", "sample_type", "weight_cap"]  # parents first
    assert sc.space.conditions["depth"].values == ("tree", "dart")  # NE linear
    assert sc.space.conditions["weight_cap"].parent == "sample_type"  # a chain
    assert sc.constants == {"replicate": 3} and (sc.metric, sc.cost_mode) == ("acc", "per-fidelity")
    assert sc.default_config == {"eta": 0.3, "kind": "tree", "depth": 6}  # ConfigSpace defaults, active only
    linear = {"eta": 0.1, "kind": "linear"}
    dart = {"eta": 0.1, "kind": "dart", "depth": 4, "drop_rate": 0.25, "sample_type": "weighted", "weight_cap": 0.7}
    # DEHB-style: every parameter has a value, but the inactive ones must not reach the model.
    stale = {**linear, "depth": 9, "drop_rate": 0.4, "sample_type": "weighted", "weight_cap": 0.9}
    out = sc.query("22", [linear, dart, stale], sc.fidelity_values)
    for name in ("depth", "drop_rate", "weight_cap", "sample_type"):
        assert np.all(_echo(out[0], name) == 0.0) and np.all(_echo(out[2], name) == 0.0)  # 0.0 / code of "#na#"
    assert np.allclose(out[0], out[2])
    assert np.allclose(_echo(out[1], "drop_rate"), 0.25) and np.allclose(_echo(out[1], "weight_cap"), 0.7)
    assert np.all(_echo(out[1], "sample_type") == 2) and np.all(_echo(out[1], "kind") == 3)
    assert np.all(_echo(out, "replicate") == 3) and np.all(_echo(out, "task_id") == 2)
    assert np.allclose(_echo(out[1], "trainsize"), sc.fidelity_values)
    configs = sc.space.sample(50, seed=0)
    assert all(set(c) == set(sc.space.active(c)) for c in configs)
    assert len(sc.curves("33", configs)) == 50
    assert set(TINY_CONT + TINY_CAT) >= set(sc.space.names)


def test_bench_replays_a_conditional_scenario_from_the_command_line(tmp_path, capsys):
    from optuna_quicktune.benchmark.cli import main

    folder = write_conditional_scenario(tmp_path / "tiny")
    out = tmp_path / "out"
    rc = main(["bench", "--yahpo", str(folder), "--seeds", "1", "--methods", "random,tpe,dehb,quicktune,portfolio",
               "--meta-configs", "24", "--meta-steps", "40", "--reference-size", "300",
               "--portfolio-size", "8", "--budget-factor", "4", "--jobs", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    import json

    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert {r["method"] for r in runs} == {"random", "tpe", "dehb", "quicktune", "portfolio"}
    assert len(runs) == 5 * 4  # every method on every task (leave-one-task-out)
    for r in runs:
        assert r["error"] is None and r["n_trials"] >= 1, r
    assert result["meta"]["scenario"]["constants"] == {"replicate": 3}
    assert "average rank" in capsys.readouterr().out
