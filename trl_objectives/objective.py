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

import gc
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from transformers import TrainerCallback

from optuna_quicktune import contract
from optuna_quicktune.space import DEFAULT_LORA_CONFIG, TARGET_MODULE_PRESETS, SearchSpace, lora_space
from trl_objectives.data import QADataset, format_prompt_completion
from trl_objectives.errors import (
    NonFiniteLossError,
    StudyMismatchError,
    TRLObjectiveInputError,
    TrialFailure,
    TrialOutOfMemoryError,
)
from trl_objectives.evaluate import canonical_metric, evaluate_generation, metric_direction
from trl_objectives.metafeatures import compute_metafeatures
from trl_objectives.models import ModelSource, load_model, load_tokenizer, pick_device_and_dtype, resolve_model

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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

#: Trial user attribute: the chosen metric on the test split (never used for selection).
TEST_SCORE = "quicktune.test_score"
#: Prefix of per-metric test scores: ``quicktune.test.exact_match``, ``.token_f1``, ``.eval_loss``.
TEST_METRIC_PREFIX = "quicktune.test."
#: Trial user attribute: every validation metric at each reported step (list aligned with steps).
VAL_METRICS = "quicktune.val_metrics"
#: Trial user attribute: why a trial failed (NaN loss, out of memory).
FAIL_REASON = "quicktune.fail_reason"
#: Name of the JSON file that describes a checkpoint folder.
CHECKPOINT_META = "quicktune_checkpoint.json"

#: Search-space names that configure ``peft.LoraConfig``.
LORA_PARAMS = frozenset(
    {"lora_r", "lora_alpha", "lora_alpha_ratio", "lora_dropout", "target_modules", "use_dora", "use_rslora"}
)
#: Search-space names passed to ``trl.SFTConfig`` as they are (``warmup_ratio`` becomes ``warmup_steps``).
SFT_PARAMS = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "warmup_steps",
        "lr_scheduler_type",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "optim",
        "neftune_noise_alpha",
        "max_length",
    }
)
_CHECKPOINT_FORMAT = 1


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
            fid = attrs.get(contract.FIDELITY) or {}
            if fid.get("unit") != self.fidelity_unit or fid.get("max") != self.fidelity_max:
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
            if contract.METAFEATURES in attrs and contract.SPACE in attrs:
                return
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

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every parameter of the space (Optuna records them as the trial's params)."""
        config: dict[str, Any] = {}
        for name, dist in self.space.distributions.items():
            if isinstance(dist, FloatDistribution):
                config[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, IntDistribution):
                config[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, CategoricalDistribution):
                config[name] = trial.suggest_categorical(name, list(dist.choices))
            else:  # pragma: no cover - SearchSpace only admits these three
                raise TRLObjectiveInputError(f"Unsupported distribution {dist!r} for {name!r}.")
        return config

    def training_settings(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split a configuration into ``LoraConfig`` kwargs and ``SFTConfig`` kwargs.

        Missing LoRA-space parameters take their ``DEFAULT_LORA_CONFIG`` value; parameters outside
        :data:`LORA_PARAMS` and :data:`SFT_PARAMS` are left out of both.
        """
        full = {**DEFAULT_LORA_CONFIG, **{k: v for k, v in config.items() if k in LORA_PARAMS | SFT_PARAMS}}
        if "lora_alpha" in config:
            full.pop("lora_alpha_ratio", None)
        r = int(full["lora_r"])
        alpha = float(full["lora_alpha"]) if "lora_alpha" in full else float(full["lora_alpha_ratio"]) * r
        targets = full["target_modules"]
        if isinstance(targets, str) and targets in TARGET_MODULE_PRESETS:
            targets = TARGET_MODULE_PRESETS[targets]
        lora = {
            "r": r,
            "lora_alpha": alpha,
            "lora_dropout": float(full["lora_dropout"]),
            "target_modules": targets,
            "use_dora": bool(full["use_dora"]),
            "use_rslora": bool(full["use_rslora"]),
        }
        sft: dict[str, Any] = {}
        for key in SFT_PARAMS:
            if key in full:
                sft[key] = full[key]
        if "warmup_ratio" in sft:  # transformers 5 takes a ratio in [0, 1) as a float warmup_steps
            ratio = float(sft.pop("warmup_ratio"))
            sft.setdefault("warmup_steps", ratio if ratio < 1 else 0.999)
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length"):
            if key in sft:
                sft[key] = int(sft[key])
        return lora, sft

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
        study = trial.study
        self.describe(study)
        config = self.suggest(trial)
        if contract.CONFIG_ID not in trial.user_attrs:
            trial.set_user_attr(contract.CONFIG_ID, self.space.config_id(config))
        resume = self._resume_checkpoint(trial, config)
        lora_kwargs, sft_kwargs = self.training_settings(config)

        trainer = None
        model = None
        out_dir = Path(tempfile.mkdtemp(prefix="quicktune-sft-"))
        reporter = _ReportCallback(self, trial, started, resume)
        oom: str | None = None
        try:
            try:
                model = self._build_model(lora_kwargs)
                trainer = self._build_trainer(model, sft_kwargs, out_dir, reporter)
                trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
                if reporter.failure is None and reporter.pruned_at is None and reporter.values and self.evaluate_test:
                    reporter.active = False
                    self._record_test_scores(trial, trainer, model)
            except Exception as e:  # noqa: BLE001 - only out-of-memory becomes a trial failure here
                if not _is_oom(e):
                    raise
                first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
                oom = (
                    f"Out of memory with {_describe_batch(sft_kwargs)} and max_length={self.max_length}: "
                    f"{first_line}. Memory was freed; lower the batch size or max_length, or enable "
                    "activation checkpointing with sft_overrides={'activation_checkpointing': True}."
                )
                e.__traceback__ = None  # its frames hold the activations that filled the memory
            if oom is not None:
                trainer, model = _free(trainer, model)
                raise TrialOutOfMemoryError(oom)
            if reporter.failure is not None:
                raise reporter.failure
            if reporter.pruned_at is not None:
                raise optuna.TrialPruned(
                    f"Pruned at {self.fidelity_unit} {reporter.pruned_at}; checkpoint saved in "
                    f"{trial.user_attrs.get(contract.CHECKPOINT)}."
                )
            if not reporter.values:
                raise TrialFailure(
                    "Training finished without any evaluation (the resumed checkpoint may already be at "
                    f"the last {self.fidelity_unit})."
                )
            return float(reporter.values[-1])
        except TrialFailure as failure:
            return self._fail(trial, failure)
        finally:
            trainer, model = _free(trainer, model)
            shutil.rmtree(out_dir, ignore_errors=True)

    # ------------------------------------------------------------------ internals
    def _fail(self, trial: optuna.Trial, failure: TrialFailure) -> float:
        reason = f"{type(failure).__name__}: {failure}"
        trial.set_user_attr(FAIL_REASON, reason)
        if self.on_failure == "raise":
            raise failure
        _logger.warning("Trial %d failed: %s", trial.number, reason)
        return float("nan")

    def _resume_checkpoint(self, trial: optuna.Trial, config: Mapping[str, Any]) -> Path | None:
        attrs = trial.user_attrs
        parent = attrs.get(contract.RESUME_OF)
        if parent is None:
            return None
        path = attrs.get(contract.CHECKPOINT)
        if not path:
            raise TRLObjectiveInputError(
                f"Trial {trial.number} resumes trial {parent} but has no {contract.CHECKPOINT!r} user "
                "attribute; enqueue it with user_attrs={resume_of: n, checkpoint: <the parent's checkpoint>}."
            )
        folder = Path(path)
        meta = load_checkpoint_meta(folder)
        if meta.get("config_id") != self.space.config_id(config):
            raise TRLObjectiveInputError(
                f"Checkpoint {folder} was saved for configuration {meta.get('params')} but trial "
                f"{trial.number} has {dict(config)}; enqueue the continuation with the parent's params."
            )
        if int(meta["step"]) >= self.fidelity_max:
            raise TRLObjectiveInputError(
                f"Checkpoint {folder} is at {self.fidelity_unit} {meta['step']}, the last one "
                f"({self.fidelity_max}); there is nothing to resume."
            )
        if meta.get("fidelity_unit") != self.fidelity_unit:
            raise TRLObjectiveInputError(
                f"Checkpoint {folder} counts {meta.get('fidelity_unit')}s but this objective counts "
                f"{self.fidelity_unit}s."
            )
        return folder

    def _build_model(self, lora_kwargs: dict[str, Any]) -> "PreTrainedModel":
        import torch
        from peft import LoraConfig, get_peft_model

        model, _ = load_model(self.source, device=self.device, cache_dir=self.cache_dir)
        targets = lora_kwargs["target_modules"]
        if isinstance(targets, list):
            present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            found = [t for t in targets if t in present]
            if not found:
                raise TRLObjectiveInputError(
                    f"None of the LoRA target modules {targets} exists in {self.model_name}; its linear "
                    "layers are " + str(sorted({n.rsplit('.', 1)[-1] for n, m in model.named_modules()
                                                if isinstance(m, torch.nn.Linear)})) + "."
                )
            lora_kwargs = {**lora_kwargs, "target_modules": found}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
        return peft_model

    def _build_trainer(
        self, model: "PreTrainedModel", sft_kwargs: dict[str, Any], out_dir: Path, reporter: "_ReportCallback"
    ) -> Any:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl import SFTConfig, SFTTrainer

        device, dtype = pick_device_and_dtype(self.device)
        on_gpu = device.type == "cuda"
        kwargs: dict[str, Any] = {
            "output_dir": str(out_dir),
            "use_cpu": device.type == "cpu",
            "bf16": on_gpu and dtype == _bf16(),
            "fp16": on_gpu and dtype != _bf16(),
            # TRL defaults to activation (gradient) checkpointing; it only slows small LoRA runs down.
            "activation_checkpointing": False,
            "max_length": self.max_length,
            "per_device_eval_batch_size": self.eval_batch_size,
            "eval_strategy": "epoch" if self.eval_every_steps is None else "steps",
            "save_strategy": "no",
            "logging_strategy": "steps",
            "logging_steps": 1,
            "logging_nan_inf_filter": False,
            "report_to": "none",
            "disable_tqdm": True,
            "seed": self.seed,
            "data_seed": self.seed,
            "dataloader_num_workers": 0,
        }
        if self.eval_every_steps is None:
            kwargs["num_train_epochs"] = self.max_epochs
        else:
            kwargs["max_steps"] = self.max_steps
            kwargs["eval_steps"] = self.eval_every_steps
        kwargs.update(sft_kwargs)
        kwargs.update(self.sft_overrides)
        args = SFTConfig(**kwargs)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=self.formatted["train"],
            eval_dataset=self.formatted["validation"],
            processing_class=self.tokenizer,
            callbacks=[reporter, *self.callbacks],
        )
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        return trainer

    def _record_test_scores(self, trial: optuna.Trial, trainer: Any, model: "PreTrainedModel") -> None:
        scores = evaluate_generation(
            model, self.tokenizer, self.formatted["test"],
            max_new_tokens=self.max_new_tokens, batch_size=self.eval_batch_size,
        )
        metrics = trainer.evaluate(eval_dataset=self.formatted["test"], metric_key_prefix="test")
        scores["eval_loss"] = float(metrics["test_loss"])
        for name, value in scores.items():
            trial.set_user_attr(TEST_METRIC_PREFIX + name, float(value))
        trial.set_user_attr(TEST_SCORE, float(scores[self.metric]))


class _ReportCallback(TrainerCallback):
    """Reports each fidelity into the trial, watches the loss, and pauses (checkpoint) when pruned."""

    def __init__(self, objective: SFTObjective, trial: optuna.Trial, started: float, resume: Path | None) -> None:
        self.objective = objective
        self.trial = trial
        self.started = started
        self.resume = resume
        self.active = True
        self.values: list[float] = []
        self.costs: list[float] = []
        self.val_metrics: list[dict[str, float]] = []
        self.failure: TrialFailure | None = None
        self.pruned_at: int | None = None
        self._rng_restored = resume is None
        self._resume_meta = load_checkpoint_meta(resume) if resume is not None else None

    # -- resuming: optimizer/scheduler right after the trainer created them, RNG where Trainer would
    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.resume is not None:
            _load_training_state(self.resume, optimizer, lr_scheduler)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._rng_restored and self._resume_meta and self._resume_meta.get("epoch_boundary", True):
            _restore_rng(self.resume)  # type: ignore[arg-type]
            self._rng_restored = True

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._rng_restored:
            _restore_rng(self.resume)  # type: ignore[arg-type]
            self._rng_restored = True

    # -- divergence
    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if not self.active or not logs or self.failure is not None:
            return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failure = NonFiniteLossError(
                f"training loss became {loss} at optimizer step {state.global_step} (epoch {state.epoch:.2f}); "
                f"the configuration diverged (learning_rate={args.learning_rate:g})."
            )
            control.should_training_stop = True

    # -- reporting
    def _fidelity(self, state: Any) -> int:
        obj = self.objective
        if obj.eval_every_steps is None:
            return int(round(state.epoch))
        return int(state.global_step // obj.eval_every_steps)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, float] | None = None,
                    model: Any = None, optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        if not self.active or self.failure is not None or self.pruned_at is not None:
            return
        obj = self.objective
        metrics = dict(metrics or {})
        eval_loss = float(metrics.get("eval_loss", float("nan")))
        step = self._fidelity(state)
        if not math.isfinite(eval_loss):
            self.failure = NonFiniteLossError(
                f"validation loss is {eval_loss} at {obj.fidelity_unit} {step}; the configuration diverged."
            )
            control.should_training_stop = True
            return
        scores = {"eval_loss": eval_loss}
        if obj.metric != "eval_loss":
            scores.update(
                evaluate_generation(
                    model, obj.tokenizer, obj.formatted["validation"],
                    max_new_tokens=obj.max_new_tokens, batch_size=obj.eval_batch_size,
                )
            )
        value = float(scores[obj.metric])
        self.trial.report(value, step)
        self.values.append(value)
        self.costs.append(time.perf_counter() - self.started)
        self.val_metrics.append({k: float(v) for k, v in scores.items()})
        contract.record_cost(self.trial, self.costs)
        self.trial.set_user_attr(VAL_METRICS, self.val_metrics)
        if step >= obj.fidelity_max:
            return
        if self.trial.should_prune():
            folder = _checkpoint_folder(obj.checkpoint_dir, self.trial)
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
            self.pruned_at = step
            control.should_training_stop = True


# ---------------------------------------------------------------------- checkpoints
def _checkpoint_folder(root: Path, trial: optuna.Trial) -> Path:
    study = re.sub(r"[^A-Za-z0-9_.-]+", "_", trial.study.study_name) or "study"
    return (root / study / f"trial-{trial.number}").resolve()


def save_checkpoint(
    folder: str | os.PathLike[str],
    *,
    model: Any,
    optimizer: Any,
    lr_scheduler: Any,
    state: Any,
    meta: Mapping[str, Any],
) -> Path:
    """Save everything needed to continue a LoRA SFT run, as safetensors and JSON only.

    Layout: the PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``),
    ``optimizer.safetensors``/``optimizer.json``, ``scheduler.json``, ``rng.safetensors``/``rng.json``,
    ``trainer_state.json`` (transformers' own JSON) and :data:`CHECKPOINT_META`.  Nothing is pickled,
    so loading it can never run code.  Written into a temporary folder and renamed into place.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        opt_tree, opt_tensors = _to_json_and_tensors(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_tree))
        sched_tree, sched_tensors = _to_json_and_tensors(lr_scheduler.state_dict())
        if sched_tensors:
            save_file(sched_tensors, str(tmp / "scheduler.safetensors"))
        (tmp / "scheduler.json").write_text(json.dumps(sched_tree))
        rng_tree, rng_tensors = _to_json_and_tensors(_rng_state())
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps(rng_tree))
        state.save_to_json(str(tmp / "trainer_state.json"))
        (tmp / CHECKPOINT_META).write_text(json.dumps({"format": _CHECKPOINT_FORMAT, **meta}, indent=1, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The :data:`CHECKPOINT_META` of a checkpoint folder, after checking the folder is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TRLObjectiveInputError(
            f"Checkpoint folder {folder} does not exist (was it deleted, or saved on another machine?). "
            "Resume only from checkpoints this objective wrote."
        )
    needed = [CHECKPOINT_META, "adapter_model.safetensors", "adapter_config.json", "optimizer.json",
              "optimizer.safetensors", "scheduler.json", "trainer_state.json", "rng.json", "rng.safetensors"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise TRLObjectiveInputError(f"Checkpoint folder {folder} is incomplete: it lacks {missing}.")
    meta = json.loads((folder / CHECKPOINT_META).read_text())
    if meta.get("format") != _CHECKPOINT_FORMAT:
        raise TRLObjectiveInputError(
            f"Checkpoint {folder} has format {meta.get('format')!r}; this version reads format {_CHECKPOINT_FORMAT}."
        )
    return meta


def _load_training_state(folder: Path, optimizer: Any, lr_scheduler: Any) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state = _from_json_and_tensors(json.loads((folder / "optimizer.json").read_text()), tensors)
    opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
    optimizer.load_state_dict(opt_state)
    sched_tensors = load_file(str(folder / "scheduler.safetensors")) if (folder / "scheduler.safetensors").exists() else {}
    lr_scheduler.load_state_dict(_from_json_and_tensors(json.loads((folder / "scheduler.json").read_text()), sched_tensors))


def _rng_state() -> dict[str, Any]:
    import torch

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _restore_rng(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = _from_json_and_tensors(json.loads((folder / "rng.json").read_text()), load_file(str(folder / "rng.safetensors")))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_json_and_tensors(obj: Any) -> tuple[Any, dict[str, "torch.Tensor"]]:
    """Split a nested state dict into a JSON tree and a flat ``{key: tensor}`` dict for safetensors."""
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, Mapping):
            return {"__dict__": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v) for v in x]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return walk(x.item())
        if callable(x) and not isinstance(x, type):
            return {"__callable__": getattr(x, "__qualname__", type(x).__name__)}
        raise TypeError(
            f"Cannot checkpoint a {type(x).__name__} without pickling it; only tensors, numbers, strings, "
            "lists and dicts are saved."
        )

    return walk(obj), tensors


def _from_json_and_tensors(tree: Any, tensors: Mapping[str, "torch.Tensor"]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__dict__" in x:
                return {walk(k): walk(v) for k, v in x["__dict__"]}
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
            if "__float__" in x:
                return float(x["__float__"])
            if "__callable__" in x:
                return None
            return {k: walk(v) for k, v in x.items()}
        return x

    return walk(tree)


# ---------------------------------------------------------------------- memory
def _bf16() -> Any:
    import torch

    return torch.bfloat16


def _is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "cuda error: out of memory" in text)


def _describe_batch(sft_kwargs: Mapping[str, Any]) -> str:
    return (
        f"per_device_train_batch_size={sft_kwargs.get('per_device_train_batch_size')}, "
        f"gradient_accumulation_steps={sft_kwargs.get('gradient_accumulation_steps')}"
    )


def _free(trainer: Any, model: Any) -> tuple[None, None]:
    """Drop the trial's trainer and model (and accelerate's references to them), then free memory."""
    if trainer is not None:
        try:
            trainer.accelerator.free_memory()
        except Exception:  # noqa: BLE001 - best effort; the references die with the trainer anyway
            pass
    del trainer, model
    _release_memory()
    return None, None


def _release_memory() -> None:
    """Free the trial's model and optimizer before the next trial (GPU memory included)."""
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
