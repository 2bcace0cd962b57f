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
