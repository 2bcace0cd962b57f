"""Scores of a finetuned model on QA splits: exact match and token F1 of greedy answers, and loss.

Answers are compared after SQuAD-style normalisation (lower case, no punctuation, no articles,
single spaces), because paraphrase QA should not reward or punish formatting.  Generation is greedy
(``do_sample=False``) so a score is a deterministic function of the weights: two evaluations of the
same adapter agree, and curves of a resumed run can be compared with an uninterrupted one.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from trl_objectives.data import prompt_input_ids

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "normalize_answer",
    "exact_match",
    "token_f1",
    "generate_answers",
    "score_answers",
    "evaluate_generation",
    "METRICS",
    "metric_direction",
    "canonical_metric",
]

#: Metrics an objective can report, and whether higher is better.
METRICS: dict[str, str] = {"exact_match": "maximize", "token_f1": "maximize", "eval_loss": "minimize"}
_METRIC_ALIASES = {"em": "exact_match", "f1": "token_f1", "loss": "eval_loss", "exact_match": "exact_match",
                   "token_f1": "token_f1", "eval_loss": "eval_loss"}

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def canonical_metric(name: str) -> str:
    """``"em"`` -> ``"exact_match"``, ``"f1"`` -> ``"token_f1"``, ``"loss"`` -> ``"eval_loss"``."""
    key = _METRIC_ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"Unknown metric {name!r}; use one of {sorted(METRICS)}.")
    return key


def metric_direction(name: str) -> str:
    """``"maximize"`` or ``"minimize"`` for a metric name."""
    return METRICS[canonical_metric(name)]


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace (SQuAD convention)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall of the normalised strings (bag of words)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_answers(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match and token F1 of paired predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise ValueError("No reference answer to score against.")
    n = len(references)
    return {
        "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
        "token_f1": sum(token_f1(p, r) for p, r in zip(predictions, references)) / n,
    }


def _stop_ids(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase") -> list[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, Iterable):
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        if tok in vocab:
            ids.add(int(vocab[tok]))
    return sorted(ids)


def generate_answers(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to prompts (strings or chat message lists, as made by ``format_prompt_completion``).

    Prompts are left-padded by hand (the tokenizer's padding side is left untouched) and decoded
    without special tokens; generation stops at EOS or the chat template's end-of-turn token, and the
    answer to a plain-text prompt (a model without a chat template) ends at its first line break.
    """
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = _stop_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = [prompt_input_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
                width = max(len(ids) for ids in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for i, ids in enumerate(batch):
                    input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention[i, width - len(ids) :] = 1
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=stop,
                    pad_token_id=pad_id,
                )
                for prompt, row in zip(prompts[start : start + batch_size], out[:, width:].tolist()):
                    cut = next((j for j, t in enumerate(row) if t in stop), len(row))
                    text = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
                    if isinstance(prompt, str):
                        # A plain "Question: ...\nAnswer:" prompt (a base model without a chat
                        # template): the answer is one line; a base model goes on with the next
                        # "Question:", which is not part of its answer.
                        text = text.split("\n", 1)[0].strip()
                    answers.append(text)
    finally:
        model.train(was_training)
    return answers


def evaluate_generation(
    model: "PreTrainedModel",
    tokenizer: "PreTrainedTokenizerBase",
    dataset: "datasets.Dataset",
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> dict[str, float]:
    """Exact match and token F1 of greedy answers on a formatted split (``prompt`` + ``answer`` columns)."""
    missing = {"prompt", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"evaluate_generation needs the columns {sorted(missing)}; format the split with "
            "trl_objectives.format_prompt_completion first."
        )
    predictions = generate_answers(
        model, tokenizer, list(dataset["prompt"]), max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return score_answers(predictions, list(dataset["answer"]))
