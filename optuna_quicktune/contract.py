"""The storage contract: the attribute names that make an Optuna study a meta-dataset task.

One study is one task (dataset + base model + metric); one trial is one run of one configuration.
Everything here is plain JSON in Optuna user attributes, so any Optuna storage, any worker and
optuna-dashboard can read it. Objectives (``trl_objectives`` or your own) write it through
:func:`describe_task` and :func:`record_cost`; the sampler, pruner and :class:`MetaDataset` read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from optuna_quicktune.space import SearchSpace

__all__ = [
    "TASK",
    "METAFEATURES",
    "FIDELITY",
    "SPACE",
    "COST",
    "CONFIG_ID",
    "PREDICTED",
    "PAUSED",
    "RESUME_OF",
    "CHECKPOINT",
    "describe_task",
    "record_cost",
    "read_metafeatures",
]

# Study user attributes
TASK = "quicktune.task"  # {"dataset", "model", "metric", "direction"}
METAFEATURES = "quicktune.metafeatures"  # {name: float}
FIDELITY = "quicktune.fidelity"  # {"unit": str, "max": int}; curves are indexed 1..max
SPACE = "quicktune.space"  # {"name", "fingerprint"}; a conditional space: SearchSpace.to_json()

# Trial user attributes
COST = "quicktune.cost"  # cumulative seconds since this trial started, aligned with reported steps
CONFIG_ID = "quicktune.config_id"
PREDICTED = "quicktune.predicted"  # {"mean", "std", "cost", "fidelity"} at proposal time
PAUSED = "quicktune.paused"  # bool: pruned with a checkpoint, may be resumed
RESUME_OF = "quicktune.resume_of"  # trial number of the paused trial this one continues
CHECKPOINT = "quicktune.checkpoint"  # path of the checkpoint saved when pausing


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
    """
    if fidelity_max < 1:
        raise ValueError(f"fidelity_max must be >= 1, got {fidelity_max}.")
    direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    attrs: dict[str, Any] = {
        TASK: {"dataset": dataset, "model": model, "metric": metric, "direction": direction},
        FIDELITY: {"unit": fidelity_unit, "max": int(fidelity_max)},
    }
    if metafeatures is not None:
        attrs[METAFEATURES] = {str(k): float(v) for k, v in metafeatures.items()}
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


def read_metafeatures(study: optuna.Study) -> dict[str, float] | None:
    value = study.user_attrs.get(METAFEATURES)
    return None if value is None else {str(k): float(v) for k, v in value.items()}


# Keys written by trl_objectives
TEST_SCORE = "quicktune.test_score"  # trial: the chosen metric on the test split (never used for selection)
TEST_METRIC_PREFIX = "quicktune.test."  # trial: + metric name, e.g. quicktune.test.exact_match
VAL_METRICS = "quicktune.val_metrics"  # trial: every validation metric at each reported step
FAIL_REASON = "quicktune.fail_reason"  # trial: why it failed (diverged, out of memory, ...)
ZERO_SHOT = "quicktune.zero_shot"  # study: base model scores, {"validation": {...}, "test": {...}}
COLLECT_INFO = "quicktune.collect"  # study: how `quicktune collect` ran (configs, seed, data, versions)
CONFIG_INDEX = "quicktune.collect.index"  # trial: index of the configuration in the collection's list
CPU_COST = "quicktune.collect.cpu_cost"  # trial: CPU seconds measured when GPU costs were converted
COST_SOURCE = "quicktune.collect.cost_source"  # trial: how quicktune.cost was derived
DUPLICATE_OF = "quicktune.collect.duplicate_of"  # trial: stopped before training, another trial has its config
PROMPT_FORMAT = "quicktune.prompt_format"  # study: how examples became prompts (plain text or chat template)
HARDWARE = "quicktune.collect.hardware"  # study: device, dtype and runs sharing it when the costs were measured
