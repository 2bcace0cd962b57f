"""``SFTObjective``: an Optuna objective that runs one LoRA SFT finetuning per trial with TRL.

Per trial it

1. suggests a configuration from a :class:`~optuna_quicktune.space.SearchSpace` (default: the
   engine's ``lora_space()``), filling parameters the space does not have from
   ``DEFAULT_LORA_CONFIG``;
2. builds ``peft.LoraConfig`` + ``trl.SFTConfig`` + ``trl.SFTTrainer`` on a freshly loaded base model;
3. evaluates at every fidelity (each epoch, or every ``eval_every_steps`` optimizer steps), reports
   the chosen metric with ``trial.report(value, step)`` and stores the cumulative seconds in
   ``quicktune.cost`` (the storage contract of ``optuna_quicktune.contract``);
4. asks ``trial.should_prune()`` after each report; when told to stop it saves a resumable
   checkpoint (LoRA adapter, optimizer, scheduler, RNG and trainer state), records its path in
   ``quicktune.checkpoint`` and raises ``optuna.TrialPruned``;
5. on completion stores the test-split scores (``quicktune.test_score`` and per metric), which are
   never reported to Optuna and so never used for selection.

A trial whose user attributes carry ``quicktune.resume_of`` and ``quicktune.checkpoint`` (the
QuickTune sampler enqueues such trials to *thaw* a paused run) continues from that checkpoint and
reports the steps after the parent's last one, so ``MetaDataset`` can stitch the two into one curve.

Checkpoints contain safetensors and JSON only: nothing is pickled, and nothing is unpickled when
resuming.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna

from optuna_quicktune import contract
from optuna_quicktune.space import SearchSpace, lora_space
from trl_objectives.callbacks import DivergenceCallback, ReportCallback, ResumeCallback, TrialRecord
from trl_objectives.checkpoint import CHECKPOINT_META, load_checkpoint_meta, resume_folder, save_checkpoint
from trl_objectives.data import QADataset, format_prompt_completion
from trl_objectives.errors import StudyMismatchError, TrialFailure, TrialOutOfMemoryError, TRLObjectiveInputError
from trl_objectives.evaluate import canonical_metric, evaluate_generation, metric_direction
from trl_objectives.memory import describe_batch, free_trial, is_out_of_memory
from trl_objectives.metafeatures import compute_metafeatures
from trl_objectives.models import ModelSource, load_tokenizer, resolve_model
from trl_objectives.prompts import record_prompt_format
from trl_objectives.training import LORA_PARAMS, SFT_PARAMS, build_lora_model, build_sft_trainer, training_settings

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

__all__ = [
    "SFTObjective",
    "LORA_PARAMS",
    "SFT_PARAMS",
    "TEST_SCORE",
    "TEST_METRIC_PREFIX",
    "VAL_METRICS",
    "FAIL_REASON",
    "CHECKPOINT_META",
    "save_checkpoint",
    "load_checkpoint_meta",
]

_logger = logging.getLogger(__name__)

# The trial attributes this objective writes (defined in the storage contract; re-exported here).
TEST_SCORE = contract.TEST_SCORE
TEST_METRIC_PREFIX = contract.TEST_METRIC_PREFIX
VAL_METRICS = contract.VAL_METRICS
FAIL_REASON = contract.FAIL_REASON


class SFTObjective:
    """Optuna objective: LoRA supervised finetuning of a causal LM on a QA dataset with TRL.

    Example::

        from trl_objectives import SFTObjective, load_qa_dataset
        objective = SFTObjective(model="microsoft/Phi-3-mini-4k-instruct",
                                 dataset=load_qa_dataset("my_qa.jsonl"), max_epochs=5, metric="exact_match")
        study = optuna.create_study(direction=objective.direction, storage="sqlite:///runs.db")
        study.optimize(objective, n_trials=20)

    Args:
        model: Base model spec (hub id, local folder, ``.gguf`` file, ``package:NAME``; see
            :func:`trl_objectives.models.resolve_model`).  Loaded afresh for every trial.
        dataset: The QA dataset (:func:`trl_objectives.load_qa_dataset`).
        metric: ``"exact_match"``, ``"token_f1"`` (greedy generation on the validation split) or
            ``"eval_loss"`` (validation loss on the answer tokens).  The study's direction must fit.
        max_epochs: Epochs of a full run; the fidelity is the epoch (``1..max_epochs``) unless
            ``eval_every_steps`` is set.
        eval_every_steps: Evaluate every N optimizer steps instead; the fidelity unit is then
            ``"step"`` (index ``k`` = after ``k * N`` steps) and ``max_steps`` sets the budget.
        max_steps: Optimizer steps of a full run in step mode (the same for every configuration,
            so that fidelity ``k`` means the same budget whatever the batch size).
        space: The search space (default ``lora_space()``).  Names in :data:`LORA_PARAMS` go to
            ``LoraConfig`` and names in :data:`SFT_PARAMS` to ``SFTConfig``; any other parameter
            is suggested and stored with the trial but passed to neither (use it for your own
            ``callbacks`` or analysis).  Parameters of the LoRA space the given space lacks take
            their ``DEFAULT_LORA_CONFIG`` value.
        max_length: Longest training sequence in tokens (longer ones are truncated).
        max_new_tokens: Generation budget of an answer; default from the training answers' lengths.
        eval_batch_size: Batch size of evaluation and generation.
        checkpoint_dir: Root of pause checkpoints (``<root>/<study>/trial-<n>``); default
            ``./quicktune_checkpoints``.
        seed: Seed of LoRA initialisation, data order and dropout (the same for every trial, so
            configurations are compared on the same randomness).
        device: ``"cpu"``, ``"cuda"``, ...; default the GPU when there is one.
        dataset_name, model_name: Names written into ``quicktune.task`` (defaults: the dataset's
            name and the resolved model name).
        on_failure: ``"fail"`` (default): a diverged (NaN/inf loss) or out-of-memory trial records
            ``quicktune.fail_reason``, logs it and returns NaN, which Optuna marks ``FAIL`` while
            ``study.optimize`` goes on.  ``"raise"``: raise the :class:`TrialFailure` instead (the
            trial is still ``FAIL``; pass ``catch=(TrialFailure,)`` to ``optimize`` to go on).
        evaluate_test: Compute the test scores when a trial completes.
        callbacks: Extra ``transformers.TrainerCallback`` objects added to every trainer.
        sft_overrides: Extra ``SFTConfig`` fields (e.g. ``{"gradient_checkpointing": True}``).
        cache_dir: Where GGUF models are converted once (see ``models.default_cache_dir``).
        num_threads: CPU threads torch may use during a trial (restored afterwards); ``None``
            leaves torch's setting.  On a shared or oversubscribed CPU, ``1`` can be many times
            faster than the default, because OpenMP threads spin while waiting for a busy core.

    Raises (at construction, before any training):
        ModelNotFoundError: the model spec names nothing loadable.
        TRLObjectiveInputError: bad metric, fidelity or budget arguments.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        dataset: QADataset,
        *,
        metric: str = "exact_match",
        max_epochs: int = 3,
        eval_every_steps: int | None = None,
        max_steps: int | None = None,
        space: SearchSpace | None = None,
        max_length: int = 512,
        max_new_tokens: int | None = None,
        eval_batch_size: int = 16,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        device: str | None = None,
        dataset_name: str | None = None,
        model_name: str | None = None,
        on_failure: Literal["fail", "raise"] = "fail",
        evaluate_test: bool = True,
        callbacks: Sequence["TrainerCallback"] = (),
        sft_overrides: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(dataset, QADataset):
            raise TRLObjectiveInputError(
                f"dataset must be a QADataset (from trl_objectives.load_qa_dataset), not {type(dataset).__name__}."
            )
        try:
            self.metric = canonical_metric(metric)
        except ValueError as e:
            raise TRLObjectiveInputError(str(e)) from None
        if eval_every_steps is None:
            if max_steps is not None:
                raise TRLObjectiveInputError("max_steps needs eval_every_steps (step fidelity); for epochs use max_epochs.")
            if not isinstance(max_epochs, int) or max_epochs < 1:
                raise TRLObjectiveInputError(f"max_epochs must be an integer >= 1, got {max_epochs!r}.")
            self.fidelity_unit, self.fidelity_max = "epoch", max_epochs
        else:
            if not isinstance(eval_every_steps, int) or eval_every_steps < 1:
                raise TRLObjectiveInputError(f"eval_every_steps must be an integer >= 1, got {eval_every_steps!r}.")
            if max_steps is None or max_steps < eval_every_steps:
                raise TRLObjectiveInputError(
                    f"Step fidelity needs max_steps >= eval_every_steps ({eval_every_steps}); got {max_steps!r}."
                )
            self.fidelity_unit, self.fidelity_max = "step", max_steps // eval_every_steps
        if on_failure not in ("fail", "raise"):
            raise TRLObjectiveInputError(f"on_failure must be 'fail' or 'raise', not {on_failure!r}.")
        self.max_epochs = max_epochs
        self.eval_every_steps = eval_every_steps
        self.max_steps = None if eval_every_steps is None else self.fidelity_max * eval_every_steps
        self.space = space if space is not None else lora_space()
        if not isinstance(self.space, SearchSpace):
            raise TRLObjectiveInputError(f"space must be an optuna_quicktune SearchSpace, not {type(self.space).__name__}.")
        self.dataset = dataset
        self.max_length = int(max_length)
        self.eval_batch_size = int(eval_batch_size)
        self.checkpoint_dir = Path(checkpoint_dir or "quicktune_checkpoints")
        self.seed = int(seed)
        self.device = device
        self.on_failure = on_failure
        self.evaluate_test = evaluate_test
        self.callbacks = list(callbacks)
        self.sft_overrides = dict(sft_overrides or {})
        self.cache_dir = cache_dir
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise TRLObjectiveInputError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
        self.num_threads = num_threads

        # Resolve and load the tokenizer now: a bad model spec fails here, before any trial.
        self.source: ModelSource = resolve_model(model)
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(self.source, cache_dir=cache_dir)
        self.model_name = model_name or self.source.name
        self.dataset_name = dataset_name or dataset.name
        self.unused_params = [n for n in self.space.names if n not in LORA_PARAMS | SFT_PARAMS]
        if self.unused_params:
            _logger.info(
                "Parameters %s of space %r configure neither LoraConfig nor SFTConfig; they are only "
                "recorded with each trial.", self.unused_params, self.space.name,
            )
        self.formatted = {
            split: format_prompt_completion(getattr(dataset, split), self.tokenizer, system_prompt=dataset.system_prompt)
            for split in ("train", "validation", "test")
        }
        if max_new_tokens is None:
            lengths = [len(ids) for ids in self.tokenizer(list(dataset.train["answer"]), add_special_tokens=False)["input_ids"]]
            max_new_tokens = min(128, int(max(lengths) * 1.5) + 4)
        self.max_new_tokens = int(max_new_tokens)
        self._metafeatures: dict[str, float] | None = None

    # ------------------------------------------------------------------ public helpers
    @property
    def direction(self) -> str:
        """The study direction this objective's metric needs (``"maximize"`` / ``"minimize"``)."""
        return metric_direction(self.metric)

    @property
    def metafeatures(self) -> dict[str, float]:
        """The dataset's meta-features (computed once with the model's tokenizer)."""
        if self._metafeatures is None:
            self._metafeatures = compute_metafeatures(self.dataset, self.tokenizer, seed=self.seed)
        return dict(self._metafeatures)

    def describe(self, study: optuna.Study) -> None:
        """Write the contract's study attributes, or check that those present describe this task.

        Raises:
            StudyMismatchError: the study's direction does not fit the metric, or it already
                describes another dataset, model, metric, fidelity or search space.
        """
        if len(study.directions) != 1:
            raise StudyMismatchError("SFTObjective needs a single-objective study.")
        direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        if direction != self.direction:
            raise StudyMismatchError(
                f"Study {study.study_name!r} is set to {direction} but metric {self.metric!r} must be "
                f"{self.direction}d; create it with optuna.create_study(direction={self.direction!r}) "
                "(objective.direction gives it)."
            )
        attrs = study.user_attrs
        task = attrs.get(contract.TASK)
        if task is not None:
            expected = {"dataset": self.dataset_name, "model": self.model_name, "metric": self.metric}
            diff = {k: (task.get(k), v) for k, v in expected.items() if task.get(k) != v}
            # Another process may be half-way through describing the study (the task is written
            # before the fidelity): compare only what is already there; describing again writes
            # the same values.
            fid = attrs.get(contract.FIDELITY)
            if fid is not None and (fid.get("unit") != self.fidelity_unit or fid.get("max") != self.fidelity_max):
                diff["fidelity"] = (fid, {"unit": self.fidelity_unit, "max": self.fidelity_max})
            sp = attrs.get(contract.SPACE)
            if sp is not None and sp.get("fingerprint") != self.space.fingerprint:
                diff["space"] = (sp, {"name": self.space.name, "fingerprint": self.space.fingerprint})
            if diff:
                details = "; ".join(f"{k}: study has {a!r}, objective has {b!r}" for k, (a, b) in diff.items())
                raise StudyMismatchError(
                    f"Study {study.study_name!r} already describes another task ({details}). One study is "
                    "one task: use a new study name for this dataset/model/metric/fidelity."
                )
        if task is None or contract.METAFEATURES not in attrs or contract.SPACE not in attrs:
            contract.describe_task(
                study,
                dataset=self.dataset_name,
                model=self.model_name,
                metric=self.metric,
                fidelity_max=self.fidelity_max,
                fidelity_unit=self.fidelity_unit,
                metafeatures=self.metafeatures,
                space=self.space,
            )
        # Scores under two prompt formats are not comparable, so the study says which one its runs used
        # (once: describe runs every trial, and the attributes were read above).
        if contract.PROMPT_FORMAT not in attrs:
            record_prompt_format(study, self.tokenizer, self.dataset.system_prompt)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active parameter of the space (Optuna records them as the trial's params).

        Asking the trial lets the study's sampler choose (QuickTune, TPE, or an enqueued trial's
        fixed values); a conditional space asks only for the parameters its parents activate.
        """
        return self.space.suggest(trial)

    def training_settings(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split a configuration into ``LoraConfig`` and ``SFTConfig`` kwargs (see :func:`training.training_settings`)."""
        return training_settings(config)

    def build_model(self, lora_kwargs: Mapping[str, Any]) -> "PreTrainedModel":
        """The base model, loaded afresh, with a new LoRA adapter initialised from this objective's seed."""
        return build_lora_model(self.source, lora_kwargs, seed=self.seed, device=self.device, cache_dir=self.cache_dir)

    def build_trainer(
        self,
        model: "PreTrainedModel",
        sft_kwargs: Mapping[str, Any],
        out_dir: str | os.PathLike[str],
        callbacks: Sequence["TrainerCallback"] = (),
    ) -> Any:
        """The ``SFTTrainer`` a trial uses (this objective's data, fidelity and overrides).

        ``callbacks`` come first, then the user's ``callbacks`` given at construction.
        """
        return build_sft_trainer(
            model, self.tokenizer,
            train=self.formatted["train"], validation=self.formatted["validation"],
            sft_kwargs=sft_kwargs, out_dir=out_dir, max_length=self.max_length,
            eval_batch_size=self.eval_batch_size, max_epochs=self.max_epochs,
            eval_every_steps=self.eval_every_steps, max_steps=self.max_steps, seed=self.seed,
            device=self.device, sft_overrides=self.sft_overrides, callbacks=[*callbacks, *self.callbacks],
        )

    def score(self, model: "PreTrainedModel", trainer: Any, split: str) -> dict[str, float]:
        """Every metric of ``model`` on a split: greedy ``exact_match``/``token_f1`` and answer-token ``eval_loss``."""
        scores = evaluate_generation(
            model, self.tokenizer, self.formatted[split],
            max_new_tokens=self.max_new_tokens, batch_size=self.eval_batch_size,
        )
        metrics = trainer.evaluate(eval_dataset=self.formatted[split], metric_key_prefix=split)
        scores["eval_loss"] = float(metrics[f"{split}_loss"])
        return {k: float(v) for k, v in scores.items()}

    # ------------------------------------------------------------------ the objective
    def __call__(self, trial: optuna.Trial) -> float:
        if self.num_threads is None:
            return self._run(trial)
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            return self._run(trial)
        finally:
            torch.set_num_threads(before)

    def _run(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        self.describe(trial.study)
        config = self.suggest(trial)
        if contract.CONFIG_ID not in trial.user_attrs:
            trial.set_user_attr(contract.CONFIG_ID, self.space.config_id(config))
        resume = resume_folder(trial, self.space.config_id(config), fidelity_unit=self.fidelity_unit,
                               fidelity_max=self.fidelity_max)
        lora_kwargs, sft_kwargs = self.training_settings(config)

        trainer = model = None
        out_dir = Path(tempfile.mkdtemp(prefix="quicktune-sft-"))
        record = TrialRecord()
        callbacks: list[Any] = [] if resume is None else [ResumeCallback(resume)]
        callbacks += [
            DivergenceCallback(record, eval_every_steps=self.eval_every_steps, unit=self.fidelity_unit),
            ReportCallback(self, trial, record, started),
        ]
        oom: str | None = None
        try:
            try:
                model = self.build_model(lora_kwargs)
                trainer = self.build_trainer(model, sft_kwargs, out_dir, callbacks)
                trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
                record.active = False  # the test evaluation below reports nothing into the trial
                if not record.stopped and record.values and self.evaluate_test:
                    self._record_test_scores(trial, trainer, model)
            except Exception as e:  # noqa: BLE001 - only out-of-memory becomes a trial failure here
                if not is_out_of_memory(e):
                    raise
                first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
                oom = (
                    f"Out of memory with {describe_batch(sft_kwargs)} and max_length={self.max_length}: "
                    f"{first_line}. Memory was freed; lower the batch size or max_length, or enable "
                    "activation checkpointing with sft_overrides={'activation_checkpointing': True}."
                )
                e.__traceback__ = None  # its frames hold the activations that filled the memory
            if oom is not None:
                trainer, model = free_trial(trainer, model)
                raise TrialOutOfMemoryError(oom)
            if record.failure is not None:
                raise record.failure
            if record.pruned_at is not None:
                raise optuna.TrialPruned(
                    f"Pruned at {self.fidelity_unit} {record.pruned_at}; checkpoint saved in "
                    f"{trial.user_attrs.get(contract.CHECKPOINT)}."
                )
            if not record.values:
                raise TrialFailure(
                    "Training finished without any evaluation (the resumed checkpoint may already be at "
                    f"the last {self.fidelity_unit})."
                )
            return float(record.values[-1])
        except TrialFailure as failure:
            return self._fail(trial, failure)
        finally:
            trainer, model = free_trial(trainer, model)
            shutil.rmtree(out_dir, ignore_errors=True)

    # ------------------------------------------------------------------ internals
    def _fail(self, trial: optuna.Trial, failure: TrialFailure) -> float:
        reason = f"{type(failure).__name__}: {failure}"
        trial.set_user_attr(FAIL_REASON, reason)
        if self.on_failure == "raise":
            raise failure
        _logger.warning("Trial %d failed: %s", trial.number, reason)
        return float("nan")

    def _record_test_scores(self, trial: optuna.Trial, trainer: Any, model: "PreTrainedModel") -> None:
        scores = self.score(model, trainer, "test")
        for name, value in scores.items():
            trial.set_user_attr(TEST_METRIC_PREFIX + name, value)
        trial.set_user_attr(TEST_SCORE, scores[self.metric])
