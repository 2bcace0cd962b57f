"""trl_objectives: QA loading, splits, formatting, metrics and meta-features (no training here)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

from trl_objectives import (  # noqa: E402
    METAFEATURE_NAMES,
    DatasetFormatError,
    EmptySplitError,
    compute_metafeatures,
    exact_match,
    format_prompt_completion,
    load_qa_dataset,
    normalize_answer,
    prompt_input_ids,
    score_answers,
    token_f1,
    toy_qa_records,
)
from trl_objectives.models import train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return toy_qa_records(6)


@pytest.fixture(scope="module")
def tokenizer(records):
    return train_tokenizer([r["question"] for r in records] + [r["answer"] for r in records], vocab_size=400)


def test_paraphrase_design_gives_10_1_1_per_fact(records):
    ds = load_qa_dataset(records, name="toy", seed=3)
    assert ds.sizes() == {"train": 60, "validation": 6, "test": 6}
    for split, expected in (("train", 10), ("validation", 1), ("test", 1)):
        counts = Counter(getattr(ds, split)["fact_id"])
        assert set(counts.values()) == {expected}, split
    # every question lands in exactly one split
    seen = [q for split in (ds.train, ds.validation, ds.test) for q in split["question"]]
    assert sorted(seen) == sorted(r["question"] for r in records)


def test_splits_are_deterministic_per_seed(records):
    a = load_qa_dataset(records, seed=1)
    b = load_qa_dataset(records, seed=1)
    c = load_qa_dataset(records, seed=2)
    assert list(a.validation["question"]) == list(b.validation["question"])
    assert list(a.train["question"]) == list(b.train["question"])
    assert list(a.validation["question"]) != list(c.validation["question"])


def test_random_split_without_facts(records):
    ds = load_qa_dataset(records, fact_field=None, split=(0.8, 0.1, 0.1), seed=0)
    assert ds.sizes() == {"train": 58, "validation": 7, "test": 7}
    assert "fact_id" not in ds.train.column_names


def test_split_column_is_used_as_given():
    rows = [{"q": f"q{i}", "a": f"a{i}", "part": ["train", "val", "test"][i % 3]} for i in range(9)]
    ds = load_qa_dataset(rows, question_field="q", answer_field="a", split_field="part")
    assert ds.sizes() == {"train": 3, "validation": 3, "test": 3}
    assert list(ds.validation["question"]) == ["q1", "q4", "q7"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "dataset", "saved-folder"])
def test_loads_files_and_datasets_with_custom_field_names(tmp_path, records, fmt):
    rows = [{"prompt_text": r["question"], "gold": r["answer"], "fact_id": r["fact_id"]} for r in records]
    if fmt == "jsonl":
        src = tmp_path / "qa.jsonl"
        src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "json":
        src = tmp_path / "qa.json"
        src.write_text(json.dumps({"data": rows}))
    elif fmt == "csv":
        src = tmp_path / "qa.csv"
        with src.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "saved-folder":
        src = tmp_path / "qa"
        datasets.Dataset.from_list(rows).save_to_disk(str(src))
    else:
        src = datasets.Dataset.from_list(rows)
    ds = load_qa_dataset(src, question_field="prompt_text", answer_field="gold")
    assert ds.sizes() == {"train": 60, "validation": 6, "test": 6}
    if fmt != "dataset":
        assert ds.name == "qa"


def test_a_saved_dataset_dict_keeps_its_splits(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    folder = tmp_path / "mine"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(rows[:6]),
        "validation": datasets.Dataset.from_list(rows[6:8]),
        "test": datasets.Dataset.from_list(rows[8:]),
    }).save_to_disk(str(folder))
    ds = load_qa_dataset(folder)
    assert ds.name == "mine" and list(ds.test["question"]) == ["q8", "q9"]
    (tmp_path / "not-a-dataset").mkdir()
    with pytest.raises(DatasetFormatError, match="not a dataset saved with datasets' save_to_disk"):
        load_qa_dataset(tmp_path / "not-a-dataset")


@pytest.mark.parametrize("content", ["[1, 2, 3]", '[{"question": "q", "answer": "a"}, "text"]', "[[1, 2]]"])
def test_rows_that_are_not_objects_are_named(tmp_path, content):
    path = tmp_path / "qa.json"
    path.write_text(content)
    with pytest.raises(DatasetFormatError, match=r"Row \d+ of .*qa.json is not an object.*\{\"question\""):
        load_qa_dataset(path)
    with pytest.raises(DatasetFormatError, match=r"Row \d+ of the QA dataset is not an object"):
        load_qa_dataset(json.loads(content))


@pytest.mark.parametrize("field, value", [("answer", ["Paris", "paris"]), ("question", {"text": "q"})])
def test_list_or_object_answers_are_refused_not_stringified(records, field, value):
    rows = [dict(r) for r in records]
    rows[3][field] = value
    with pytest.raises(DatasetFormatError, match=rf"Row 3: field '{field}' is not text.*one string per row"):
        load_qa_dataset(rows)
    rows[3][field] = 42  # a number is a fine answer: it becomes its text
    assert "42" in [*load_qa_dataset(rows).train[field], *load_qa_dataset(rows).validation[field],
                    *load_qa_dataset(rows).test[field]]


def test_missing_fields_name_what_exists(records):
    with pytest.raises(DatasetFormatError, match=r"lacks the fields \['query'\].*question_field="):
        load_qa_dataset(records, question_field="query")


def test_empty_answers_are_reported_with_rows(records):
    bad = [dict(r) for r in records]
    bad[5]["answer"] = "  "
    with pytest.raises(DatasetFormatError, match=r"row indices \[5\]"):
        load_qa_dataset(bad)


def test_empty_split_and_empty_dataset_raise():
    with pytest.raises(EmptySplitError, match="no example"):
        load_qa_dataset([])
    rows = [{"question": "q", "answer": "a", "split": "train"}]
    with pytest.raises(EmptySplitError, match="'validation' split .* is empty"):
        load_qa_dataset(rows)
    with pytest.raises(EmptySplitError, match="too few"):
        load_qa_dataset([{"question": "q", "answer": "a"}, {"question": "r", "answer": "b"}], fact_field=None)


def test_facts_with_too_few_paraphrases_raise():
    rows = [{"question": f"q{i}", "answer": "a", "fact_id": "f"} for i in range(2)]
    with pytest.raises(DatasetFormatError, match="fewer than 3 questions"):
        load_qa_dataset(rows)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_qa_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "qa.xml").write_text("<qa/>")
    with pytest.raises(DatasetFormatError, match="Unknown dataset file type"):
        load_qa_dataset(tmp_path / "qa.xml")


def test_chat_formatting_matches_trl_tokenization(records, tokenizer):
    ds = load_qa_dataset(records)
    fmt = format_prompt_completion(ds.validation, tokenizer, system_prompt="Be brief.")
    row = fmt[0]
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": row["question"]}]
    assert row["completion"] == [{"role": "assistant", "content": row["answer"]}]
    ids = prompt_input_ids(tokenizer, row["prompt"])
    text = tokenizer.decode(ids)
    assert text.endswith("<|assistant|>\n") and row["question"] in text


def test_plain_formatting_without_chat_template(records, tokenizer):
    plain = train_tokenizer(["hello world"], vocab_size=300)
    plain.chat_template = None
    ds = load_qa_dataset(records)
    row = format_prompt_completion(ds.test, plain)[0]
    assert row["prompt"] == f"Question: {row['question']}\nAnswer:"
    assert row["completion"] == " " + row["answer"]


def test_answer_metrics():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert score_answers(["42", "Lyon"], ["42", "Osaka"]) == {"exact_match": 0.5, "token_f1": 0.5}
    with pytest.raises(ValueError):
        score_answers(["a"], ["a", "b"])


def test_metafeatures_are_complete_finite_and_deterministic(records, tokenizer):
    ds = load_qa_dataset(records)
    a = compute_metafeatures(ds, tokenizer)
    b = compute_metafeatures(load_qa_dataset(records), tokenizer)
    assert list(a) == list(METAFEATURE_NAMES)
    assert a == b
    assert all(math.isfinite(v) for v in a.values())
    assert a["questions_per_fact"] == 12.0
    assert a["log_n_train"] == pytest.approx(math.log1p(60))
    assert 0.0 < a["answer_numeric_frac"] < 1.0  # toy facts mix numbers, cities and colours
    assert a["answer_short_frac"] == 1.0 and a["answer_long_frac"] == 0.0
    # subsampling is seeded: the same seed gives the same features
    s1 = compute_metafeatures(ds, tokenizer, max_examples=20, seed=5)
    s2 = compute_metafeatures(ds, tokenizer, max_examples=20, seed=5)
    assert s1 == s2
