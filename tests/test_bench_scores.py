"""Test scores of the configurations that bench methods returned, on the shipped LLM table (real replay)."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from optuna_quicktune.cli import main as quicktune
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space
from trl_objectives.bench_scores import format_table, returned_runs, returned_test_scores
from trl_objectives.collect import ZERO_SHOT
from trl_objectives.wider_test import returned_configs

DB = Path(__file__).resolve().parents[1] / "optuna_quicktune" / "pretrained" / "data" / "smollm2-135m-factqa.db"


def test_returned_test_scores_match_the_stored_runs(tmp_path):
    if not DB.exists():
        pytest.skip(f"{DB} not found")
    shutil.copy(DB, tmp_path / "meta.db")  # never touch the packaged file
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    task = sorted(optuna.get_all_study_names(url))[0]
    out = tmp_path / "bench"
    rc = quicktune(["bench", "--storage", url, "--tasks", task, "--seeds", "1", "--methods",
                    "default,oracle,zero-shot", "--budget-factor", "3", "--jobs", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    scores = returned_test_scores(out, url)[task]

    study = optuna.load_study(study_name=task, storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_val = min(min(t.intermediate_values.values()) for t in complete)  # eval_loss: lower is better
    oracle_runs = [t for t in complete if best_val in t.intermediate_values.values()]
    assert scores["oracle"] == pytest.approx(oracle_runs[0].user_attrs["quicktune.test_score"])
    default_id = lora_space().config_id(DEFAULT_LORA_CONFIG)
    default = next(t for t in complete if t.user_attrs["quicktune.config_id"] == default_id)
    assert scores["default"] == pytest.approx(default.user_attrs["quicktune.test_score"])
    assert scores["zero-shot"] == pytest.approx(study.user_attrs[ZERO_SHOT]["test"]["eval_loss"])
    table = format_table({task: scores}, ["zero-shot", "default", "oracle"])
    assert table.splitlines()[2].startswith(f"| {task.split('/')[0]} | ") and "**" in table.splitlines()[-1]

    # The runs behind those scores, as the wider-test tool retrains them.
    matched = returned_runs(out, url)[task]
    assert "zero-shot" not in matched and matched["oracle"][0].number == oracle_runs[0].number
    assert matched["default"][0].params == default.params
    configs = returned_configs(matched, ["oracle"])
    assert configs[next(label for label in configs if label.startswith("default"))] == DEFAULT_LORA_CONFIG
    assert [params for label, params in configs.items() if "oracle x1" in label] == [oracle_runs[0].params]
