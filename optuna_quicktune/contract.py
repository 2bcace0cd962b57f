"""The storage contract: the attribute names that make an Optuna study a meta-dataset task.

One study is one task (dataset + base model + metric); one trial is one run of one configuration.
Everything here is plain JSON in Optuna user attributes, so any Optuna storage, any worker and
optuna-dashboard can read it. Objectives (``trl_objectives`` or your own) write it through
:func:`describe_task` and :func:`record_cost`; the sampler, pruner and :class:`MetaDataset` read it
through :func:`read_task`, :func:`read_trial`, :func:`read_metafeatures` and :func:`read_fidelity`.

Why one module: when every reader parses the attributes itself, each one accepts a different set
of malformed values (a direction of ``"sideways"`` read as minimise, a fidelity of ``2.5`` cut to 2).
Here each attribute is checked once and a broken one raises :class:`ContractError`, which names the
study, the trial, the attribute and the fix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune.errors import ContractError, MetaFeatureValueError
from optuna_quicktune.space import SearchSpace

__all__ = [
    "TASK", "METAFEATURES", "FIDELITY", "SPACE", "ZERO_SHOT", "COLLECT_INFO",
    "COST", "CONFIG_ID", "PREDICTED", "PAUSED", "RESUME_OF", "CHECKPOINT", "FAIL_REASON", "RETRY_OF",
    "TEST_SCORE", "TEST_METRIC_PREFIX", "VAL_METRICS", "CONFIG_INDEX", "CPU_COST",
    "COST_SOURCE", "DUPLICATE_OF", "PROMPT_FORMAT", "HARDWARE", "HEADROOM_LABEL", "PARAMS", "LEASE", "RECOVERED_BY", "DIRECTIONS", "METAFEATURE_LIMIT",
    "TaskInfo", "RunInfo", "ContractError",
    "describe_task", "record_cost", "read_task", "read_trial", "read_metafeatures", "read_fidelity",
    "parse_metafeatures", "parse_fidelity", "study_direction", "read_resume_of", "check_fidelity_fits",
]

# Study user attributes
TASK = "quicktune.task"  # {"dataset", "model", "metric", "direction"}
METAFEATURES = "quicktune.metafeatures"  # {name: float}
FIDELITY = "quicktune.fidelity"  # {"unit": str, "max": int}; curves are indexed 1..max
SPACE = "quicktune.space"  # {"name", "fingerprint"}; a conditional space: SearchSpace.to_json()
ZERO_SHOT = "quicktune.zero_shot"  # the base model's scores without finetuning: {split: {metric: value}}
COLLECT_INFO = "quicktune.collect"  # settings of a `quicktune collect` run

# Trial user attributes
COST = "quicktune.cost"  # cumulative seconds since this trial started, aligned with reported steps
CONFIG_ID = "quicktune.config_id"
PREDICTED = "quicktune.predicted"  # {"mean", "std", "cost", "fidelity"} at proposal time
PAUSED = "quicktune.paused"  # bool: pruned with a checkpoint, may be resumed
RESUME_OF = "quicktune.resume_of"  # trial number of the paused trial this one continues
CHECKPOINT = "quicktune.checkpoint"  # path of the checkpoint saved when pausing
FAIL_REASON = "quicktune.fail_reason"  # why a trial ended FAIL (divergence, a worker died, bad input)
RETRY_OF = "quicktune.retry_of"  # trial number of the run (killed with its worker) this one repeats
RECOVERED_BY = "quicktune.recovered_by"  # the worker that failed a stale trial (decides who re-enqueues)
TEST_SCORE = "quicktune.test_score"  # the task metric on the test split, after the last step
TEST_METRIC_PREFIX = "quicktune.test."  # per-metric test scores: quicktune.test.exact_match, ...
VAL_METRICS = "quicktune.val_metrics"  # every validation metric at each reported step
CONFIG_INDEX = "quicktune.collect.index"  # position of the configuration in a collection's list
CPU_COST = "quicktune.collect.cpu_cost"  # CPU seconds measured when GPU costs were converted
COST_SOURCE = "quicktune.collect.cost_source"  # how quicktune.cost was derived
DUPLICATE_OF = "quicktune.collect.duplicate_of"  # stopped before training: another trial has its config
PROMPT_FORMAT = "quicktune.prompt_format"  # study: how examples became prompts (plain text or chat template)
HARDWARE = "quicktune.collect.hardware"  # study: device, dtype and runs sharing it when the costs were measured
HEADROOM_LABEL = "quicktune.headroom.label"  # trial: which headroom run (tools/cpu_headroom.py) it is

# Trial system attributes (written by the plugin, not meant for users)
PARAMS = "quicktune.params"  # the parameters the sampler chose in before_trial
LEASE = "quicktune.lease"  # {"worker", "pid", "beat"}: the live worker of a RUNNING trial
TENTATIVE = "quicktune.claim_tentative"  # bool: the trial's claim is not yet confirmed (see study_state)

DIRECTIONS = ("maximize", "minimize")
#: Largest magnitude accepted for a meta-feature: beyond it the surrogate's normalisation overflows
#: (a value of 1e300 gave an infinite predicted cost). Rescale such a feature (e.g. log10).
METAFEATURE_LIMIT = 1e12
_logger = logging.getLogger(__name__)
_DESCRIBE = "Write it with optuna_quicktune.contract.describe_task(study, ...)."


@dataclass(frozen=True)
class TaskInfo:
    """A study's task, validated: what :class:`MetaDataset` and the sampler need of it."""

    study: str
    dataset: str
    model: str
    metric: str
    direction: str  # "maximize" | "minimize", equal to the study's own direction
    fidelity_unit: str
    fidelity_max: int
    metafeatures: dict[str, float] | None = None
    space: dict[str, Any] | None = None

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0


@dataclass(frozen=True)
class RunInfo:
    """One trial, validated: its curve (steps sorted), costs and chain links."""

    number: int
    state: TrialState
    params: dict[str, Any]
    steps: tuple[int, ...]
    values: np.ndarray
    cost: np.ndarray | None  # cumulative seconds aligned with ``steps``; None when not recorded
    config_id: str | None = None
    resume_of: int | None = None
    retry_of: int | None = None
    checkpoint: str | None = None
    paused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- writing
def describe_task(
    study: optuna.Study,
    *,
    dataset: str,
    model: str,
    metric: str,
    fidelity_max: int,
    fidelity_unit: str = "epoch",
    metafeatures: Mapping[str, float] | None = None,
    space: SearchSpace | None = None,
    overwrite: bool = False,
) -> None:
    """Write the contract's study attributes, once.

    Several workers may call this at the same time; values already present are kept unless
    ``overwrite`` so that a restarted worker never changes what the meta-dataset says of a task.
    Values are validated first, so a malformed task never reaches the storage.
    """
    _, fmax = parse_fidelity({"unit": fidelity_unit, "max": fidelity_max}, study=study.study_name,
                             fix="Pass fidelity_max=<whole number of steps, >= 1>.")
    attrs: dict[str, Any] = {
        TASK: {"dataset": dataset, "model": model, "metric": metric, "direction": study_direction(study)},
        FIDELITY: {"unit": str(fidelity_unit), "max": fmax},
    }
    if metafeatures is not None:
        attrs[METAFEATURES] = parse_metafeatures(metafeatures, study=study.study_name)
    if space is not None:
        # A conditional space is stored whole: its trials each hold only their active parameters,
        # so the space cannot be read back from any one of them.
        attrs[SPACE] = space.to_json() if space.is_conditional else {"name": space.name, "fingerprint": space.fingerprint}
    present = study.user_attrs
    for key, value in attrs.items():
        if overwrite or key not in present:
            study.set_user_attr(key, value)


def record_cost(trial: optuna.Trial, cumulative_costs: list[float]) -> None:
    """Store the cumulative cost list (seconds since the trial started, one per reported step)."""
    trial.set_user_attr(COST, [float(c) for c in cumulative_costs])


# ---------------------------------------------------------------------- reading a study
def study_direction(study: optuna.Study) -> str:
    """``"maximize"`` or ``"minimize"``; a multi-objective study is not a task."""
    if len(study.directions) != 1:
        raise ContractError(
            f"has {len(study.directions)} objectives; a QuickTune task is single-objective.",
            study=study.study_name, fix="Create the study with one direction (direction='maximize' or 'minimize').",
        )
    return "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"


def parse_metafeatures(value: Any, *, study: str | None = None, attribute: str | None = METAFEATURES,
                       allow_missing: bool = False) -> dict[str, float]:
    """``{name: finite float}``; each bad value is named, with the reason.

    ``allow_missing`` keeps ``None``/NaN values as NaN, for a sampler that imputes them.
    """
    fix = "Meta-features are a {name: number} mapping with finite values (rescale huge ones, e.g. log10)."
    if not isinstance(value, Mapping):
        raise ContractError(f"must be a {{name: number}} mapping, not {type(value).__name__}.",
                            study=study, attribute=attribute, fix=fix)
    out: dict[str, float] = {}
    for k, v in value.items():
        number = _number(v)
        if allow_missing and (v is None or (number is not None and math.isnan(number))):
            out[str(k)] = math.nan
            continue
        if number is None or not math.isfinite(number) or abs(number) > METAFEATURE_LIMIT:
            problem = "not a number" if number is None else (
                "not finite" if not math.isfinite(number) else f"larger in magnitude than {METAFEATURE_LIMIT:g}")
            raise MetaFeatureValueError(f"meta-feature {str(k)!r} = {v!r} is {problem}.", study=study, attribute=attribute, fix=fix)
        out[str(k)] = number
    return out


def parse_fidelity(value: Any, *, study: str | None = None, fix: str | None = None) -> tuple[str, int]:
    """``(unit, max)`` of a ``quicktune.fidelity`` value; ``max`` must be a whole number >= 1."""
    fix = fix or f"Set it to {{'unit': 'epoch', 'max': <whole number of steps, >= 1>}}. {_DESCRIBE}"
    if not isinstance(value, Mapping):
        raise ContractError(f"must be a mapping with 'unit' and 'max', not {value!r}.", study=study, attribute=FIDELITY, fix=fix)
    raw = value.get("max")
    number = _number(raw)
    if number is None or not math.isfinite(number) or number != int(number) or number < 1:
        raise ContractError(f"'max' is {raw!r}; it must be a whole number of steps >= 1.",
                            study=study, attribute=FIDELITY, fix=fix)
    unit = value.get("unit", "epoch")
    if not isinstance(unit, str):
        raise ContractError(f"'unit' is {unit!r}; it must be a string such as 'epoch' or 'step'.",
                            study=study, attribute=FIDELITY, fix=fix)
    return unit, int(number)


def read_metafeatures(study: optuna.Study) -> dict[str, float] | None:
    """The study's meta-features, validated; None when the attribute is absent."""
    value = study.user_attrs.get(METAFEATURES)
    return None if value is None else parse_metafeatures(value, study=study.study_name)


def read_fidelity(study: optuna.Study) -> int | None:
    """The study's fidelity maximum, validated; None when the attribute is absent."""
    value = study.user_attrs.get(FIDELITY)
    return None if value is None else parse_fidelity(value, study=study.study_name)[1]


def read_task(study: optuna.Study) -> TaskInfo:
    """The study's task, or :class:`ContractError` naming what is missing or malformed."""
    name = study.study_name
    attrs = study.user_attrs
    task = attrs.get(TASK)
    if not isinstance(task, Mapping):
        problem = "is missing" if task is None else f"must be a mapping, not {task!r}"
        raise ContractError(f"{problem}; it says which dataset, model and metric the study is.",
                            study=name, attribute=TASK, fix=_DESCRIBE)
    actual = study_direction(study)
    direction = task.get("direction", actual)
    if direction not in DIRECTIONS:
        raise ContractError(f"'direction' is {direction!r}; it must be 'maximize' or 'minimize'.",
                            study=name, attribute=TASK, fix=f"Set it to the study's direction ({actual!r}).")
    if direction != actual:
        raise ContractError(f"'direction' is {direction!r} but the study was created with {actual!r}.",
                            study=name, attribute=TASK, fix=f"Set it to {actual!r}: curves are read in the study's direction.")
    if FIDELITY not in attrs:
        raise ContractError("is missing; curves are read against the number of steps of a full run.",
                            study=name, attribute=FIDELITY, fix=_DESCRIBE)
    unit, fmax = parse_fidelity(attrs[FIDELITY], study=name)
    space = attrs.get(SPACE)
    if space is not None and not isinstance(space, Mapping):
        raise ContractError(f"must be a mapping with 'name' and 'fingerprint', not {space!r}.",
                            study=name, attribute=SPACE, fix=_DESCRIBE)
    return TaskInfo(
        study=name, dataset=str(task.get("dataset", name)), model=str(task.get("model", "")),
        metric=str(task.get("metric", "value")), direction=direction, fidelity_unit=unit, fidelity_max=fmax,
        metafeatures=read_metafeatures(study), space=None if space is None else dict(space),
    )


# ---------------------------------------------------------------------- reading a trial
def read_trial(trial: FrozenTrial, *, study: str | None = None, fidelity_max: int | None = None) -> RunInfo:
    """One trial's contract attributes and curve, or :class:`ContractError`.

    With ``fidelity_max``, reported steps must lie in ``1..fidelity_max``.
    """
    n, attrs = trial.number, trial.user_attrs
    resume_of = _trial_number(attrs.get(RESUME_OF), trial, study, RESUME_OF, "resumes (a paused trial)")
    retry_of = _trial_number(attrs.get(RETRY_OF), trial, study, RETRY_OF, "repeats (a run killed with its worker)")
    steps = tuple(sorted(int(s) for s in trial.intermediate_values))
    if steps and fidelity_max is not None and (steps[0] < 1 or steps[-1] > fidelity_max):
        raise ContractError(f"reports steps {steps[0]}..{steps[-1]}, outside 1..{fidelity_max}, the task's fidelity range.",
                            study=study, trial=n, attribute=FIDELITY,
                            fix="Report step k = the k-th fidelity step (1-based), at most the study's fidelity max.")
    values = np.array([trial.intermediate_values[s] for s in steps], dtype=np.float64)
    cost = _costs(attrs.get(COST), len(steps), trial, study)
    for key in (CONFIG_ID, CHECKPOINT):
        if attrs.get(key) is not None and not isinstance(attrs[key], str):
            raise ContractError(f"is {attrs[key]!r}; it must be a string.", study=study, trial=n, attribute=key,
                                fix="Let QuickTuneSampler and the objective write it.")
    return RunInfo(
        number=n, state=trial.state, params=dict(trial.params), steps=steps, values=values, cost=cost,
        config_id=attrs.get(CONFIG_ID), resume_of=resume_of, retry_of=retry_of, checkpoint=attrs.get(CHECKPOINT),
        paused=bool(attrs.get(PAUSED, False)),
    )


def _trial_number(value: Any, trial: FrozenTrial, study: str | None, key: str, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 0 <= value < trial.number:
        raise ContractError(f"is {value!r}; it must be the number of an earlier trial this one {what}.",
                            study=study, trial=trial.number, attribute=key,
                            fix="Let QuickTuneSampler write it, or remove it so the trial is read as a run of its own.")
    return int(value)


def _costs(value: Any, n_steps: int, trial: FrozenTrial, study: str | None) -> np.ndarray | None:
    if value is None:
        return None
    fix = "Record it with optuna_quicktune.contract.record_cost(trial, cumulative_seconds) after each report."
    if not isinstance(value, (list, tuple)) or any(_number(c) is None for c in value):
        raise ContractError(f"must be a list of numbers, not {value!r}.", study=study, trial=trial.number, attribute=COST, fix=fix)
    cost = np.array([_number(c) for c in value], dtype=np.float64)
    if np.any(np.isinf(cost)) or np.any(cost < 0):  # NaN is allowed: "unknown"
        raise ContractError("holds negative or infinite seconds.", study=study, trial=trial.number, attribute=COST, fix=fix)
    if cost.shape[0] != n_steps:
        raise ContractError(f"has {cost.shape[0]} entries for {n_steps} reported steps.",
                            study=study, trial=trial.number, attribute=COST, fix=fix)
    return cost


def _number(value: Any) -> float | None:
    """A real number as float (bools and strings are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return math.inf


def read_resume_of(trial: FrozenTrial) -> int | None:
    """The paused trial this one continues, or None; a malformed link is ignored with a warning.

    Lenient on purpose: the sampler reads the study it is tuning on every call, and one trial with
    a garbled ``quicktune.resume_of`` must not stop every later trial. The trial is then read as a
    run of its own (:func:`read_trial` is the strict reader).
    """
    try:
        return _trial_number(trial.user_attrs.get(RESUME_OF), trial, None, RESUME_OF, "resumes (a paused trial)")
    except ContractError as e:
        _logger.warning("%s Read as a run of its own.", e)
        return None


def check_fidelity_fits(study: optuna.Study, fidelity_max: int, surrogate_max: int) -> None:
    """A task longer than the surrogate's curves cannot be predicted: say so before a trial runs."""
    if fidelity_max > surrogate_max:
        raise ContractError(
            f"'max' is {fidelity_max} but the surrogate was meta-trained on curves of at most {surrogate_max} steps.",
            study=study.study_name, attribute=FIDELITY,
            fix="Report at most that many fidelity steps (or pass QuickTuneSampler(fidelity_max=...)), or "
            "meta-train a surrogate on longer curves.",
        )
