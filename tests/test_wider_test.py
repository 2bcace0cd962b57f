"""A natural task's returned configurations retrained and scored on a wider test split (real runs, tiny model)."""

from __future__ import annotations

import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space
from trl_objectives.collect import collect
from trl_objectives.models import build_tiny_phi3
from trl_objectives.realqa import fanoutqa_available
from trl_objectives.tasks import load_task, task_records
from trl_objectives.wider_test import rescore_task, wider_dataset

TASK = "fanoutqa-sports"
pytestmark = pytest.mark.skipif(not fanoutqa_available(), reason="the fanoutqa package is not installed")


def test_the_wider_split_keeps_train_and_validation_and_draws_unseen_test_questions():
    base = load_task(TASK, 2, seed=0)
    wide = wider_dataset(TASK, 2, seed=0, extra=10)
    assert wide.train["question"] == base.train["question"] and wide.validation["question"] == base.validation["question"]
    assert len(wide.test) == 10 and len(set(wide.test["question"])) == 10
    assert not set(wide.test["question"]) & {r["question"] for r in task_records(TASK, 2, seed=0)}
    assert wider_dataset(TASK, 2, seed=0, extra=10).test["question"] == wide.test["question"]  # seeded
    assert wider_dataset(TASK, 2, seed=0, extra=10, extra_seed=1).test["question"] != wide.test["question"]
    with pytest.raises(ValueError, match="templated fact task"):
        wider_dataset("signal-numbers", 2, seed=0, extra=2)
    with pytest.raises(ValueError, match="extra must be in 1.."):
        wider_dataset(TASK, 2, seed=0, extra=100_000)


def test_a_retrained_configuration_reproduces_its_stored_curve_and_is_scored_on_the_wider_split(tmp_path):
    qa = wider_dataset(TASK, 2, seed=0, extra=3)
    texts = [x for split in (qa.train, qa.validation, qa.test) for x in list(split["question"]) + list(split["answer"])]
    model = tmp_path / "tiny-phi3"
    build_tiny_phi3(texts + ["Answer with a short phrase only."], save_to=str(model), seed=0)
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    collect([TASK], model=str(model), storage=url, configs=1, epochs=2, facts=2, metric="eval_loss", max_length=64,
            checkpoint_dir=str(tmp_path / "ck"), progress=False)
    name = optuna.get_all_study_names(url)[0]

    out = rescore_task(url, name, {"default": DEFAULT_LORA_CONFIG}, extra=3, model=str(model))

    assert out["questions"] == 3 and set(out["base_model"]) == {"validation", "test"}
    run = out["runs"][0]
    assert run["config_id"] == lora_space().config_id(DEFAULT_LORA_CONFIG)
    assert len(run["val_curve"]) == 2
    assert run["val_curve"] == pytest.approx(run["stored_val_curve"], abs=1e-5)  # same data, seed and settings
    stored = optuna.load_study(study_name=name, storage=url).user_attrs[contract.ZERO_SHOT]
    assert out["base_model"]["validation"] == pytest.approx(stored["validation"]["eval_loss"], abs=1e-5)
    assert run["wider_test"] > 0 and run["wider_test"] != pytest.approx(run["stored_test"])
