"""Cheap, deterministic descriptors of a QA dataset, computed with the base model's tokenizer.

They go into the study's ``quicktune.metafeatures`` so that meta-learned surrogates can tell tasks
apart (a dataset-aware portfolio, and a cost model that knows how many tokens an epoch holds).
Every task of a meta-dataset must have the same names: :data:`METAFEATURE_NAMES` is that list and
:func:`compute_metafeatures` always returns all of them, in that order, as finite floats.

Sizes are ``log1p`` counts, because surrogates compare datasets of 100 and 100,000 examples and a
linear count would make every small dataset look alike.  Token statistics use the tokenizer of the
model being tuned, since the cost and difficulty of a dataset depend on how that model splits it.
Large datasets are subsampled (seeded) so the features stay cheap.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from trl_objectives.data import QADataset

__all__ = ["METAFEATURE_NAMES", "compute_metafeatures"]

METAFEATURE_NAMES: tuple[str, ...] = (
    "log_n_train",
    "log_n_validation",
    "log_n_test",
    "log_n_facts",
    "questions_per_fact",
    "log_train_tokens",
    "question_tokens_mean",
    "question_tokens_std",
    "question_tokens_p90",
    "answer_tokens_mean",
    "answer_tokens_std",
    "answer_tokens_p90",
    "answer_tokens_max",
    "question_answer_vocab_jaccard",
    "answer_in_question_token_frac",
    "answer_numeric_frac",
    "answer_short_frac",
    "answer_long_frac",
    "answer_unique_frac",
    "vocab_type_token_ratio",
)

_NUMERIC = re.compile(r"^[\s$€£+-]*\d[\d,.\s:/%-]*[a-zA-Z%]{0,3}\s*$")


def _token_lengths(tokenizer: "PreTrainedTokenizerBase", texts: Sequence[str]) -> tuple[np.ndarray, list[list[int]]]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.array([len(x) for x in ids], dtype=np.float64), ids


def compute_metafeatures(
    dataset: "QADataset",
    tokenizer: "PreTrainedTokenizerBase",
    *,
    max_examples: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """The :data:`METAFEATURE_NAMES` descriptors of ``dataset`` (train split, plus split sizes).

    Args:
        dataset: The QA dataset (its train split is described; sizes cover all splits).
        tokenizer: The tokenizer of the model being tuned.
        max_examples: Subsample the train split to this many examples (seeded) for token stats.
        seed: Seed of that subsample.

    Answer types: *numeric* answers are numbers with at most a short unit ("42", "3.5 kg", "1999");
    *short* answers have at most 3 words; *long* answers more than 20 tokens.
    """
    train = dataset.train
    n_train = len(train)
    idx = list(range(n_train))
    if n_train > max_examples:
        idx = sorted(random.Random(seed).sample(idx, max_examples))
    questions = [train[i]["question"] for i in idx] if n_train > max_examples else list(train["question"])
    answers = [train[i]["answer"] for i in idx] if n_train > max_examples else list(train["answer"])

    q_len, q_ids = _token_lengths(tokenizer, questions)
    a_len, a_ids = _token_lengths(tokenizer, answers)
    q_vocab = set().union(*map(set, q_ids)) if q_ids else set()
    a_vocab = set().union(*map(set, a_ids)) if a_ids else set()
    union = q_vocab | a_vocab
    jaccard = len(q_vocab & a_vocab) / len(union) if union else 0.0
    in_question = []
    for q, a in zip(q_ids, a_ids):
        q_set = set(q)
        in_question.append(sum(1 for t in a if t in q_set) / len(a) if a else 0.0)
    all_tokens = sum(len(x) for x in q_ids) + sum(len(x) for x in a_ids)
    ttr = len(union) / all_tokens if all_tokens else 0.0

    all_facts: set[str] = set()
    n_rows = 0
    for split in (dataset.train, dataset.validation, dataset.test):
        n_rows += len(split)
        if "fact_id" in split.column_names:
            all_facts.update(list(split["fact_id"]))
    n_facts = len(all_facts) if all_facts else n_rows  # without facts every question is its own fact
    scale = n_train / len(idx) if idx else 1.0

    feats = {
        "log_n_train": math.log1p(n_train),
        "log_n_validation": math.log1p(len(dataset.validation)),
        "log_n_test": math.log1p(len(dataset.test)),
        "log_n_facts": math.log1p(n_facts),
        "questions_per_fact": n_rows / n_facts if n_facts else 1.0,
        "log_train_tokens": math.log1p(float(q_len.sum() + a_len.sum()) * scale),
        "question_tokens_mean": float(q_len.mean()),
        "question_tokens_std": float(q_len.std()),
        "question_tokens_p90": float(np.percentile(q_len, 90)),
        "answer_tokens_mean": float(a_len.mean()),
        "answer_tokens_std": float(a_len.std()),
        "answer_tokens_p90": float(np.percentile(a_len, 90)),
        "answer_tokens_max": float(a_len.max()),
        "question_answer_vocab_jaccard": float(jaccard),
        "answer_in_question_token_frac": float(np.mean(in_question)),
        "answer_numeric_frac": float(np.mean([bool(_NUMERIC.match(a)) for a in answers])),
        "answer_short_frac": float(np.mean([len(a.split()) <= 3 for a in answers])),
        "answer_long_frac": float(np.mean(a_len > 20)),
        "answer_unique_frac": len(set(answers)) / len(answers),
        "vocab_type_token_ratio": float(ttr),
    }
    return {k: float(feats[k]) for k in METAFEATURE_NAMES}
