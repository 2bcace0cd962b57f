"""Opening a storage URL with one-line errors, and never creating a database by mistake.

Optuna's ``get_storage`` creates an SQLite file for any path, so a mistyped path gives an empty
database (``meta-train`` then reports 0 studies, the dashboard a 0-byte file); a missing folder, an
unknown scheme or a file that is not SQLite surface as SQLAlchemy tracebacks. Here a reading
command opens with ``create=False`` and every such mistake is a :class:`StorageError` naming the
problem and the fix.

URL forms: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, any SQLAlchemy URL Optuna
accepts (``postgresql+psycopg2://user@host/db``, ``mysql+pymysql://...``), and
``journal:PATH`` for an Optuna journal file (``JournalFileBackend``).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from optuna_quicktune.errors import StorageError

__all__ = ["open_storage", "JOURNAL_PREFIX"]

JOURNAL_PREFIX = "journal:"
_FORMS = ("sqlite:///path.db, postgresql+psycopg2://user@host/db, mysql+pymysql://user@host/db "
          f"or {JOURNAL_PREFIX}PATH (an Optuna journal file)")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def open_storage(url: str | BaseStorage, *, create: bool = False) -> BaseStorage:
    """The storage at ``url``; with ``create=False`` a database that does not exist is an error."""
    if isinstance(url, BaseStorage):
        return url
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"The storage URL {url!r} is empty or not a string; use {_FORMS}.")
    if url.startswith(JOURNAL_PREFIX):
        return _journal(url[len(JOURNAL_PREFIX):], create)
    if "://" not in url:
        raise StorageError(f"{url!r} is not a storage URL (no scheme); use {_FORMS}.")
    scheme = url.split("://", 1)[0]
    if scheme.split("+", 1)[0] == "sqlite":
        _check_sqlite(url, create)
    try:
        return optuna.storages.get_storage(url)
    except StorageError:
        raise
    except Exception as e:  # SQLAlchemy's errors for a bad scheme, driver, host or file
        raise StorageError(f"Cannot open storage {url!r}: {_one_line(e)}. Check the URL; forms: {_FORMS}.") from None


def _check_sqlite(url: str, create: bool) -> None:
    path_part = url.split("://", 1)[1]
    if not path_part.startswith("/") or path_part in ("/", "/:memory:"):
        return  # in-memory database
    path = Path(path_part[1:].split("?", 1)[0])
    if not path.parent.is_dir():
        raise StorageError(f"The folder {str(path.parent)!r} of SQLite storage {url!r} does not exist; "
                           "check the path (sqlite:///relative.db or sqlite:////absolute/path.db).")
    if not path.exists():
        if create:
            return
        raise StorageError(f"No database at {str(path)!r} ({url}); check the path. Reading commands never "
                           "create a database.")
    if path.is_dir():
        raise StorageError(f"{str(path)!r} is a folder, not an SQLite database file.")
    with path.open("rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise StorageError(f"{str(path)!r} is not an SQLite database (wrong file header); point --storage at the .db file.")
    if not head and not create:
        raise StorageError(f"{str(path)!r} is an empty file, not an SQLite database; delete it or point at the right file.")


def _journal(path_str: str, create: bool) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    path = Path(path_str)
    if not path_str:
        raise StorageError(f"{JOURNAL_PREFIX} needs a file path, e.g. {JOURNAL_PREFIX}runs.log.")
    if not path.parent.is_dir():
        raise StorageError(f"The folder {str(path.parent)!r} of journal {path_str!r} does not exist; check the path.")
    if not path.exists() and not create:
        raise StorageError(f"No journal file at {path_str!r}; check the path. Reading commands never create one.")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as e:
        raise StorageError(f"Cannot read journal {path_str!r}: {_one_line(e)}.") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    return f"{type(e).__name__}: {first}"[:300]
