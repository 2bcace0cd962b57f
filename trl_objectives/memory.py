"""Memory of one trial: free it between trials, and turn out-of-memory into a trial failure.

Why a module of its own: a study runs many trials in one process, so each trial's model, trainer
and optimizer must be gone (GPU memory included) before the next loads its model; and an
out-of-memory error is a property of the configuration (batch size, sequence length), to be
recorded on that trial, not a crash of the study.  Used by :class:`~trl_objectives.SFTObjective`
and by anything else that builds a trial's model and trainer (:func:`trl_objectives.score_base_model`).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any

__all__ = ["free_trial", "release_memory", "is_out_of_memory", "describe_batch", "bfloat16"]


def bfloat16() -> Any:
    """``torch.bfloat16``, imported late so that importing this module does not import torch."""
    import torch

    return torch.bfloat16


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA's own class, or a RuntimeError saying so)."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "cuda error: out of memory" in text)


def describe_batch(sft_kwargs: Mapping[str, Any]) -> str:
    """The batch settings of a run, for an out-of-memory message that says what to lower."""
    return (
        f"per_device_train_batch_size={sft_kwargs.get('per_device_train_batch_size')}, "
        f"gradient_accumulation_steps={sft_kwargs.get('gradient_accumulation_steps')}"
    )


def free_trial(trainer: Any, model: Any) -> tuple[None, None]:
    """Drop a trial's trainer and model (and accelerate's references to them), then free memory.

    Returns ``(None, None)`` so the caller can drop its own references in the same statement:
    ``trainer, model = free_trial(trainer, model)``.
    """
    if trainer is not None:
        try:
            trainer.accelerator.free_memory()
        except Exception:  # noqa: BLE001 - best effort; the references die with the trainer anyway
            pass
    del trainer, model
    release_memory()
    return None, None


def release_memory() -> None:
    """Collect garbage and empty the CUDA cache, so the next trial starts with the memory free."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
