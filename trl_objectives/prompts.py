"""How a QA example becomes a training prompt, and which format a task's model was trained with.

:func:`format_prompt_completion` turns ``question``/``answer`` rows into TRL prompt/completion rows
and :func:`prompt_input_ids` tokenizes a prompt as TRL does (so generation sees the training context).

A base model such as Gemma 3 270M has no chat template, so ``format_prompt_completion`` gives it
plain text (``Question: ...\nAnswer:`` then `` <answer><eos>``) while an instruct model's examples
go through its chat template. Scores under two formats are not comparable (a base model's zero-shot
answers run on into the next "Question:"), so each study says which format its runs used.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from transformers import PreTrainedTokenizerBase

from optuna_quicktune.contract import PROMPT_FORMAT

__all__ = [
    "PROMPT_FORMAT", "format_prompt_completion", "has_chat_template", "prompt_format", "prompt_input_ids",
    "record_prompt_format",
]


def prompt_format(tokenizer: "PreTrainedTokenizerBase", system_prompt: str | None = None) -> dict[str, str]:
    """How a QA example becomes a training prompt for this tokenizer (``style``: plain or chat_template).

    The strings are made by the formatter itself (``format_prompt_completion`` on a placeholder row),
    so the record cannot drift from what training sees.
    """
    import datasets


    row = datasets.Dataset.from_list([{"question": "{question}", "answer": "{answer}"}])
    ex = format_prompt_completion(row, tokenizer, system_prompt=system_prompt)[0]
    if has_chat_template(tokenizer):
        rendered = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        return {"style": "chat_template", "rendered": str(rendered),
                "template_sha256": hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()[:16]}
    return {"style": "plain", "prompt": (tokenizer.bos_token or "") + ex["prompt"],
            "completion": ex["completion"] + (tokenizer.eos_token or ""),
            "answer_ends_at": "the first line break or EOS"}


def record_prompt_format(study: Any, tokenizer: "PreTrainedTokenizerBase", system_prompt: str | None = None) -> None:
    """Write :data:`PROMPT_FORMAT` into a study once (kept if present, like the task description)."""
    if PROMPT_FORMAT not in study.user_attrs:
        study.set_user_attr(PROMPT_FORMAT, prompt_format(tokenizer, system_prompt))


# ---------------------------------------------------------------------- formatting
def has_chat_template(tokenizer: "PreTrainedTokenizerBase") -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": question})
    return msgs


def format_prompt_completion(
    dataset: "datasets.Dataset",
    tokenizer: "PreTrainedTokenizerBase",
    *,
    system_prompt: str | None = None,
) -> "datasets.Dataset":
    """Turn ``question``/``answer`` rows into TRL prompt/completion rows (``answer`` is kept).

    With a chat template the rows are conversational, so TRL applies the template, ends the answer
    with the template's end-of-turn token, and masks the prompt out of the loss.  Without one they
    are plain strings; TRL then appends the EOS token to the completion.
    """
    chat = has_chat_template(tokenizer)

    def fmt(example: dict[str, Any]) -> dict[str, Any]:
        if chat:
            return {
                "prompt": _messages(example["question"], system_prompt),
                "completion": [{"role": "assistant", "content": example["answer"]}],
            }
        prefix = f"{system_prompt}\n\n" if system_prompt else ""
        return {"prompt": f"{prefix}Question: {example['question']}\nAnswer:", "completion": " " + example["answer"]}

    stale = [c for c in ("prompt", "completion") if c in dataset.column_names]
    return dataset.map(fmt, remove_columns=stale)


def prompt_input_ids(
    tokenizer: "PreTrainedTokenizerBase", prompt: str | list[dict[str, str]]
) -> list[int]:
    """Token ids of a prompt exactly as TRL's SFT preprocessing makes them (generation context)."""
    if isinstance(prompt, list):
        out = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])
