"""Real question-answer pairs that ship inside PyPI packages, read offline as QA tasks.

Why: fact tables with templated paraphrases are the tasks we control, but a surrogate meant for
users' data must also see questions that people wrote, whose answers the model cannot memorise
from paraphrases of the same fact (held-out questions ask about other facts), so the validation
loss does not collapse to zero and still separates configurations at the end of training.

Source so far: **FanOutQA** (Zhu et al., ACL 2024), PyPI package ``fanoutqa`` (code MIT, data
CC BY-SA 4.0, ``fanoutqa/data/LICENSE``). Its dev set (310 multi-hop questions about English
Wikipedia) comes with human-written single-hop sub-questions and their answers; the ~1,800
sub-questions with a scalar answer (a name, a number, a date, yes/no) are the QA pairs used
here, grouped by the first category of the first top-level question that asks them. The package is located without being
imported (its ``__init__`` imports network clients we do not need) and only its JSON is read; the
data is never copied into this repository or into a collection storage (studies hold metrics,
not questions), which keeps the share-alike terms with the package.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["FANOUTQA_LICENSE", "FANOUTQA_SOURCE", "fanoutqa_pairs", "fanoutqa_available"]

FANOUTQA_SOURCE = "fanoutqa (PyPI) data/fanout-final-dev.json: FanOutQA sub-questions (Zhu et al., 2024)"
FANOUTQA_LICENSE = "CC BY-SA 4.0 (FanOutQA data); fanoutqa package code MIT"


def _package_data(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def fanoutqa_available() -> bool:
    """Whether the ``fanoutqa`` package (and its dev set) is installed."""
    folder = _package_data("fanoutqa")
    return folder is not None and (folder / "fanout-final-dev.json").is_file()


def _walk(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for s in steps:
        yield s
        yield from _walk(s.get("decomposition") or [])


def _answer_text(answer: Any) -> str | None:
    """A scalar answer as text; lists and tables (answers of several facts at once) are skipped."""
    if isinstance(answer, bool):
        return "Yes" if answer else "No"
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, float):
        return f"{answer:g}"
    if isinstance(answer, str) and answer.strip():
        return answer.strip()
    return None


@lru_cache(maxsize=1)
def _fanoutqa_by_category() -> dict[str, list[tuple[str, str]]]:
    folder = _package_data("fanoutqa")
    if folder is None or not (folder / "fanout-final-dev.json").is_file():
        raise ValueError(
            "The FanOutQA tasks need the 'fanoutqa' package (its data ships inside it): "
            "pip install --no-deps fanoutqa (or optuna-quicktune[realqa])."
        )
    rows = json.loads((folder / "fanout-final-dev.json").read_text(encoding="utf-8"))
    out: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()  # a sub-question shared by several top-level questions counts once
    for row in rows:
        category = (row.get("categories") or ["Other"])[0]
        for step in _walk(row.get("decomposition") or []):
            answer = _answer_text(step.get("answer"))
            question = str(step.get("question") or "").strip()
            if answer is not None and question and question not in seen:
                seen.add(question)
                out.setdefault(category, []).append((question, answer))
    return out


def fanoutqa_pairs(categories: tuple[str, ...] | None = None, *, exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """FanOutQA (question, answer) pairs of the given top-level categories (all when ``None``).

    Raises:
        ValueError: the ``fanoutqa`` package is not installed (the message says how to install it).
    """
    data = _fanoutqa_by_category()
    keep = [c for c in sorted(data) if (categories is None or c in categories) and c not in exclude]
    return [pair for c in keep for pair in data[c]]
