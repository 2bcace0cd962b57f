"""Errors that tell the user what is wrong and what to do about it.

All are ``ValueError`` subclasses, so code that already catches bad input keeps working.
"""

from __future__ import annotations

__all__ = [
    "QuickTuneError",
    "EmptyMetaDatasetError",
    "MixedSpaceError",
    "MetaFeatureError",
    "SurrogateFormatError",
    "SpaceMismatchError",
    "ContractError",
    "StorageError",
]


class QuickTuneError(ValueError):
    """Base class of optuna-quicktune's input errors."""


class EmptyMetaDatasetError(QuickTuneError):
    """No study (or no usable trial) follows the storage contract."""


class MixedSpaceError(QuickTuneError):
    """The selected studies do not share one search space."""


class MetaFeatureError(QuickTuneError):
    """Meta-features are missing, or their names do not match what the surrogate expects."""


class SurrogateFormatError(QuickTuneError):
    """A saved surrogate is corrupted, incomplete or written by a newer format version."""


class SpaceMismatchError(QuickTuneError):
    """A surrogate is used with a search space other than the one it was trained on."""


class ContractError(QuickTuneError):
    """A study or trial breaks the storage contract (``optuna_quicktune.contract``).

    The message names the study, the trial (if any), the attribute and the fix; the same parts are
    kept as fields so that readers can log or skip precisely.
    """

    def __init__(self, problem: str, *, study: str | None = None, trial: int | None = None,
                 attribute: str | None = None, fix: str = "") -> None:
        self.study, self.trial, self.attribute, self.problem, self.fix = study, trial, attribute, problem, fix
        where = []
        if study is not None:
            where.append(f"study {study!r}")
        if trial is not None:
            where.append(f"trial {trial}")
        if attribute is not None:
            where.append(f"attribute {attribute!r}")
        head = ", ".join(where)
        super().__init__((f"{head[0].upper()}{head[1:]}: " if head else "") + problem + (f" {fix}" if fix else ""))


class StorageError(QuickTuneError):
    """A storage URL cannot be opened (bad form, missing folder, not a database, unknown study)."""


class MetaFeatureValueError(ContractError, MetaFeatureError):
    """A meta-feature value that is not a finite number (both a contract and a meta-feature error)."""
