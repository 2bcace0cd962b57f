"""Scores of the base model without finetuning: the baseline every tuning result is put next to.

Why: a user deciding whether LoRA tuning is worth its GPU hours compares against the model they
already have.  The scores must be measured exactly as a trial measures them, or the comparison
says nothing; so the model is wrapped with a fresh LoRA adapter of the default configuration, whose
``B`` matrices start at zero (it computes the base model's function), and scored by the same
:meth:`SFTObjective.score <trl_objectives.SFTObjective.score>` a trial's test split uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from optuna_quicktune.space import DEFAULT_LORA_CONFIG
from trl_objectives.errors import TRLObjectiveInputError
from trl_objectives.memory import free_trial

if TYPE_CHECKING:  # pragma: no cover
    from trl_objectives.objective import SFTObjective

__all__ = ["score_base_model"]


def score_base_model(
    objective: "SFTObjective", splits: Sequence[str] = ("validation", "test")
) -> dict[str, dict[str, float]]:
    """``{split: {metric: value}}`` of the objective's base model, without training.

    Every metric is measured (greedy-answer ``exact_match`` / ``token_f1`` and the answer-token
    ``eval_loss``), on the objective's own formatted splits, with its ``num_threads``.

    Raises:
        TRLObjectiveInputError: a split other than ``train``, ``validation`` or ``test``.
    """
    import torch

    bad = [s for s in splits if s not in ("train", "validation", "test")]
    if bad:
        raise TRLObjectiveInputError(f"Unknown split(s) {bad}; choose among 'train', 'validation', 'test'.")
    threads = torch.get_num_threads()
    if objective.num_threads:
        torch.set_num_threads(objective.num_threads)
    out_dir = Path(tempfile.mkdtemp(prefix="quicktune-zero-shot-"))
    model = trainer = None
    try:
        lora_kwargs, sft_kwargs = objective.training_settings(dict(DEFAULT_LORA_CONFIG))
        model = objective.build_model(lora_kwargs)
        trainer = objective.build_trainer(model, sft_kwargs, out_dir)
        model.eval()
        return {split: objective.score(model, trainer, split) for split in splits}
    finally:
        trainer, model = free_trial(trainer, model)
        shutil.rmtree(out_dir, ignore_errors=True)
        torch.set_num_threads(threads)
