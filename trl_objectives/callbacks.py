"""The trainer callbacks of one ``SFTObjective`` trial, one job each (as in TRL's own ``callbacks.py``).

* :class:`ResumeCallback` continues a paused run: optimizer and scheduler state once the trainer
  has created them, the RNG states where the uninterrupted run would have had them.
* :class:`DivergenceCallback` stops a run whose training or validation loss is NaN/inf, at the
  step it appears, and records why (a diverged configuration is a result, not a crash).
* :class:`ReportCallback` reports each fidelity into the Optuna trial (value, cost, validation
  metrics) and, when the pruner says stop, saves a checkpoint and stops: pruning becomes a pause.

They share one :class:`TrialRecord` (the curve so far and why training stopped), which the
objective reads after ``trainer.train()`` returns; the divergence watch must come before the
report in the callback list, so that a diverged evaluation is never reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from transformers import TrainerCallback

from optuna_quicktune import contract
from trl_objectives.checkpoint import checkpoint_folder, load_checkpoint_meta, load_training_state, restore_rng, save_checkpoint
from trl_objectives.errors import NonFiniteLossError, TrialFailure
from trl_objectives.evaluate import evaluate_generation

if TYPE_CHECKING:  # pragma: no cover
    from trl_objectives.objective import SFTObjective

__all__ = ["TrialRecord", "ResumeCallback", "DivergenceCallback", "ReportCallback", "fidelity_index"]


@dataclass
class TrialRecord:
    """What one trial's callbacks share: the reported curve, and why training stopped (if it did).

    ``active`` is switched off once training is over, so that evaluating the test split with the
    same trainer reports nothing into the trial.
    """

    values: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    val_metrics: list[dict[str, float]] = field(default_factory=list)
    failure: TrialFailure | None = None
    pruned_at: int | None = None
    active: bool = True

    @property
    def stopped(self) -> bool:
        """Training was stopped early (diverged or paused): nothing more is to be reported."""
        return self.failure is not None or self.pruned_at is not None


def fidelity_index(state: Any, eval_every_steps: int | None) -> int:
    """The fidelity of the evaluation the trainer just ran: the epoch, or ``global_step // N``."""
    if eval_every_steps is None:
        return int(round(state.epoch))
    return int(state.global_step // eval_every_steps)


class ResumeCallback(TrainerCallback):
    """Continue a paused run from its checkpoint folder (see :mod:`trl_objectives.checkpoint`).

    ``Trainer(resume_from_checkpoint=...)`` restores the adapter and the step counter; the
    optimizer, scheduler and RNG states are ours (safetensors, no pickle), so they are put back
    here: the optimizer and scheduler right after the trainer created them, the RNG at the first
    epoch start (checkpoint at an epoch boundary) or else the first step, where Trainer would.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._meta = load_checkpoint_meta(self.folder)
        self._rng_restored = False

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        load_training_state(self.folder, optimizer, lr_scheduler)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._rng_restored and self._meta.get("epoch_boundary", True):
            self._restore()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._rng_restored:
            self._restore()

    def _restore(self) -> None:
        restore_rng(self.folder)
        self._rng_restored = True


class DivergenceCallback(TrainerCallback):
    """Stop training when the training loss (each logged step) or validation loss is NaN or inf."""

    def __init__(self, record: TrialRecord, *, eval_every_steps: int | None = None, unit: str = "epoch") -> None:
        self.record = record
        self.eval_every_steps = eval_every_steps
        self.unit = unit

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, float] | None = None,
               **kwargs: Any) -> None:
        if not self.record.active or not logs or self.record.stopped:
            return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.record.failure = NonFiniteLossError(
                f"training loss became {loss} at optimizer step {state.global_step} (epoch {state.epoch:.2f}); "
                f"the configuration diverged (learning_rate={args.learning_rate:g})."
            )
            control.should_training_stop = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, float] | None = None,
                    **kwargs: Any) -> None:
        if not self.record.active or self.record.stopped:
            return
        eval_loss = float((metrics or {}).get("eval_loss", float("nan")))
        if not math.isfinite(eval_loss):
            step = fidelity_index(state, self.eval_every_steps)
            self.record.failure = NonFiniteLossError(
                f"validation loss is {eval_loss} at {self.unit} {step}; the configuration diverged."
            )
            control.should_training_stop = True


class ReportCallback(TrainerCallback):
    """Report each fidelity into the trial and pause (checkpoint, stop) when the pruner says so.

    One job: the Optuna side of a run.  Each evaluation becomes ``trial.report(value, step)``, the
    cumulative seconds ``quicktune.cost`` and the validation metrics; then ``trial.should_prune()``
    is asked (except at the last fidelity, where there is nothing left to save).
    """

    def __init__(self, objective: "SFTObjective", trial: optuna.Trial, record: TrialRecord, started: float) -> None:
        self.objective = objective
        self.trial = trial
        self.record = record
        self.started = started

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, float] | None = None,
                    model: Any = None, optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        record, obj = self.record, self.objective
        if not record.active or record.stopped:
            return
        scores = {"eval_loss": float((metrics or {}).get("eval_loss", float("nan")))}
        if obj.metric != "eval_loss":
            scores.update(
                evaluate_generation(
                    model, obj.tokenizer, obj.formatted["validation"],
                    max_new_tokens=obj.max_new_tokens, batch_size=obj.eval_batch_size,
                )
            )
        step = fidelity_index(state, obj.eval_every_steps)
        value = float(scores[obj.metric])
        self.trial.report(value, step)
        record.values.append(value)
        record.costs.append(time.perf_counter() - self.started)
        record.val_metrics.append({k: float(v) for k, v in scores.items()})
        contract.record_cost(self.trial, record.costs)
        self.trial.set_user_attr(contract.VAL_METRICS, record.val_metrics)
        if step >= obj.fidelity_max or not self.trial.should_prune():
            return
        folder = checkpoint_folder(obj.checkpoint_dir, self.trial)
        save_checkpoint(
            folder, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, state=state,
            meta={
                "step": step,
                "fidelity_unit": obj.fidelity_unit,
                "fidelity_max": obj.fidelity_max,
                "epoch_boundary": bool(float(state.epoch).is_integer()),
                "trial_number": self.trial.number,
                "study": self.trial.study.study_name,
                "params": dict(self.trial.params),
                "config_id": obj.space.config_id(self.trial.params),
                "space": {"name": obj.space.name, "fingerprint": obj.space.fingerprint},
                "model": obj.model_name,
                "dataset": obj.dataset_name,
                "metric": obj.metric,
                "value": value,
            },
        )
        self.trial.set_user_attr(contract.CHECKPOINT, str(folder))
        record.pruned_at = step
        control.should_training_stop = True
