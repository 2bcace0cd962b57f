"""Errors of ``trl_objectives``: what is wrong, and what to do about it.

Two families, because they are handled differently:

* :class:`TRLObjectiveInputError` (a ``ValueError``): bad input found *before* any training starts
  (a missing column, an empty split, a model path that does not exist, a study that describes
  another task).  Fix the input and call again.
* :class:`TrialFailure` (a ``RuntimeError``): one trial could not finish (its loss became NaN/inf,
  or the accelerator ran out of memory).  The objective marks that trial ``FAIL`` and the study goes
  on with the next configuration; see ``SFTObjective(on_failure=...)``.
"""

from __future__ import annotations

__all__ = [
    "TRLObjectiveInputError",
    "DatasetFormatError",
    "EmptySplitError",
    "ModelNotFoundError",
    "StudyMismatchError",
    "TrialFailure",
    "NonFiniteLossError",
    "TrialOutOfMemoryError",
]


class TRLObjectiveInputError(ValueError):
    """Base class of the input errors raised before training starts."""


class DatasetFormatError(TRLObjectiveInputError):
    """A QA dataset cannot be read, or lacks the question/answer fields."""


class EmptySplitError(TRLObjectiveInputError):
    """A train, validation or test split has no example."""


class ModelNotFoundError(TRLObjectiveInputError):
    """A model spec names no local folder, GGUF file, installed package or reachable hub model."""


class StudyMismatchError(TRLObjectiveInputError):
    """The study already describes another task (dataset, model, metric or fidelity)."""


class TrialFailure(RuntimeError):
    """One trial could not finish; the study can go on with other configurations."""


class NonFiniteLossError(TrialFailure):
    """The training or evaluation loss became NaN or infinite (diverged configuration)."""


class TrialOutOfMemoryError(TrialFailure):
    """The accelerator ran out of memory for this configuration (memory was freed)."""
