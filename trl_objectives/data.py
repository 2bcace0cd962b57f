"""Question-answering datasets for LoRA SFT: loading, splitting and prompt/completion formatting.

A QA dataset is a table with (at least) a question and an answer column.  It becomes a
:class:`QADataset` of three ``datasets.Dataset`` splits with the columns ``question``, ``answer``
and, when present, ``fact_id``.

Splits (deterministic for a given ``seed``):

* a ``split`` column with values ``train`` / ``validation`` (or ``val``/``dev``) / ``test`` is used
  as it is;
* with a fact column (``fact_id`` by default, when present) the *paraphrase design* of
  Strangmann et al. (2024) is applied: every fact is asked several ways, and for each fact one
  question goes to validation, one to test and the rest (10 of 12) to training.  The model must
  therefore answer paraphrases it never saw about facts it learned, which is what the tuning
  should select for;
* otherwise examples are shuffled and split by fractions (``split=(0.8, 0.1, 0.1)``).

Formatting: with a tokenizer that has a chat template the examples become *conversational*
prompt/completion pairs (``[{"role": "user", ...}]`` / ``[{"role": "assistant", ...}]``) that TRL
renders with that template (and the loss covers the completion only); without one they become
plain text ``"Question: ...\\nAnswer:"`` / ``" ..."`` (:mod:`trl_objectives.prompts`, re-exported here
with :func:`~trl_objectives.datagen.toy_qa_records`, the toy paraphrase set of the tests and demos).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl_objectives.datagen import toy_qa_records
from trl_objectives.errors import DatasetFormatError, EmptySplitError
from trl_objectives.prompts import format_prompt_completion, has_chat_template, prompt_input_ids

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = [
    "QADataset",
    "load_qa_dataset",
    "format_prompt_completion",
    "prompt_input_ids",
    "has_chat_template",
    "SPLITS",
    "toy_qa_records",
]

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}


@dataclass
class QADataset:
    """Train/validation/test splits of a QA dataset (columns ``question``, ``answer`` [, ``fact_id``]).

    Attributes:
        train, validation, test: The splits.
        name: Written into the study's ``quicktune.task`` as the dataset name.
        system_prompt: Optional system message put before every question when formatting.
    """

    train: "datasets.Dataset"
    validation: "datasets.Dataset"
    test: "datasets.Dataset"
    name: str = "qa"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        for split in SPLITS:
            ds = getattr(self, split)
            if len(ds) == 0:
                raise EmptySplitError(
                    f"The {split!r} split of QA dataset {self.name!r} is empty. Give more examples, or "
                    "change split fractions / the 'split' column so that every split gets at least one."
                )
            missing = {"question", "answer"} - set(ds.column_names)
            if missing:
                raise DatasetFormatError(
                    f"The {split!r} split of {self.name!r} lacks the columns {sorted(missing)} "
                    f"(it has {ds.column_names})."
                )

    def split(self, name: str) -> "datasets.Dataset":
        """A split by name (``train``, ``validation``/``val``, ``test``)."""
        key = _SPLIT_ALIASES.get(name)
        if key is None:
            raise KeyError(f"Unknown split {name!r}; use one of {SPLITS}.")
        return getattr(self, key)

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}

    def __repr__(self) -> str:
        return f"QADataset(name={self.name!r}, sizes={self.sizes()})"


# ---------------------------------------------------------------------- loading
def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            records = []
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DatasetFormatError(f"{path}, line {lineno}: not valid JSON ({e}).") from e
            return records
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, Mapping):
                for key in ("data", "examples", "records", "rows"):
                    if isinstance(data.get(key), list):
                        data = data[key]
                        break
                else:
                    # column-oriented {"question": [...], "answer": [...]}
                    if data and all(isinstance(v, list) for v in data.values()):
                        n = len(next(iter(data.values())))
                        data = [{k: v[i] for k, v in data.items()} for i in range(n)]
            if not isinstance(data, list):
                raise DatasetFormatError(
                    f"{path} holds a JSON {type(data).__name__}; expected a list of objects "
                    "([{'question': ..., 'answer': ...}, ...]) or {'data': [...]}."
                )
            return data
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetFormatError(f"Cannot read {path}: {e}") from e
    raise DatasetFormatError(
        f"Unknown dataset file type {suffix!r} of {path}; use .json, .jsonl, .csv or .tsv, or pass a "
        "datasets.Dataset / list of dicts."
    )


def _records_of(source: Any, split_field: str | None) -> tuple[list[dict[str, Any]], str]:
    import datasets

    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _records_of(_load_from_disk(path), split_field)[0], path.name
        if not path.is_file():
            raise DatasetFormatError(
                f"Dataset {str(path)!r} does not exist; give a .json/.jsonl/.csv/.tsv file or a folder "
                "saved with datasets' save_to_disk."
            )
        return _objects(_read_records(path), str(path)), path.stem
    if isinstance(source, datasets.DatasetDict):
        if split_field is None:
            raise DatasetFormatError(
                f"Got a DatasetDict with splits {list(source)} but split_field=None; pass split_field='split' "
                "to keep its splits, or one Dataset to split it here."
            )
        return [{**row, split_field: name} for name, part in source.items() for row in part.to_list()], "dataset"
    if isinstance(source, datasets.Dataset):
        return source.to_list(), "dataset"
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return _objects(source, "the QA dataset"), "records"
    raise DatasetFormatError(
        f"Cannot load a QA dataset from {type(source).__name__}; pass a path (.json/.jsonl/.csv, or a "
        "save_to_disk folder), a datasets.Dataset or DatasetDict, or a list of dicts."
    )


def _objects(rows: Sequence[Any], where: str) -> list[dict[str, Any]]:
    """The rows as dicts, or an error naming the first row that is not an object."""
    not_objects = [i for i, r in enumerate(rows) if not isinstance(r, Mapping)]
    if not_objects:
        i = not_objects[0]
        raise DatasetFormatError(
            f"Row {i} of {where} is not an object but {type(rows[i]).__name__} {str(rows[i])[:60]!r} "
            f"({len(not_objects)} of {len(rows)} rows are not). Each row must be an object like "
            '{"question": "...", "answer": "..."}.'
        )
    return [dict(r) for r in rows]


def _load_from_disk(path: Path) -> Any:
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DatasetFormatError(
            f"{path} is a folder but not a dataset saved with datasets' save_to_disk ({e}); give that "
            "folder, or a .json/.jsonl/.csv/.tsv file."
        ) from e


def _text(value: Any, row: int, field: str) -> str | None:
    """A question or answer as stripped text; ``None`` when missing or blank; error when not a scalar."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict)):
        raise DatasetFormatError(
            f"Row {row}: field {field!r} is not text but {type(value).__name__} {str(value)[:80]!r}. Give one "
            f"string per row (e.g. the first of several reference answers, or a separate row for each)."
        )
    return str(value).strip() or None


def load_qa_dataset(
    source: "str | os.PathLike[str] | datasets.Dataset | Sequence[Mapping[str, Any]]",
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    fact_field: str | None = "fact_id",
    split_field: str | None = "split",
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    n_validation_per_fact: int = 1,
    n_test_per_fact: int = 1,
    seed: int = 0,
    name: str | None = None,
    system_prompt: str | None = None,
    max_examples: int | None = None,
) -> QADataset:
    """Load a QA dataset and split it deterministically (see the module docstring for the rules).

    Args:
        source: A ``.json`` / ``.jsonl`` / ``.csv`` / ``.tsv`` file, a folder written by
            ``datasets``' ``save_to_disk`` (a ``DatasetDict``'s split names become the split
            column), a ``datasets.Dataset`` / ``DatasetDict``, or a list of dicts.
        question_field, answer_field: Column names of the question and the answer.
        fact_field: Column that groups paraphrases of one fact (used when the column exists; pass
            ``None`` to ignore it).  Each fact then gives ``n_validation_per_fact`` questions to
            validation, ``n_test_per_fact`` to test and the rest to training (12 -> 10/1/1).
        split_field: Column with predefined split names (used when it exists; ``None`` to ignore).
        split: Train/validation/test fractions for a plain random split.
        seed: Seed of the shuffles (the same seed always gives the same splits).
        name: Dataset name for the study's ``quicktune.task`` (default: the file stem).
        system_prompt: Optional system message used when formatting prompts.
        max_examples: Keep at most this many examples (a seeded subsample, before splitting).

    Raises:
        DatasetFormatError: unreadable file, a row that is not an object, missing or empty
            question/answer fields, a question or answer that is a list or object (names the row).
        EmptySplitError: a split would be empty.
    """
    import datasets

    records, default_name = _records_of(source, split_field)
    if not records:
        raise EmptySplitError(f"The QA dataset {name or default_name!r} has no example.")
    columns = set().union(*(r.keys() for r in records[:1000]))
    missing = [f for f in (question_field, answer_field) if f not in columns]
    if missing:
        raise DatasetFormatError(
            f"The QA dataset lacks the fields {missing}; it has {sorted(columns)}. Pass "
            "question_field= and answer_field= with the names your data uses."
        )
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    use_fact = fact_field is not None and fact_field in columns
    use_split = split_field is not None and split_field in columns
    for i, r in enumerate(records):
        q, a = _text(r.get(question_field), i, question_field), _text(r.get(answer_field), i, answer_field)
        if q is None or a is None:
            bad.append(i)
            continue
        row: dict[str, Any] = {"question": q, "answer": a}
        if use_fact:
            row["fact_id"] = str(r.get(fact_field))
        if use_split:
            row["_split"] = str(r.get(split_field, "")).strip().lower()
        rows.append(row)
    if bad:
        raise DatasetFormatError(
            f"{len(bad)} example(s) have an empty or missing {question_field!r}/{answer_field!r} "
            f"(row indices {bad[:10]}{'...' if len(bad) > 10 else ''}); remove or fill them."
        )
    rng = random.Random(seed)
    if max_examples is not None and len(rows) > max_examples:
        rows = rng.sample(rows, max_examples)

    if use_split:
        parts = _split_by_column(rows, split_field or "split")
    elif use_fact:
        parts = _split_by_fact(rows, n_validation_per_fact, n_test_per_fact, rng)
    else:
        parts = _split_random(rows, split, rng)
    dsname = name or default_name
    for key in SPLITS:
        if not parts[key]:
            raise EmptySplitError(
                f"The {key!r} split of QA dataset {dsname!r} is empty. Give more examples, or change "
                "split fractions / the 'split' column so that every split gets at least one."
            )
    splits = {}
    for key in SPLITS:
        keep = ["question", "answer"] + (["fact_id"] if use_fact else [])
        splits[key] = datasets.Dataset.from_list(
            [{k: r[k] for k in keep} for r in parts[key]],
            features=datasets.Features({k: datasets.Value("string") for k in keep}),
        )
    return QADataset(**splits, name=dsname, system_prompt=system_prompt)


def _split_by_column(rows: list[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    parts: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    unknown = sorted({r["_split"] for r in rows if r["_split"] not in _SPLIT_ALIASES})
    if unknown:
        raise DatasetFormatError(
            f"Column {field!r} has values {unknown}; use train / validation / test (or pass "
            "split_field=None to split randomly)."
        )
    for r in rows:
        parts[_SPLIT_ALIASES[r["_split"]]].append(r)
    return parts


def _split_by_fact(
    rows: list[dict[str, Any]], n_val: int, n_test: int, rng: random.Random
) -> dict[str, list[dict[str, Any]]]:
    by_fact: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_fact[r["fact_id"]].append(r)
    too_small = sorted(f for f, qs in by_fact.items() if len(qs) < n_val + n_test + 1)
    if too_small:
        raise DatasetFormatError(
            f"Facts {too_small[:10]} have fewer than {n_val + n_test + 1} questions, so they cannot "
            f"give {n_val} validation, {n_test} test and at least one training question. Add "
            "paraphrases, drop those facts, or pass fact_field=None for a random split."
        )
    parts: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for fact in sorted(by_fact):
        qs = list(by_fact[fact])
        rng.shuffle(qs)
        parts["validation"].extend(qs[:n_val])
        parts["test"].extend(qs[n_val : n_val + n_test])
        parts["train"].extend(qs[n_val + n_test :])
    rng.shuffle(parts["train"])
    return parts


def _split_random(
    rows: list[dict[str, Any]], fractions: tuple[float, float, float], rng: random.Random
) -> dict[str, list[dict[str, Any]]]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DatasetFormatError(f"split must be three non-negative fractions (train, val, test), got {fractions}.")
    total = float(sum(fractions))
    rows = list(rows)
    rng.shuffle(rows)
    n = len(rows)
    n_val = int(round(n * fractions[1] / total))
    n_test = int(round(n * fractions[2] / total))
    if fractions[1] > 0:
        n_val = max(n_val, 1)
    if fractions[2] > 0:
        n_test = max(n_test, 1)
    if n - n_val - n_test < 1:
        raise EmptySplitError(
            f"{n} examples are too few for the split {fractions}: training would get none. Give more "
            "examples or change split=."
        )
    return {
        "validation": rows[:n_val],
        "test": rows[n_val : n_val + n_test],
        "train": rows[n_val + n_test :],
    }
