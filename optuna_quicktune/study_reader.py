"""One study of the storage contract read as a task and its runs (stitched trial chains).

:func:`read_study` is what :meth:`~optuna_quicktune.metadataset.MetaDataset.from_storage` does for
each study: check the contract, find the search space (the study's ``quicktune.space``, else the
trials' distributions), stitch paused-and-resumed trials into one curve each, and say why a study
or a trial is skipped instead of failing the whole read. :func:`apply_metafeature_policy` then makes
the studies' meta-features agree.

A run paused by the pruner and continued later is several trials linked by ``quicktune.resume_of``;
the child's steps follow the parent's, and the child's costs (counted from the child's own start)
are offset by the parent's last cumulative cost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import chains, contract
from optuna_quicktune.errors import ContractError, MetaFeatureError
from optuna_quicktune.space import SearchSpace

__all__ = ["Task", "Run", "MetaFeaturePolicy", "read_study", "apply_metafeature_policy", "describe_metafeature_mismatch"]

_logger = logging.getLogger("optuna_quicktune.metadataset")  # skip reasons keep the logger name users filter on

MetaFeaturePolicy = Literal["strict", "intersection", "none"]

@dataclass(frozen=True)
class Task:
    """One study of the meta-dataset: a dataset, a base model and a metric."""

    name: str
    dataset: str
    model: str
    metric: str
    direction: str  # "maximize" | "minimize"
    fidelity_unit: str
    fidelity_max: int
    metafeatures: Mapping[str, float] = field(default_factory=dict)

    @property
    def sign(self) -> float:
        """+1 when higher scores are better, -1 otherwise (surrogates always maximise sign * y)."""
        return 1.0 if self.direction == "maximize" else -1.0


@dataclass
class Run:
    """One configuration's learning curve on one task (a stitched chain of trials)."""

    task: int
    config: dict[str, Any]
    curve: np.ndarray  # (L,) score at fidelity 1..L
    cost: np.ndarray  # (L,) cumulative seconds at fidelity 1..L (NaN where unknown)
    trials: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return int(self.curve.shape[0])


def read_study(
    study: optuna.Study, space: SearchSpace | None
) -> tuple[str | None, tuple[Task, SearchSpace, list[Run]] | None]:
    try:
        info = contract.read_task(study)
    except ContractError as e:
        return str(e), None
    task = Task(name=study.study_name, dataset=info.dataset, model=info.model, metric=info.metric,
                direction=info.direction, fidelity_unit=info.fidelity_unit, fidelity_max=info.fidelity_max,
                metafeatures=dict(info.metafeatures or {}))
    trials = study.get_trials(deepcopy=False)
    study_space = space or _infer_space(trials, info.space)
    if study_space is None:
        return "no finished trial with parameters", None
    runs = _stitch(trials, study_space, task)
    if not runs:
        return "no trial with a usable learning curve", None
    return None, (task, study_space, runs)


def _infer_space(trials: Sequence[FrozenTrial], space_attr: Any) -> SearchSpace | None:
    name = str(space_attr.get("name", "custom")) if isinstance(space_attr, Mapping) else "custom"
    counts: dict[str, tuple[int, dict[str, BaseDistribution]]] = {}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.distributions:
            fp = SearchSpace(t.distributions).fingerprint
            n, _ = counts.get(fp, (0, t.distributions))
            counts[fp] = (n + 1, t.distributions)
    if not counts:
        return None
    if isinstance(space_attr, dict) and space_attr.get("conditions"):
        try:  # describe_task stores a conditional space whole: its trials hold different subsets
            return SearchSpace.from_json(space_attr)
        except ValueError as e:
            _logger.warning("The study's %r cannot be read (%s); inferring the space from its trials.", contract.SPACE, e)
    if len(counts) > 1:  # trials with different parameter sets: a define-by-run (conditional) space?
        conditional = _conditional_space(trials, name)
        if conditional is not None:
            return conditional
    # The space used by most trials; trials of another space are then skipped one by one.
    _, dists = max(counts.values(), key=lambda v: v[0])
    return SearchSpace(dists, name=name)


def _conditional_space(trials: Sequence[FrozenTrial], name: str) -> SearchSpace | None:
    """The conditional space that explains which parameters each finished trial declared.

    For studies written without ``describe_task(space=...)``. ``None`` (then the most common
    parameter set is kept, as for any study) if a name was declared with two distributions or no
    equality/in-set conditions on categorical parents explain the trials.
    """
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.distributions]
    union: dict[str, BaseDistribution] = {}
    for t in finished:  # first appearance: a define-by-run objective declares parents first
        for k, d in t.distributions.items():
            if union.setdefault(k, d) != d:
                return None
    return SearchSpace.infer([t.params for t in finished], union, name=name)


def _trial_piece(t: FrozenTrial, space: SearchSpace, task: Task) -> tuple[str | None, contract.RunInfo | None]:
    """The trial's validated run, or why it is skipped."""
    if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return f"state {t.state.name}.", None
    try:
        run = contract.read_trial(t, study=task.name, fidelity_max=task.fidelity_max)
    except ContractError as e:
        return str(e), None
    # Every active parameter, with the space's distribution; a parameter the space says is inactive
    # for this configuration may also be declared (an objective that always suggests it): ignored.
    declared = set(t.distributions)
    if not set(space.active(t.params)) <= declared <= set(space.distributions) or any(
        t.distributions[k] != space.distributions[k] for k in declared
    ):
        return "parameters differ from the study's search space.", None
    if not run.steps:
        return "no intermediate values (no learning curve).", None
    if chains.diverged(run.values):
        return "non-finite intermediate values (a diverged run).", None
    return None, run


def _stitch(trials: Sequence[FrozenTrial], space: SearchSpace, task: Task) -> list[Run]:
    """One :class:`Run` per chain of finished trials (see :mod:`optuna_quicktune.chains`)."""
    pieces: dict[int, contract.RunInfo] = {}
    for t in sorted(trials, key=lambda t: t.number):
        reason, piece = _trial_piece(t, space, task)
        if reason is not None:
            _logger.info("Task %r: skipping trial %d: %s", task.name, t.number, reason)
            continue
        assert piece is not None
        pieces[t.number] = piece
    children: dict[int, int] = {}
    for number, piece in pieces.items():
        parent = piece.resume_of
        if parent is None:
            continue
        if parent in children:
            _logger.info(
                "Task %r: trial %d also resumes trial %d (already continued by %d); ignoring it.",
                task.name, number, parent, children[parent],
            )
            continue
        children[parent] = number
    runs: list[Run] = []
    for number, piece in pieces.items():
        if piece.resume_of is not None:
            if piece.resume_of not in pieces:
                _logger.info("Task %r: trial %d resumes trial %d, which is not a usable run; skipped.",
                             task.name, number, piece.resume_of)
            continue
        values, cost = chains.continue_curve(np.zeros(0), None, piece.steps, piece.values, piece.cost, task.fidelity_max)
        chain, node = [number], number
        while node in children:
            child = pieces[children[node]]
            if child.params != piece.params:
                _logger.info("Task %r: continuation trial %d of %d not stitched: its parameters differ.",
                             task.name, child.number, node)
                break
            values, cost = chains.continue_curve(values, cost, child.steps, child.values, child.cost, task.fidelity_max)
            chain.append(child.number)
            node = child.number
        if values.shape[0] == 0:
            _logger.info("Task %r: trial %d has no step 1; skipped.", task.name, number)
            continue
        runs.append(Run(task=0, config=space.project(piece.params), curve=values, cost=cost, trials=tuple(chain)))
    return runs


def apply_metafeature_policy(tasks: list[Task], policy: MetaFeaturePolicy) -> list[Task]:
    if policy == "none":
        return [replace(t, metafeatures={}) for t in tasks]
    names = [set(t.metafeatures) for t in tasks]
    if all(n == names[0] for n in names):
        return tasks
    if policy == "intersection":
        common = set.intersection(*names)
        if not common:
            _logger.warning("The studies share no meta-feature name; transfer will be dataset-agnostic.")
        return [replace(t, metafeatures={k: t.metafeatures[k] for k in sorted(common)}) for t in tasks]
    if policy != "strict":
        raise ValueError(f"metafeatures must be 'strict', 'intersection' or 'none', not {policy!r}.")
    raise MetaFeatureError(
        "The studies do not have the same meta-features: "
        + describe_metafeature_mismatch(tasks)
        + f". Add the missing ones to the studies' {contract.METAFEATURES!r}, or pass "
        "metafeatures='intersection' (keep the common names) or 'none' (dataset-agnostic)."
    )


def describe_metafeature_mismatch(tasks: Sequence[Task]) -> str:
    union = sorted(set().union(*[set(t.metafeatures) for t in tasks]))
    parts = []
    for t in tasks:
        lacking = [k for k in union if k not in t.metafeatures]
        if lacking:
            parts.append(f"{t.name!r} lacks {lacking}")
    return "; ".join(parts)
