"""The source tables of the templated fact-QA tasks: deterministic (subject, answer) pairs.

Why a module of their own: each builder reads reference data that ships with Python or an
installed package (HTTP status phrases, MIME types, Unicode names, errno messages, time zones, CLDR
country and currency names, ...), so the task registry (:mod:`trl_objectives.tasks`) only names
them. Every builder must return the same pairs on any machine with the same Python and package
versions: no locale, no clock, no system files.
"""

from __future__ import annotations

import calendar
import errno
import html.entities
import mimetypes
import os
import signal
import string
import token
import unicodedata
from datetime import datetime, timezone
from http import HTTPStatus

__all__ = ["http_status", "http_description", "mime_types", "html_entities", "unicode_names", "errno_messages", "timezones", "countries", "currencies", "ascii_codes", "signals", "tokens", "encodings", "weekdays"]


def http_status() -> list[tuple[str, str]]:
    return [(str(int(s)), s.phrase) for s in HTTPStatus]


def http_description() -> list[tuple[str, str]]:
    return [(f"{int(s)} {s.phrase}", s.description) for s in HTTPStatus if s.description and len(s.description) <= 60]


def mime_types() -> list[tuple[str, str]]:
    # A fresh MimeTypes() holds Python's built-in table only (no /etc/mime.types), so the facts do
    # not depend on the machine.
    table = mimetypes.MimeTypes().types_map[1]
    return [(ext, mime) for ext, mime in table.items()]


def html_entities() -> list[tuple[str, str]]:
    return [(unicodedata.name(chr(cp), f"U+{cp:04X}").title(), name)
            for cp, name in html.entities.codepoint2name.items()]


def unicode_names() -> list[tuple[str, str]]:
    # Greek, Cyrillic and arrows: printable, named, and short names.
    ranges = [(0x0391, 0x03A9), (0x03B1, 0x03C9), (0x0410, 0x042F), (0x2190, 0x2199), (0x2200, 0x2222)]
    out = []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            name = unicodedata.name(chr(cp), "")
            if name and len(name.split()) <= 5:
                out.append((chr(cp), name))
    return out


def errno_messages() -> list[tuple[str, str]]:
    return [(name, os.strerror(code)) for code, name in errno.errorcode.items()
            if not os.strerror(code).startswith("Unknown error")]


def timezones() -> list[tuple[str, str]]:
    from zoneinfo import ZoneInfo, available_timezones

    when = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc)  # a fixed instant: no dependence on today
    out = []
    for zone in available_timezones():
        if "/" not in zone or zone.startswith(("Etc/", "SystemV/", "US/", "posix/", "right/")):
            continue
        offset = when.astimezone(ZoneInfo(zone)).utcoffset()
        assert offset is not None
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        out.append((zone, f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"))
    return out


def countries() -> list[tuple[str, str]]:
    from babel import Locale

    return [(code, name) for code, name in Locale("en").territories.items()
            if len(code) == 2 and code.isalpha() and code not in {"ZZ", "XA", "XB", "XK", "EU", "EZ", "UN", "QO"}]


def currencies() -> list[tuple[str, str]]:
    from babel import Locale

    return [(code, name) for code, name in Locale("en").currencies.items() if "(" not in name]


def ascii_codes() -> list[tuple[str, str]]:
    return [(c, str(ord(c))) for c in string.ascii_letters + string.digits + string.punctuation]


def signals() -> list[tuple[str, str]]:
    return [(s.name, str(int(s))) for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIGRT")]


def tokens() -> list[tuple[str, str]]:
    return [(op, token.tok_name[t]) for op, t in token.EXACT_TOKEN_TYPES.items()]


def encodings() -> list[tuple[str, str]]:
    from encodings.aliases import aliases

    return [(alias, codec) for alias, codec in aliases.items() if alias != codec]


def weekdays() -> list[tuple[str, str]]:
    # calendar.day_name is locale-dependent; fix the English names via an explicit date computation.
    names = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    out = []
    for year in (2023, 2024, 2025):
        for month in (1, 4, 7, 10):
            for day in (1, 13, 25):
                out.append((f"{_MONTHS[month - 1]} {day}, {year}",
                            names[calendar.weekday(year, month, day)]))
    return out


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
