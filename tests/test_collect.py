"""``quicktune collect``: the same configurations on every task, a full table, resumable (real trials, tiny model)."""

from __future__ import annotations

import time

import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space
from trl_objectives.collect import ZERO_SHOT, collect, collection_configs, open_storage, study_name
from trl_objectives.models import build_tiny_phi3
from trl_objectives.tasks import load_task

TASKS = ["signal-numbers", "weekdays"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    texts = []
    for t in TASKS:
        qa = load_task(t, 2)
        for split in (qa.train, qa.validation, qa.test):
            texts += list(split["question"]) + list(split["answer"])
    path = tmp_path_factory.mktemp("model") / "tiny-phi3"
    build_tiny_phi3(texts + ["Answer with the exact value only."], save_to=str(path), seed=0)
    return str(path)


def test_collection_configs_start_with_the_default_and_extend_stably():
    five = collection_configs(5, seed=0)
    assert five[0] == DEFAULT_LORA_CONFIG
    assert collection_configs(3, seed=0) == five[:3]
    assert collection_configs(3, seed=1)[1] != five[1]
    assert all(lora_space().contains(c) for c in five)
    with pytest.raises(ValueError, match="--configs"):
        collection_configs(0)


@pytest.mark.slow
def test_collect_runs_a_full_table_and_resumes_after_an_interruption(tiny_model, tmp_path):
    url = f"sqlite:///{tmp_path / 'factqa.db'}"
    kw = dict(model=tiny_model, storage=url, configs=2, epochs=1, facts=2, metric="token_f1", max_length=64,
              checkpoint_dir=str(tmp_path / "ck"), progress=False, grace_period=1)
    # An interrupted start: studies described, zero-shot of the first task scored, no trial run yet.
    first = collect(TASKS, time_limit=0, **kw)
    assert first["trials_run"] == 0 and first["stopped_by_time_limit"]
    store = open_storage(url, grace_period=1)
    names = {s.study_name for s in optuna.get_all_study_summaries(store)}
    a_name = next(n for n in names if n.startswith(TASKS[0] + "/"))
    assert a_name == study_name(TASKS[0], a_name.split("/", 1)[1])
    a = optuna.load_study(study_name=a_name, storage=store)
    assert set(a.user_attrs[ZERO_SHOT]) == {"validation", "test"}
    # Leftovers of a killed worker: a RUNNING trial whose heartbeat stopped, and a FAIL without a reason.
    space = lora_space()
    configs = collection_configs(2)
    ids = [space.config_id(c) for c in configs]
    running = a.ask(fixed_distributions=None)
    running.set_user_attr("quicktune.config_id", ids[0])
    store.record_heartbeat(running._trial_id)
    failed = a.ask()
    failed.set_user_attr("quicktune.config_id", ids[1])
    a.tell(failed, state=optuna.trial.TrialState.FAIL)
    time.sleep(2.5)

    second = collect(TASKS, **kw)
    assert second["trials_run"] == 4  # both leftovers re-run on task A, both configs on task B
    for name in names:
        study = optuna.load_study(study_name=name, storage=store)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert sorted(t.user_attrs["quicktune.config_id"] for t in done) == sorted(ids)
        assert all(len(t.intermediate_values) == 1 and "quicktune.test_score" in t.user_attrs for t in done)
        assert contract.TASK in study.user_attrs and ZERO_SHOT in study.user_attrs
    states = [t.state for t in optuna.load_study(study_name=a_name, storage=store).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 2 and optuna.trial.TrialState.RUNNING not in states

    assert collect(TASKS, **kw)["trials_run"] == 0  # nothing left to do
    md = MetaDataset.from_storage(url)
    assert len(md.tasks) == 2 and len(md.runs) == 4


def test_collect_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="Registered tasks"):
        collect(["nope"], storage=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="at least one task"):
        collect([], storage=f"sqlite:///{tmp_path / 'x.db'}")


@pytest.mark.slow
def test_collect_never_prunes_even_when_the_study_has_better_runs(tiny_model, tmp_path):
    # Five earlier runs with a perfect curve: Optuna's default MedianPruner would stop any new run at
    # its first epoch. A collection must still run every configuration to the maximum fidelity.
    url = f"sqlite:///{tmp_path / 'factqa.db'}"
    kw = dict(model=tiny_model, storage=url, configs=1, epochs=2, facts=2, metric="eval_loss", max_length=64,
              checkpoint_dir=str(tmp_path / "ck"), progress=False, zero_shot=False)
    collect(TASKS[:1], time_limit=0, **kw)
    name = optuna.get_all_study_names(url)[0]
    study = optuna.load_study(study_name=name, storage=url)
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(value=0.0, intermediate_values={1: 0.0, 2: 0.0}))
    assert collect(TASKS[:1], **kw)["trials_run"] == 1
    run = [t for t in optuna.load_study(study_name=name, storage=url).trials if "quicktune.config_id" in t.user_attrs]
    assert [t.state for t in run] == [optuna.trial.TrialState.COMPLETE]
    assert sorted(run[0].intermediate_values) == [1, 2]
