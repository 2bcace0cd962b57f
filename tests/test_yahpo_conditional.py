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
from optuna_quicktune.benchmark.scenarios import YahpoScenario

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
