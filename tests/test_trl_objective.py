"""SFTObjective end to end: a tiny Phi-3 trains for real inside Optuna studies on SQLite.

What is checked: the storage contract (curves, cumulative costs, task description, meta-features,
test scores) and that MetaDataset reads it back; pausing (checkpoint + ``quicktune.checkpoint``);
resuming continues at the right step and reproduces the uninterrupted curve; NaN losses and
out-of-memory errors fail one trial while the study goes on; bad input fails before training.
"""

from __future__ import annotations

import gc
import json
import math
import time
import weakref
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

import optuna  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from optuna_quicktune import contract  # noqa: E402
from optuna_quicktune.metadataset import MetaDataset  # noqa: E402
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, SearchSpace  # noqa: E402
from trl_objectives import (  # noqa: E402
    FAIL_REASON,
    METAFEATURE_NAMES,
    TEST_METRIC_PREFIX,
    TEST_SCORE,
    VAL_METRICS,
    ModelNotFoundError,
    NonFiniteLossError,
    SFTObjective,
    StudyMismatchError,
    TRLObjectiveInputError,
    build_tiny_phi3,
    load_qa_dataset,
    toy_qa_records,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny model's matrices are 64-wide: thread start-up costs more than it saves, and on a
    # shared 2-core machine a second OpenMP thread mostly waits for a busy core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def qa():
    return load_qa_dataset(toy_qa_records(6), name="toy-facts")  # 60 train / 6 val / 6 test


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, qa) -> Path:
    texts = [q for split in (qa.train, qa.validation, qa.test) for q in split["question"]]
    texts += list(qa.train["answer"]) + list(qa.test["answer"]) + list(qa.validation["answer"])
    folder = tmp_path_factory.mktemp("tiny_phi3")
    build_tiny_phi3(texts, save_to=folder, seed=0)
    return folder


def _config(**changes):
    cfg = dict(DEFAULT_LORA_CONFIG)
    cfg.update(learning_rate=1e-3, lora_dropout=0.1)
    cfg.update(changes)
    return cfg


def _storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def test_trials_write_the_storage_contract(tmp_path, tiny, qa):
    obj = SFTObjective(tiny, qa, max_epochs=2, metric="exact_match", checkpoint_dir=tmp_path / "ck", max_new_tokens=4)
    study = optuna.create_study(
        direction=obj.direction, storage=_storage(tmp_path), study_name="toy-tiny",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.enqueue_trial(_config())
    start = time.perf_counter()
    study.optimize(obj, n_trials=2)
    elapsed = time.perf_counter() - start

    attrs = study.user_attrs
    assert attrs[contract.TASK] == {
        "dataset": "toy-facts", "model": tiny.name, "metric": "exact_match", "direction": "maximize"
    }
    assert attrs[contract.FIDELITY] == {"unit": "epoch", "max": 2}
    assert list(attrs[contract.METAFEATURES]) == list(METAFEATURE_NAMES)
    assert attrs[contract.SPACE]["fingerprint"] == obj.space.fingerprint
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get(FAIL_REASON)
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.value == trial.intermediate_values[2]
        assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
        cost = trial.user_attrs[contract.COST]
        assert len(cost) == 2 and 0 < cost[0] < cost[1] < elapsed
        assert trial.user_attrs[contract.CONFIG_ID] == obj.space.config_id(trial.params)
        val = trial.user_attrs[VAL_METRICS]
        assert [m["exact_match"] for m in val] == [trial.intermediate_values[1], trial.intermediate_values[2]]
        assert all(math.isfinite(m["eval_loss"]) for m in val)
        # test scores: recorded, but never reported to Optuna (not part of the curve)
        assert 0.0 <= trial.user_attrs[TEST_SCORE] <= 1.0
        assert trial.user_attrs[TEST_SCORE] == trial.user_attrs[TEST_METRIC_PREFIX + "exact_match"]
        assert math.isfinite(trial.user_attrs[TEST_METRIC_PREFIX + "eval_loss"])
        assert 0.0 <= trial.user_attrs[TEST_METRIC_PREFIX + "token_f1"] <= 1.0

    md = MetaDataset.from_storage(_storage(tmp_path))
    assert len(md.tasks) == 1 and len(md.runs) == 2
    assert md.tasks[0].fidelity_max == 2 and md.metafeature_names == sorted(METAFEATURE_NAMES)
    arrays = md.arrays()
    assert arrays["Y"].shape == (2, 2) and (arrays["C"] > 0).all()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_pause_then_resume_reproduces_the_uninterrupted_curve(tmp_path, tiny, qa):
    storage = _storage(tmp_path)
    obj = SFTObjective(tiny, qa, max_epochs=3, metric="eval_loss", checkpoint_dir=tmp_path / "ck")
    cfg = _config()

    full = optuna.create_study(direction="minimize", storage=storage, study_name="full")
    full.enqueue_trial(cfg)
    full.optimize(obj, n_trials=1)
    reference = full.trials[0].intermediate_values

    # a pruner that always says stop: the run pauses after epoch 1
    paused = optuna.create_study(
        direction="minimize", storage=storage, study_name="paused", pruner=optuna.pruners.ThresholdPruner(upper=0.0)
    )
    paused.enqueue_trial(cfg)
    paused.optimize(obj, n_trials=1)
    parent = paused.trials[0]
    assert parent.state == TrialState.PRUNED
    assert sorted(parent.intermediate_values) == [1]
    folder = Path(parent.user_attrs[contract.CHECKPOINT])
    assert folder.is_dir() and folder.parent.parent == (tmp_path / "ck").resolve()
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json",
            "rng.safetensors", "quicktune_checkpoint.json"} <= _files(folder)
    # nothing pickled: only safetensors, JSON and PEFT's README model card
    assert {p.suffix for p in folder.iterdir()} <= {".safetensors", ".json", ".md"}
    assert json.loads((folder / "quicktune_checkpoint.json").read_text())["step"] == 1

    # what the QuickTune sampler does to thaw a paused run
    thaw = optuna.load_study(study_name="paused", storage=storage, pruner=optuna.pruners.NopPruner())
    thaw.enqueue_trial(
        parent.params, user_attrs={contract.RESUME_OF: parent.number, contract.CHECKPOINT: str(folder)}
    )
    thaw.optimize(obj, n_trials=1)
    child = thaw.trials[1]
    assert child.state == TrialState.COMPLETE, child.user_attrs.get(FAIL_REASON)
    assert sorted(child.intermediate_values) == [2, 3]
    assert len(child.user_attrs[contract.COST]) == 2
    for step in (2, 3):
        assert child.intermediate_values[step] == pytest.approx(reference[step], rel=1e-4)
    assert parent.intermediate_values[1] == pytest.approx(reference[1], rel=1e-6)
    assert math.isfinite(child.user_attrs[TEST_SCORE])

    md = MetaDataset.from_storage(storage, ["paused"])
    (run,) = md.runs
    assert run.trials == (parent.number, child.number)
    assert run.curve.tolist() == pytest.approx([reference[s] for s in (1, 2, 3)], rel=1e-4)
    assert run.cost[1] > run.cost[0]  # the child's costs continue after the parent's


def test_step_fidelity_pauses_mid_epoch_and_resumes(tmp_path, tiny, qa):
    # 60 examples / batch 8 = 8 steps per epoch; evaluating every 3 steps pauses mid-epoch.
    storage = _storage(tmp_path)
    obj = SFTObjective(tiny, qa, eval_every_steps=3, max_steps=9, metric="token_f1",
                       checkpoint_dir=tmp_path / "ck", max_new_tokens=4, evaluate_test=False)
    assert (obj.fidelity_unit, obj.fidelity_max) == ("step", 3)
    cfg = _config()
    full = optuna.create_study(direction="maximize", storage=storage, study_name="full")
    full.enqueue_trial(cfg)
    full.optimize(obj, n_trials=1)
    assert full.user_attrs[contract.FIDELITY] == {"unit": "step", "max": 3}
    reference = full.trials[0].user_attrs[VAL_METRICS]
    assert sorted(full.trials[0].intermediate_values) == [1, 2, 3]
    assert TEST_SCORE not in full.trials[0].user_attrs

    paused = optuna.create_study(direction="maximize", storage=storage, study_name="paused",
                                 pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    paused.enqueue_trial(cfg)
    paused.optimize(obj, n_trials=1)
    parent = paused.trials[0]
    assert parent.state == TrialState.PRUNED
    thaw = optuna.load_study(study_name="paused", storage=storage)
    thaw.enqueue_trial(parent.params, user_attrs={contract.RESUME_OF: parent.number,
                                                  contract.CHECKPOINT: parent.user_attrs[contract.CHECKPOINT]})
    thaw.optimize(obj, n_trials=1)
    child = thaw.trials[1]
    assert sorted(child.intermediate_values) == [2, 3]
    # token F1 of generations is too coarse to compare, the validation loss is not
    resumed = child.user_attrs[VAL_METRICS]
    for ref, got in zip(reference[1:], resumed):
        assert got["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-4)


def test_nan_loss_fails_the_trial_and_the_study_goes_on(tmp_path, tiny, qa):
    # adam_epsilon=0 divides 0 by 0 in the first AdamW update of LoRA-A (whose gradient is 0 while
    # LoRA-B is still 0): a real, deterministic NaN.  'tag' is a parameter no trainer field uses.
    space = SearchSpace({
        "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
        "adam_epsilon": CategoricalDistribution([0.0, 1e-8]),
        "tag": CategoricalDistribution(["a", "b"]),
    }, name="nan-space")
    obj = SFTObjective(tiny, qa, max_epochs=1, metric="eval_loss", space=space, checkpoint_dir=tmp_path / "ck")
    assert obj.unused_params == ["tag"]
    study = optuna.create_study(direction="minimize", storage=_storage(tmp_path), study_name="nan")
    study.enqueue_trial({"learning_rate": 1e-3, "adam_epsilon": 0.0, "tag": "a"})
    study.enqueue_trial({"learning_rate": 1e-3, "adam_epsilon": 1e-8, "tag": "b"})
    study.optimize(obj, n_trials=2)
    failed, ok = study.trials
    assert failed.state == TrialState.FAIL
    assert "NonFiniteLossError" in failed.user_attrs[FAIL_REASON] and "nan" in failed.user_attrs[FAIL_REASON]
    assert ok.state == TrialState.COMPLETE and math.isfinite(ok.value)
    assert len(MetaDataset.from_storage(_storage(tmp_path)).runs) == 1  # the failed trial is not a curve

    strict = SFTObjective(tiny, qa, max_epochs=1, metric="eval_loss", space=space, on_failure="raise")
    study.enqueue_trial({"learning_rate": 1e-3, "adam_epsilon": 0.0, "tag": "a"})
    with pytest.raises(NonFiniteLossError, match="diverged"):
        study.optimize(strict, n_trials=1)
    assert study.trials[-1].state == TrialState.FAIL


class _OutOfMemoryOnce(TrainerCallback):
    """Raises the error CUDA raises, once, at the first optimizer step of the first trial.

    It also keeps weak references to every trial's model, to check they are released.
    """

    def __init__(self) -> None:
        self.fired = False
        self.models: list[weakref.ref] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.models.append(weakref.ref(model))

    def on_step_end(self, args, state, control, **kwargs):
        if not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_fails_the_trial_and_the_study_goes_on(tmp_path, tiny, qa):
    watcher = _OutOfMemoryOnce()
    obj = SFTObjective(tiny, qa, max_epochs=1, metric="eval_loss", callbacks=[watcher], evaluate_test=False)
    study = optuna.create_study(direction="minimize")
    study.enqueue_trial(_config())
    study.enqueue_trial(_config())
    study.optimize(obj, n_trials=2)
    oom, ok = study.trials
    assert oom.state == TrialState.FAIL
    reason = oom.user_attrs[FAIL_REASON]
    assert "TrialOutOfMemoryError" in reason and "per_device_train_batch_size=8" in reason
    assert ok.state == TrialState.COMPLETE
    # both trials' models (the failed one included) were released when their trial ended
    gc.collect()
    assert len(watcher.models) == 2 and all(ref() is None for ref in watcher.models)


def test_bad_input_fails_before_training(tmp_path, tiny, qa):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        SFTObjective(tmp_path / "no-model", qa)
    with pytest.raises(TRLObjectiveInputError, match="QADataset"):
        SFTObjective(tiny, toy_qa_records(3))
    with pytest.raises(TRLObjectiveInputError, match="Unknown metric"):
        SFTObjective(tiny, qa, metric="bleu")
    with pytest.raises(TRLObjectiveInputError, match="max_epochs"):
        SFTObjective(tiny, qa, max_epochs=0)
    with pytest.raises(TRLObjectiveInputError, match="max_steps >= eval_every_steps"):
        SFTObjective(tiny, qa, eval_every_steps=5)

    obj = SFTObjective(tiny, qa, max_epochs=2, metric="exact_match", checkpoint_dir=tmp_path / "ck")
    wrong_direction = optuna.create_study(direction="minimize")
    with pytest.raises(StudyMismatchError, match="direction='maximize'"):
        wrong_direction.optimize(obj, n_trials=1)
    assert wrong_direction.trials[0].intermediate_values == {}

    other_task = optuna.create_study(direction="maximize")
    contract.describe_task(other_task, dataset="another-dataset", model=tiny.name, metric="exact_match",
                           fidelity_max=2)
    with pytest.raises(StudyMismatchError, match="dataset: study has 'another-dataset'"):
        other_task.optimize(obj, n_trials=1)

    resume = optuna.create_study(direction="maximize")
    resume.enqueue_trial(_config(), user_attrs={contract.RESUME_OF: 0, contract.CHECKPOINT: str(tmp_path / "gone")})
    with pytest.raises(TRLObjectiveInputError, match="does not exist"):
        resume.optimize(obj, n_trials=1)
    resume.enqueue_trial(_config(), user_attrs={contract.RESUME_OF: 0})
    with pytest.raises(TRLObjectiveInputError, match="no 'quicktune.checkpoint'"):
        resume.optimize(obj, n_trials=1)
    assert all(t.intermediate_values == {} for t in resume.trials)


def test_any_space_maps_known_names_and_ignores_the_rest(tiny, qa):
    space = SearchSpace({
        "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
        "lora_alpha": CategoricalDistribution([8, 64]),
        "warmup_ratio": FloatDistribution(0.0, 0.2),
        "target_modules": CategoricalDistribution(["attention_mlp"]),
        "prompt_style": CategoricalDistribution(["terse", "verbose"]),
    }, name="custom")
    obj = SFTObjective(tiny, qa, space=space)
    lora, sft = obj.training_settings(
        {"learning_rate": 3e-4, "lora_alpha": 64, "warmup_ratio": 0.1, "target_modules": "attention_mlp",
         "prompt_style": "terse"}
    )
    assert lora["lora_alpha"] == 64.0 and lora["r"] == DEFAULT_LORA_CONFIG["lora_r"]
    assert "gate_up_proj" in lora["target_modules"] and "qkv_proj" in lora["target_modules"]
    assert sft["learning_rate"] == 3e-4 and sft["warmup_steps"] == 0.1 and "warmup_ratio" not in sft
    assert sft["per_device_train_batch_size"] == DEFAULT_LORA_CONFIG["per_device_train_batch_size"]
    assert "prompt_style" not in lora and "prompt_style" not in sft
    assert obj.unused_params == ["prompt_style"]
    # the default space: alpha is ratio * r
    lora, _ = SFTObjective(tiny, qa).training_settings(_config(lora_r=8, lora_alpha_ratio=4.0))
    assert lora["lora_alpha"] == 32.0 and lora["r"] == 8
