"""Registry of fact-QA tasks built from reference data that ships with Python or installed packages.

Why: the meta-dataset needs many *different* QA tasks of the paraphrase design of Strangmann et
al. (2024) (atomic facts, each asked 12 ways: 10 train, 1 validation, 1 test), and this machine has
no network and no dataset hub.  Python's standard library and a few installed packages carry real,
stable, licence-clean tables (HTTP status phrases, MIME types, HTML entities, Unicode names, errno
messages, time zones, ISO country and currency names, ...).  Each table becomes one task: a *fact*
is one (subject, answer) row, expanded into 12 paraphrased questions by the task's templates.

Natural QA tasks (``templates=()``) hold questions that people wrote, with no paraphrases: real QA
data shipped inside PyPI packages (:mod:`trl_objectives.realqa`). Held-out questions ask about
facts never trained on, so their loss cannot collapse to zero. To size every task alike, ``n_facts``
gives ``12 * n_facts`` questions of a natural task (the same number of examples as a fact task) and
they are split at random 80/10/10.

Everything is deterministic for a given ``seed``: the fact pool is built in sorted order, the facts
of a task are a seeded sample of the pool, and the split (by ``fact_id``) is seeded too.

Example::

    from trl_objectives.tasks import TASKS, load_task
    qa = load_task("http-status", n_facts=8, seed=0)   # QADataset, 80 train / 8 val / 8 test
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trl_objectives import fact_tables

if TYPE_CHECKING:  # pragma: no cover
    from trl_objectives.data import QADataset

__all__ = ["FactTask", "TASKS", "task_names", "get_task", "task_records", "load_task", "PARAPHRASES"]

#: Questions per fact (10 train, 1 validation, 1 test), as in the seed paper.
PARAPHRASES = 12


@dataclass(frozen=True)
class FactTask:
    """One fact-QA task: a deterministic table of (subject, answer) facts and 12 question templates.

    Attributes:
        name: Registry key and the dataset name written into the study (``quicktune.task``).
        description: What the task asks, in one line.
        source: Where the facts come from (module or package and attribute).
        license: Licence of the source data.
        build: Returns the full fact pool as ``(subject, answer)`` pairs; it must be deterministic.
            For a natural QA task, ``(question, answer)`` pairs.
        templates: 12 question templates with a ``{s}`` placeholder for the subject; empty for a
            natural QA task (questions as written, no paraphrases).
        system_prompt: System message used when formatting prompts (keeps answers short).
    """

    name: str
    description: str
    source: str
    license: str
    build: Callable[[], list[tuple[str, str]]]
    templates: tuple[str, ...]
    system_prompt: str = "Answer with the exact value only."
    tags: tuple[str, ...] = field(default=())

    def facts(self) -> list[tuple[str, str]]:
        """The fact pool, sorted and de-duplicated by subject (first answer wins)."""
        seen: dict[str, str] = {}
        for subject, answer in sorted(self.build()):
            subject, answer = str(subject).strip(), str(answer).strip()
            if subject and answer and subject not in seen:
                seen[subject] = answer
        return sorted(seen.items())

    @property
    def natural(self) -> bool:
        """Questions as people wrote them (no templates, no paraphrases): split at random."""
        return not self.templates

    def max_facts(self) -> int:
        """The largest ``n_facts`` the pool allows (a natural task needs 12 questions per unit)."""
        n = len(self.facts())
        return n // PARAPHRASES if self.natural else n


# ---------------------------------------------------------------------------- registry
def _t(*templates: str) -> tuple[str, ...]:
    assert len(templates) == PARAPHRASES, len(templates)
    return tuple(templates)


_PSF = "PSF-2.0 (Python standard library)"
_FANOUT_ARTS = ("Film Studies", "Music", "Literature", "Television", "Video Games", "Architecture")
_FANOUT_SOCIETY = ("Economics", "Demographics", "Politics", "Business", "Finance", "Political Science", "Statistics")
_FANOUT_NAMED = ("History", "Sports", "Education", *_FANOUT_ARTS, *_FANOUT_SOCIETY)


def _fanout(*categories: str, exclude: tuple[str, ...] = ()) -> Callable[[], list[tuple[str, str]]]:
    def build() -> list[tuple[str, str]]:
        from trl_objectives.realqa import fanoutqa_pairs

        return fanoutqa_pairs(categories or None, exclude=exclude)

    return build


def _fanout_task(name: str, what: str, build: Callable[[], list[tuple[str, str]]]) -> FactTask:
    from trl_objectives.realqa import FANOUTQA_LICENSE, FANOUTQA_SOURCE

    return FactTask(name, f"FanOutQA single-hop questions about {what} (English Wikipedia)", FANOUTQA_SOURCE,
                    FANOUTQA_LICENSE, build, (), system_prompt="Answer with a short phrase only.",
                    tags=("natural", "fanoutqa"))


_NATURAL_TASKS = [
    _fanout_task("fanoutqa-history", "history", _fanout("History")),
    _fanout_task("fanoutqa-sports", "sports", _fanout("Sports")),
    _fanout_task("fanoutqa-education", "education", _fanout("Education")),
    _fanout_task("fanoutqa-arts", "film, music, literature and television", _fanout(*_FANOUT_ARTS)),
    _fanout_task("fanoutqa-society", "economics, politics and demographics", _fanout(*_FANOUT_SOCIETY)),
    _fanout_task("fanoutqa-science", "geography, nature and science", _fanout(exclude=_FANOUT_NAMED)),
]

TASKS: dict[str, FactTask] = {
    t.name: t
    for t in [
        FactTask(
            "http-status", "HTTP status code -> reason phrase", "http.HTTPStatus.phrase", _PSF, fact_tables.http_status,
            _t("What is the reason phrase of HTTP status code {s}?",
               "HTTP status {s} means what?",
               "Which reason phrase goes with the HTTP code {s}?",
               "A server answers with status {s}. What is its standard phrase?",
               "Give the standard name of HTTP status {s}.",
               "What does the HTTP response code {s} stand for?",
               "In HTTP, code {s} is called what?",
               "Name the HTTP status whose code is {s}.",
               "What text follows the number {s} in an HTTP status line?",
               "Status code {s} in HTTP: what is its reason phrase?",
               "Tell me the phrase for HTTP {s}.",
               "Which HTTP status has the number {s}?"),
        ),
        FactTask(
            "http-description", "HTTP status -> its description", "http.HTTPStatus.description", _PSF,
            fact_tables.http_description,
            _t("What does HTTP status {s} describe?",
               "Describe the meaning of the HTTP status {s}.",
               "When is HTTP {s} returned? Give its description.",
               "What is the description of the HTTP response {s}?",
               "HTTP status {s}: what does it mean for the client?",
               "Explain HTTP {s} in one sentence.",
               "Which situation does HTTP status {s} signal?",
               "What is the standard description of {s} in HTTP?",
               "A response has status {s}. What does that mean?",
               "Give the short explanation of HTTP status {s}.",
               "What does the server say with the status {s}?",
               "In one line, what is HTTP {s}?"),
        ),
        FactTask(
            "mime-types", "file extension -> MIME type", "mimetypes.MimeTypes().types_map (built-in table)", _PSF,
            fact_tables.mime_types,
            _t("What is the MIME type of a {s} file?",
               "Which MIME type goes with the extension {s}?",
               "A file ends in {s}. What is its content type?",
               "Give the media type for files with the {s} extension.",
               "What Content-Type header should a {s} file be served with?",
               "The extension {s} maps to which MIME type?",
               "Name the MIME type for {s}.",
               "What media type does Python's mimetypes give for {s}?",
               "Files named like example{s} have which MIME type?",
               "Tell me the content type of the {s} extension.",
               "Which Internet media type corresponds to {s}?",
               "MIME type of {s}?"),
        ),
        FactTask(
            "html-entities", "character name -> HTML entity name", "html.entities.codepoint2name", _PSF,
            fact_tables.html_entities,
            _t("What is the HTML entity name of the character {s}?",
               "Which named HTML entity writes {s}?",
               "In HTML, how is {s} written as a named entity (without & and ;)?",
               "Give the HTML entity name for {s}.",
               "What goes between & and ; to write {s} in HTML?",
               "The character {s} has which HTML entity name?",
               "Name the HTML character reference for {s}.",
               "How do you name {s} in an HTML entity?",
               "Which entity name does HTML use for {s}?",
               "HTML entity for {s}?",
               "Tell me the named entity that produces {s} in HTML.",
               "What is the entity name of {s} in HTML 4?"),
        ),
        FactTask(
            "unicode-names", "character -> Unicode name", "unicodedata.name (Greek, Cyrillic, arrows, math)",
            "Unicode License v3 (Unicode Character Database, via Python)", fact_tables.unicode_names,
            _t("What is the Unicode name of the character {s}?",
               "Give the official Unicode name of {s}.",
               "Which Unicode character name belongs to {s}?",
               "The symbol {s} is called what in Unicode?",
               "What does unicodedata.name return for {s}?",
               "Name the Unicode character {s}.",
               "Tell me the Unicode character name of {s}.",
               "In the Unicode standard, what is {s} named?",
               "What is the formal name of the character {s}?",
               "Unicode name of {s}?",
               "How does the Unicode database name the character {s}?",
               "Which name does Unicode give to {s}?"),
        ),
        FactTask(
            "errno-messages", "errno symbol -> error message", "errno.errorcode + os.strerror (Linux glibc)",
            _PSF + "; messages from the C library (LGPL-2.1 glibc)", fact_tables.errno_messages,
            _t("What is the error message of errno {s}?",
               "What does the error code {s} mean?",
               "Which message does strerror give for {s}?",
               "A system call fails with {s}. What is the message?",
               "Give the description of the errno value {s}.",
               "What text does the OS print for {s}?",
               "Explain the error {s} in the words of the C library.",
               "What is {s} in plain words?",
               "Which error message goes with {s}?",
               "Tell me the strerror text of {s}.",
               "errno {s} means what?",
               "What is the standard message for the error {s}?"),
        ),
        FactTask(
            "timezones", "IANA time zone -> UTC offset on 2024-01-15", "zoneinfo + tzdata",
            "Public domain (IANA tz database); tzdata package Apache-2.0", fact_tables.timezones,
            _t("What is the UTC offset of the time zone {s} in mid January 2024?",
               "In January 2024, which UTC offset does {s} use?",
               "Give the UTC offset of {s} on 15 January 2024.",
               "How far from UTC is {s} in winter 2024 (January)?",
               "Which offset from UTC applies in {s} on 2024-01-15?",
               "On January 15, 2024, what was the UTC offset in {s}?",
               "The zone {s} is at which UTC offset in January 2024?",
               "Tell me the January 2024 UTC offset of {s}.",
               "What offset does the IANA zone {s} have on 2024-01-15?",
               "UTC offset of {s}, January 2024?",
               "In mid-January 2024, clocks in {s} were at which offset from UTC?",
               "Which UTC offset did {s} observe on 15 Jan 2024?"),
        ),
        FactTask(
            "country-codes", "ISO 3166 alpha-2 code -> English country name", "babel Locale('en').territories (CLDR)",
            "Unicode License v3 (CLDR data); babel BSD-3-Clause", fact_tables.countries,
            _t("Which country has the ISO code {s}?",
               "What country does the two-letter code {s} stand for?",
               "ISO 3166 code {s} belongs to which country?",
               "Name the country with country code {s}.",
               "The code {s} identifies which country or territory?",
               "What is the English name of the territory coded {s}?",
               "Which place uses the ISO alpha-2 code {s}?",
               "Tell me the country for the code {s}.",
               "Country code {s} is which country?",
               "What is the country name for {s} in ISO 3166-1?",
               "Give the name of the country abbreviated {s}.",
               "{s} is the ISO code of which country?"),
        ),
        FactTask(
            "currency-codes", "ISO 4217 currency code -> English currency name", "babel Locale('en').currencies (CLDR)",
            "Unicode License v3 (CLDR data); babel BSD-3-Clause", fact_tables.currencies,
            _t("Which currency has the ISO code {s}?",
               "What is the name of the currency {s}?",
               "ISO 4217 code {s} stands for which currency?",
               "Name the currency with code {s}.",
               "The currency code {s} means what?",
               "Tell me the English name of the currency {s}.",
               "What currency is abbreviated {s}?",
               "Give the full name of the currency coded {s}.",
               "Currency code {s} is which money?",
               "What does {s} denote as a currency code?",
               "Which money does the code {s} identify?",
               "{s} is the code of which currency?"),
        ),
        FactTask(
            "ascii-codes", "printable ASCII character -> decimal code", "string.printable + ord", _PSF, fact_tables.ascii_codes,
            _t("What is the ASCII code of the character {s}?",
               "Which decimal number encodes {s} in ASCII?",
               "Give the ASCII value of {s}.",
               "What does ord('{s}') return?",
               "In ASCII, the character {s} has which code?",
               "What is the code point of {s} in decimal?",
               "Tell me the decimal ASCII code for {s}.",
               "The character {s} is stored as which byte value?",
               "Which number represents {s} in ASCII?",
               "ASCII code of {s}?",
               "What integer is the character {s} in ASCII?",
               "Convert {s} to its ASCII number."),
        ),
        FactTask(
            "signal-numbers", "POSIX signal name -> number (Linux)", "signal.Signals", _PSF, fact_tables.signals,
            _t("What is the number of the signal {s}?",
               "Which signal number is {s} on Linux?",
               "Give the numeric value of {s}.",
               "{s} has which signal number?",
               "What number does kill use for {s}?",
               "Tell me the Linux signal number of {s}.",
               "What integer is {s}?",
               "Which number identifies the signal {s}?",
               "The signal {s} is number what?",
               "Signal number of {s}?",
               "What is int(signal.{s}) on Linux?",
               "On Linux, {s} is signal number?"),
        ),
        FactTask(
            "python-tokens", "Python operator -> token name", "token.EXACT_TOKEN_TYPES + token.tok_name", _PSF, fact_tables.tokens,
            _t("What is the token name of the Python operator {s}?",
               "Which token type does Python's tokenizer give to {s}?",
               "In Python's token module, {s} is called what?",
               "Give the token name for {s} in Python.",
               "What does tokenize call the operator {s}?",
               "The Python operator {s} has which token name?",
               "Tell me the exact token type of {s}.",
               "Which name does token.tok_name use for {s}?",
               "Python token for {s}?",
               "What is the token constant for {s}?",
               "How does Python name the token {s}?",
               "Name the token type of {s} in Python."),
        ),
        FactTask(
            "codec-aliases", "encoding alias -> Python codec name", "encodings.aliases.aliases", _PSF, fact_tables.encodings,
            _t("Which Python codec does the encoding alias {s} refer to?",
               "What is the codec name for the alias {s}?",
               "The encoding name {s} maps to which codec?",
               "Give Python's canonical codec for {s}.",
               "In Python, {s} is an alias of which codec?",
               "What codec does Python use for the encoding {s}?",
               "Tell me the codec behind the alias {s}.",
               "Which codec module handles {s}?",
               "Codec name of {s}?",
               "What does the alias {s} resolve to in encodings.aliases?",
               "Python encodings: {s} is which codec?",
               "Name the codec that {s} stands for."),
        ),
        FactTask(
            "weekdays", "date -> day of the week", "calendar.weekday", _PSF, fact_tables.weekdays,
            _t("What day of the week was {s}?",
               "On which weekday did {s} fall?",
               "{s} was which day of the week?",
               "Give the weekday of {s}.",
               "Which day of the week is {s}?",
               "Tell me the weekday for the date {s}.",
               "What weekday is {s} in the Gregorian calendar?",
               "The date {s} is a what?",
               "Day of the week of {s}?",
               "Was {s} a Monday, Tuesday, ...? Which day?",
               "What is the name of the day {s}?",
               "Name the weekday of {s}."),
        ),
        *_NATURAL_TASKS,
    ]
}


def task_names(*, natural: bool | None = None) -> list[str]:
    """Names of the registered tasks, sorted (only natural or only templated ones if asked)."""
    return sorted(n for n, t in TASKS.items() if natural is None or t.natural == natural)


def get_task(name: str) -> FactTask:
    """The task called ``name``.

    Raises:
        ValueError: no such task (the message lists the registered ones).
    """
    if name not in TASKS:
        raise ValueError(f"Unknown fact-QA task {name!r}. Registered tasks: {', '.join(task_names())}.")
    return TASKS[name]


def task_records(name: str, n_facts: int = 12, *, seed: int = 0) -> list[dict[str, str]]:
    """The QA records (``question``, ``answer``, ``fact_id``) of ``n_facts`` facts of a task.

    The facts are a seeded sample of the task's pool (the same ``seed`` gives the same facts on any
    machine with the same Python and package versions); each gives 12 questions. A natural task
    gives ``12 * n_facts`` questions as written (no ``fact_id``: each is its own fact).

    Raises:
        ValueError: unknown task, or ``n_facts`` outside ``1..task.max_facts()``.
    """
    from trl_objectives.datagen import expand_facts

    task = get_task(name)
    pool = task.facts()
    top = task.max_facts()
    if not isinstance(n_facts, int) or not 1 <= n_facts <= top:
        raise ValueError(f"n_facts must be an integer in 1..{top} for task {name!r}, got {n_facts!r}.")
    rng = random.Random(f"{name}:{seed}")
    if task.natural:
        chosen = sorted(rng.sample(range(len(pool)), PARAPHRASES * n_facts))
        return [{"question": pool[i][0], "answer": pool[i][1]} for i in chosen]
    chosen = sorted(rng.sample(range(len(pool)), n_facts))
    return expand_facts([pool[i] for i in chosen], task.templates, prefix=name)


def load_task(name: str, n_facts: int = 12, *, seed: int = 0, **kwargs: Any) -> "QADataset":
    """A task as a :class:`~trl_objectives.data.QADataset` with the 10/1/1 paraphrase split.

    ``kwargs`` go to :func:`trl_objectives.data.load_qa_dataset` (e.g. ``system_prompt``).
    """
    from trl_objectives.data import load_qa_dataset

    task = get_task(name)
    kwargs.setdefault("system_prompt", task.system_prompt)
    return load_qa_dataset(task_records(name, n_facts, seed=seed), name=name, seed=seed, **kwargs)


def _check_registry(tasks: Sequence[FactTask] = tuple(TASKS.values())) -> None:
    """Import-time sanity check: every templated task has 12 templates with a ``{s}`` slot."""
    for t in tasks:
        if t.natural:
            continue
        if len(t.templates) != PARAPHRASES or any("{s}" not in x for x in t.templates):
            raise RuntimeError(f"Task {t.name!r} needs {PARAPHRASES} templates with {{s}}.")


_check_registry()
