"""``quicktune collect``: the same configurations on every task, a full table, resumable (real trials, tiny model)."""

from __future__ import annotations

import math
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
def test_collect_runs_a_full_table_and_resumes_after_an_interruption(tiny_model, tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'factqa.db'}"
    kw = dict(model=tiny_model, storage=url, configs=2, epochs=1, facts=2, metric="token_f1", max_length=64,
              checkpoint_dir=str(tmp_path / "ck"), progress=False, grace_period=1)
    # An interrupted start: studies described, zero-shot of the first task scored, no trial run yet.
    with caplog.at_level("WARNING", logger="trl_objectives.collect"):
        first = collect(TASKS, time_limit=0, **kw)
    assert first["trials_run"] == 0 and first["stopped_by_time_limit"]
    # 2 facts give 2 validation questions per task: the user is told that they rank configurations by 2 answers.
    small = [r.getMessage() for r in caplog.records if "validation example" in r.getMessage()]
    assert len(small) == len(TASKS) and "has 2 validation example(s)" in small[0]
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


# ---------------------------------------------------------------------- the user's own datasets
def _user_rows(prefix: str, n: int = 20) -> list[dict[str, str]]:
    words = ["red", "green", "blue", "cyan", "gold", "grey", "pink", "teal", "navy", "plum"]
    return [{"prompt": f"What is the {prefix} code {i}?", "reply": words[(i * 3 + len(prefix)) % len(words)]}
            for i in range(n)]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """Two of the user's datasets (a JSONL and a CSV file, own column names) and a tiny model for them."""
    import csv
    import json

    folder = tmp_path_factory.mktemp("user-data")
    a, b = folder / "a.jsonl", folder / "b.csv"
    a.write_text("".join(json.dumps(r) + "\n" for r in _user_rows("alpha")))
    with b.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "reply"])
        w.writeheader()
        w.writerows(_user_rows("beta"))
    texts = [v for r in _user_rows("alpha") + _user_rows("beta") for v in r.values()]
    model = folder / "tiny-phi3"
    build_tiny_phi3(texts, save_to=str(model), seed=0)
    return a, b, str(model)


def test_quicktune_collect_on_user_datasets_with_step_fidelity(user_data, tmp_path, capsys):
    import json

    from optuna_quicktune.cli import main as quicktune

    a, b, model = user_data
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    argv = ["collect", "--data", f"{a},{b}", "--question-column", "prompt", "--answer-column", "reply",
            "--model", model, "--storage", url, "--configs", "2", "--eval-every-steps", "1", "--max-steps", "8",
            "--metric", "eval_loss", "--max-length", "48", "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress"]
    assert quicktune(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials_run"] == 4 and set(summary["tasks"]) == {"a", "b"}
    assert summary["fidelity"] == {"unit": "step", "eval_every_steps": 1, "max_steps": 8}

    md = MetaDataset.from_storage(url)
    assert sorted(t.dataset for t in md.tasks) == ["a", "b"] and len(md.runs) == 4
    assert all(t.fidelity_unit == "step" and t.fidelity_max == 8 for t in md.tasks)
    assert all(r.length == 8 for r in md.runs)
    for name in optuna.get_all_study_names(url):
        study = optuna.load_study(study_name=name, storage=url)
        assert study.user_attrs[contract.FIDELITY] == {"unit": "step", "max": 8}
        info = study.user_attrs[contract.COLLECT_INFO]
        assert info["source"].endswith((".jsonl", ".csv")) and info["columns"]["answer"] == "reply"
        assert set(study.user_attrs[ZERO_SHOT]) == {"validation", "test"}
        assert study.user_attrs[contract.PROMPT_FORMAT]["style"] == "chat_template"  # the tiny model has one
        for t in study.trials:  # every run a full curve of 8 points, with its place in the configuration list
            assert t.state == optuna.trial.TrialState.COMPLETE and sorted(t.intermediate_values) == list(range(1, 9))
            assert t.user_attrs[contract.CONFIG_INDEX] in (0, 1) and len(t.user_attrs[contract.COST]) == 8

    assert quicktune(argv) == 0  # resumable: nothing left to run
    assert json.loads(capsys.readouterr().out)["trials_run"] == 0


def test_collect_refuses_bad_user_data_before_running(user_data, tmp_path):
    a, _, model = user_data
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(ValueError, match="does not exist"):
        collect(data=[tmp_path / "missing.jsonl"], model=model, storage=url)
    with pytest.raises(ValueError, match=r"Two tasks are named \['a'\]"):
        collect(data=[a, a.with_suffix(".jsonl")], model=model, storage=url)
    with pytest.raises(ValueError, match="--max-steps needs --eval-every-steps"):
        collect(data=[a], model=model, storage=url, max_steps=10)
    from trl_objectives.errors import DatasetFormatError

    with pytest.raises(DatasetFormatError, match=r"lacks the fields \['question', 'answer'\]"):
        collect(data=[a], model=model, storage=url, progress=False)  # default column names: not in a.jsonl
    assert optuna.get_all_study_names(url) == []  # nothing was created for a dataset that cannot be read


def test_a_configuration_another_trial_claims_is_never_trained_twice(user_data, tmp_path):
    """Two workers that start the same configuration: the later trial stops before training."""
    from trl_objectives import SFTObjective, load_qa_dataset
    from trl_objectives.claims import ClaimedRun

    a, _, model = user_data
    objective = SFTObjective(model, load_qa_dataset(a, question_field="prompt", answer_field="reply"),
                             metric="eval_loss", max_epochs=1, max_length=48, checkpoint_dir=str(tmp_path / "ck"))
    space = objective.space
    configs = collection_configs(2)
    ids = [space.config_id(c) for c in configs]
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'claim.db'}"), direction="minimize")
    study.enqueue_trial(configs[0], user_attrs={contract.CONFIG_ID: ids[0]})
    other_worker = study.ask()  # RUNNING in another process
    study.enqueue_trial(configs[0])
    study.optimize(ClaimedRun(objective, ids), n_trials=1)
    late = study.trials[-1]
    assert late.state == optuna.trial.TrialState.FAIL and late.user_attrs[contract.DUPLICATE_OF] == other_worker.number
    assert contract.COST not in late.user_attrs and not late.intermediate_values  # stopped before any training
    assert contract.FAIL_REASON not in late.user_attrs  # so the configuration does not count as done


def test_a_lower_trial_that_reads_after_a_rival_claimed_does_not_train(user_data, tmp_path):
    """The race CI met: the higher trial checked before the lower one wrote its claim, and both trained."""
    from trl_objectives import SFTObjective, load_qa_dataset
    from trl_objectives.claims import ClaimedRun

    a, _, model = user_data
    objective = SFTObjective(model, load_qa_dataset(a, question_field="prompt", answer_field="reply"),
                             metric="eval_loss", max_epochs=1, max_length=48, checkpoint_dir=str(tmp_path / "ck"))
    configs = collection_configs(1)
    ids = [objective.space.config_id(configs[0])]
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'race.db'}"), direction="minimize")
    study.enqueue_trial(configs[0])
    lower = study.ask()  # started first, has not looked yet
    study.enqueue_trial(configs[0], user_attrs={contract.CONFIG_ID: ids[0]})
    higher = study.ask()  # looked, found nothing, claimed, trains
    assert math.isnan(ClaimedRun(objective, ids)(lower))  # the lower trial yields to the running claim
    assert lower.user_attrs[contract.DUPLICATE_OF] == higher.number
    late = study.get_trials(deepcopy=False)[lower.number]
    assert contract.COST not in late.user_attrs and not late.intermediate_values


def _collect_command(data, model: str, url: str, *, configs: int, epochs: int) -> list[str]:
    """``quicktune collect`` on the user_data JSONL file, as a worker process runs it."""
    import sys

    return [sys.executable, "-m", "optuna_quicktune.cli", "collect", "--data", str(data), "--question-column", "prompt",
            "--answer-column", "reply", "--model", model, "--storage", url, "--configs", str(configs),
            "--epochs", str(epochs), "--metric", "eval_loss", "--max-length", "48", "--no-zero-shot", "--no-progress"]


@pytest.mark.slow
def test_two_collect_processes_share_one_storage_without_running_a_configuration_twice(user_data, tmp_path):
    import subprocess

    a, _, model = user_data
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = _collect_command(a, model, url, configs=4, epochs=1) + ["--checkpoint-dir", str(tmp_path / "ck")]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    import json

    ran = [json.loads(out[out.index("{"):])["trials_run"] for out, _ in outs]
    trials = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url).trials
    trained = [t for t in trials if contract.COST in t.user_attrs]
    assert sum(ran) == len(trained) == 4  # each configuration trained once, by one of the two workers
    assert sorted(t.user_attrs[contract.CONFIG_ID] for t in trained) == sorted(
        lora_space().config_id(c) for c in collection_configs(4))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trained)
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]


def test_a_run_whose_worker_died_is_run_again_but_a_failed_configuration_is_not(tmp_path):
    """``quicktune recover`` fails a dead worker's trial with a reason; collect must still run it again."""
    from optuna_quicktune.space import lora_space
    from trl_objectives.claims import ClaimedRun, config_states
    from trl_objectives.collect import collection_configs

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", study_name="t")
    fail = optuna.trial.TrialState.FAIL
    study.add_trial(optuna.trial.create_trial(state=fail, user_attrs={
        contract.CONFIG_ID: "diverged", contract.FAIL_REASON: "the loss diverged"}))
    study.add_trial(optuna.trial.create_trial(state=fail, user_attrs={
        contract.CONFIG_ID: "worker-died", contract.FAIL_REASON: "a worker died while running it",
        contract.RECOVERED_BY: "host|pid"}))
    study.add_trial(optuna.trial.create_trial(state=fail, user_attrs={contract.CONFIG_ID: "no-reason"}))
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={contract.CONFIG_ID: "complete"}))
    done, running = config_states(study)
    assert done == {"diverged", "complete"} and running == set()

    # ... and a trial of that configuration trains instead of yielding to the dead worker's trial
    # (when the two rules disagreed, collect picked it and every new trial refused it, forever).
    space = lora_space()

    class Objective:  # the claim logic around any objective: here one that only counts its calls
        calls = 0

        def __init__(self) -> None:
            self.space = space

        def suggest(self, trial):
            return space.suggest(trial)

        def __call__(self, trial):
            Objective.calls += 1
            return 0.5

    configs = collection_configs(2, seed=0, space=space)
    ids = [space.config_id(c) for c in configs]
    for cid, reason in ((ids[0], "a worker died while running it"), (ids[1], "the loss diverged")):
        attrs = {contract.CONFIG_ID: cid, contract.FAIL_REASON: reason}
        if cid == ids[0]:
            attrs[contract.RECOVERED_BY] = "host|pid"
        study.add_trial(optuna.trial.create_trial(state=fail, user_attrs=attrs))
    run = ClaimedRun(Objective(), ids)
    for c in configs:
        study.sampler = optuna.samplers.PartialFixedSampler(c, optuna.samplers.RandomSampler(seed=0))
        study.optimize(run, n_trials=1, catch=())
    assert Objective.calls == 1  # the recovered configuration trained, the diverged one did not
    last = study.trials[-2:]
    assert last[0].state == optuna.trial.TrialState.COMPLETE and contract.DUPLICATE_OF not in last[0].user_attrs
    assert last[1].user_attrs[contract.DUPLICATE_OF] == study.trials[-3].number


@pytest.mark.slow
def test_sigterm_stops_collect_and_the_run_in_flight_is_failed_then_run_again(user_data, tmp_path):
    """``kill PID`` (or a scheduler's stop) must not leave a RUNNING trial nor a hole in the table."""
    import json
    import signal
    import subprocess

    a, _, model = user_data
    url = f"sqlite:///{tmp_path / 'term.db'}"
    cmd = _collect_command(a, model, url, configs=3, epochs=2)
    worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = optuna.trial.TrialState.RUNNING
    deadline = time.time() + 300


    def in_flight() -> bool:
        try:  # the worker may be creating the schema or holding the write lock just now
            names = optuna.get_all_study_names(url)
            return bool(names) and any(t.state == running for t in optuna.load_study(study_name=names[0], storage=url).trials)
        except Exception:
            return False

    while time.time() < deadline and worker.poll() is None and not in_flight():
        time.sleep(0.1)
    assert worker.poll() is None, "the collection ended before a run was in flight"
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, (out, err)
    assert "stopped" in err
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    states = [t.state for t in study.trials]
    assert running not in states and optuna.trial.TrialState.FAIL in states
    assert all(contract.FAIL_REASON not in t.user_attrs for t in study.trials)  # not a result: runs again
    # The same command resumes and completes the table.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{"):])["tasks"]
    complete = [t for t in optuna.load_study(study_name=study.study_name, storage=url).trials
                if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs[contract.CONFIG_ID] for t in complete) == sorted(
        lora_space().config_id(c) for c in collection_configs(3))
