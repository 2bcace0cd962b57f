"""What prompt format a task's model was trained with, recorded with the task.

A base model such as Gemma 3 270M has no chat template, so ``format_prompt_completion`` gives it
plain text (``Question: ...\nAnswer:`` then `` <answer><eos>``) while an instruct model's examples
go through its chat template. Scores under two formats are not comparable (a base model's zero-shot
answers run on into the next "Question:"), so each study says which format its runs used.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

from optuna_quicktune.contract import PROMPT_FORMAT

__all__ = ["PROMPT_FORMAT", "prompt_format", "record_prompt_format"]


def prompt_format(tokenizer: "PreTrainedTokenizerBase", system_prompt: str | None = None) -> dict[str, str]:
    """How a QA example becomes a training prompt for this tokenizer (``style``: plain or chat_template).

    The strings are made by the formatter itself (``format_prompt_completion`` on a placeholder row),
    so the record cannot drift from what training sees.
    """
    import datasets

    from trl_objectives.data import format_prompt_completion, has_chat_template

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
