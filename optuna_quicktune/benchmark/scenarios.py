"""Replay scenarios: where a benchmark's learning curves and costs come from.

A scenario is a set of tasks on one search space. For any configuration of a task it returns the
full learning curve (score at fidelity steps ``1..L``) and the cost of each step, so an optimiser
can be replayed on a simulated clock without training anything. Two kinds exist:

* :class:`TableScenario` replays a :class:`~optuna_quicktune.metadataset.MetaDataset` (for example
  one read from an Optuna storage). A proposed configuration is mapped to the nearest
  configuration of the task's table (in the space's [0, 1] encoding) and that run is replayed.
* :class:`~optuna_quicktune.benchmark.yahpo.YahpoScenario` (module ``yahpo``) queries a YAHPO-Gym surrogate folder (``config_space.json``,
  ``encoding.json``, ``model.onnx``) with the fidelity parameter, the metric and the cost output
  named by the caller. The fidelity may be epochs (cumulative cost: resuming a run pays only the
  new steps) or e.g. a training-set fraction (``cost_mode="per-fidelity"``: each fidelity level is
  a retraining whose cost is the cost output at that level).

Step costs
----------
``step_costs[s-1]`` is what it costs to go from fidelity ``s-1`` to ``s`` in a run that continues
(a resumed or unpruned run); ``scratch_cost(b)`` is what it costs to reach ``b`` from nothing. For
cumulative costs the two agree (``cumsum``); for per-fidelity costs, going up one level retrains,
so ``step_costs[s-1] = cost(level s)`` and ``scratch_cost(b) = cost(level b)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna_quicktune import contract
from optuna_quicktune.benchmark.configspace import configspace_to_space
from optuna_quicktune.metadataset import MetaDataset, Run, Task
from optuna_quicktune.space import SearchSpace

__all__ = [
    "Scenario",
    "zero_shot_from_storage",
    "Curves",
    "TableScenario",
    "finite_number",
    "configspace_to_space",
]  # configspace_to_space lives in optuna_quicktune.benchmark.configspace; kept here for callers


@dataclass
class Curves:
    """Replayed curves of ``n`` configurations on one task."""

    values: np.ndarray  # (n, L) score at fidelity 1..L
    step_costs: np.ndarray  # (n, L) > 0, cost of reaching s from s-1 in a continuing run
    scratch_costs: np.ndarray  # (n, L) > 0, cost of reaching s from nothing

    def __len__(self) -> int:
        return int(self.values.shape[0])


class Scenario:
    """Tasks of one search space whose curves can be replayed. Subclasses fill these attributes."""

    name: str
    space: SearchSpace
    tasks: list[str]
    fidelity_max: int
    fidelity_unit: str
    metric: str
    direction: str  # "maximize" | "minimize"
    cost_mode: str  # "cumulative" | "per-fidelity"
    default_config: dict[str, Any] | None
    model_name: str = "model"

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "maximize" else -1.0

    @property
    def observe_prefix_on_scratch(self) -> bool:
        """Whether training to ``b`` from nothing also shows the scores at 1..b-1 (epochs do)."""
        return self.cost_mode == "cumulative"

    def metafeatures(self, task: str) -> dict[str, float]:
        return {}

    def zero_shot_score(self, task: str) -> float | None:
        """The base model's score without finetuning (LLM tables), if the scenario knows it."""
        return None

    @property
    def has_zero_shot(self) -> bool:
        return all(self.zero_shot_score(t) is not None for t in self.tasks)

    def curves(self, task: str, configs: Sequence[Mapping[str, Any]]) -> Curves:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def table(self, n_configs: int, seed: int, tasks: Sequence[str] | None = None) -> MetaDataset:
        """A meta-dataset: every task of ``tasks`` with full curves of the same configurations."""
        tasks = list(self.tasks if tasks is None else tasks)
        configs = self.space.sample(n_configs, seed)
        md_tasks, runs = [], []
        for i, t in enumerate(tasks):
            md_tasks.append(self._task_record(t))
            c = self.curves(t, configs)
            cum = np.cumsum(c.step_costs, axis=1)
            for j, cfg in enumerate(configs):
                runs.append(Run(task=i, config=dict(cfg), curve=c.values[j].copy(), cost=cum[j].copy()))
        return MetaDataset(self.space, md_tasks, runs)

    def _task_record(self, task: str) -> Task:
        return Task(
            name=str(task), dataset=str(task), model=self.model_name, metric=self.metric,
            direction=self.direction, fidelity_unit=self.fidelity_unit, fidelity_max=self.fidelity_max,
            metafeatures=self.metafeatures(task),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "tasks": list(self.tasks), "fidelity_max": self.fidelity_max,
            "fidelity_unit": self.fidelity_unit, "metric": self.metric, "direction": self.direction,
            "cost_mode": self.cost_mode, "space": self.space.names, "fingerprint": self.fingerprint(),
            "default_config": self.default_config, "constants": dict(getattr(self, "constants", {})),
            "zero_shot": {t: self.zero_shot_score(t) for t in self.tasks} if self.has_zero_shot else None,
        }


# ====================================================================== table replay
class TableScenario(Scenario):
    """Replays the runs of a MetaDataset; proposals are snapped to the task's nearest configuration.

    Only runs with a full curve (``fidelity_max`` steps, finite costs) are replayed. Costs are the
    stored cumulative seconds (made non-decreasing); a step that cost nothing is charged a tiny
    positive amount so that every step is visible on the clock.
    """

    def __init__(
        self,
        metadataset: MetaDataset,
        *,
        name: str = "table",
        default_config: Mapping[str, Any] | None = None,
        zero_shot: Mapping[str, float] | None = None,
    ) -> None:
        md = metadataset
        self.name = name
        self.metadataset = md
        self.space = md.space
        self.fidelity_max = md.max_fidelity
        self.fidelity_unit = md.tasks[0].fidelity_unit
        self.metric = md.tasks[0].metric
        self.direction = md.tasks[0].direction
        self.model_name = md.tasks[0].model or "model"
        self.cost_mode = "cumulative"
        if any(t.direction != self.direction for t in md.tasks):
            raise ValueError("A TableScenario needs tasks of one direction; split the meta-dataset.")
        self._tables: dict[str, tuple[np.ndarray, Curves, list[dict[str, Any]]]] = {}
        for ti, t in enumerate(md.tasks):
            runs = [r for r in md.runs_of(ti) if r.length >= self.fidelity_max]
            if not runs:
                continue
            values = np.stack([r.curve[: self.fidelity_max] for r in runs])
            cum = np.stack([np.asarray(r.cost[: self.fidelity_max], dtype=np.float64) for r in runs])
            cum = _fill_costs(cum)
            step = np.diff(np.concatenate([np.zeros((len(runs), 1)), cum], axis=1), axis=1)
            step = np.maximum(step, 1e-6)
            curves = Curves(values, step, np.cumsum(step, axis=1))
            X = md.space.encode_many([r.config for r in runs])
            self._tables[t.name] = (X, curves, [dict(r.config) for r in runs])
        self.tasks = [t.name for t in md.tasks if t.name in self._tables]
        if not self.tasks:
            raise ValueError(f"No task of the meta-dataset has a run with {self.fidelity_max} steps to replay.")
        self._mf = {t.name: dict(t.metafeatures) for t in md.tasks}
        self.default_config = dict(default_config) if default_config is not None else None
        self._zero_shot = {str(k): float(v) for k, v in (zero_shot or {}).items()}

    def metafeatures(self, task: str) -> dict[str, float]:
        return dict(self._mf[task])

    def zero_shot_score(self, task: str) -> float | None:
        return self._zero_shot.get(task)

    def task_configs(self, task: str) -> list[dict[str, Any]]:
        return self._tables[task][2]

    def nearest(self, task: str, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        X, _, _ = self._tables[task]
        Q = self.space.encode_many(list(configs))
        d = ((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        return np.argmin(d, axis=1)

    def curves(self, task: str, configs: Sequence[Mapping[str, Any]]) -> Curves:
        _, c, _ = self._tables[task]
        idx = self.nearest(task, configs) if len(configs) else np.zeros(0, dtype=np.int64)
        return Curves(c.values[idx], c.step_costs[idx], c.scratch_costs[idx])

    def table(self, n_configs: int, seed: int, tasks: Sequence[str] | None = None) -> MetaDataset:
        """The stored table itself (``n_configs`` runs per task at most, seeded subsample)."""
        tasks = list(self.tasks if tasks is None else tasks)
        rng = np.random.default_rng(seed)
        md_tasks, runs = [], []
        for i, t in enumerate(tasks):
            md_tasks.append(self._task_record(t))
            _, c, cfgs = self._tables[t]
            pick = np.arange(len(cfgs)) if len(cfgs) <= n_configs else np.sort(rng.choice(len(cfgs), n_configs, replace=False))
            cum = np.cumsum(c.step_costs, axis=1)
            for j in pick:
                runs.append(Run(task=i, config=dict(cfgs[j]), curve=c.values[j].copy(), cost=cum[j].copy()))
        return MetaDataset(self.space, md_tasks, runs)

    def reference(self, task: str) -> tuple[list[dict[str, Any]], Curves]:
        """Every replayable run of the task (the normalisation set of a table scenario)."""
        _, c, cfgs = self._tables[task]
        return cfgs, c

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.space.fingerprint.encode())
        for t in self.tasks:
            _, c, _ = self._tables[t]
            h.update(t.encode())
            h.update(np.ascontiguousarray(c.values).tobytes())
            h.update(np.ascontiguousarray(c.step_costs).tobytes())
        return h.hexdigest()[:16]


def _fill_costs(cum: np.ndarray) -> np.ndarray:
    """Cumulative costs with NaN replaced by the task's median step cost, made non-decreasing."""
    cum = np.array(cum, dtype=np.float64)
    step = np.diff(np.concatenate([np.zeros((cum.shape[0], 1)), cum], axis=1), axis=1)
    finite = step[np.isfinite(step) & (step > 0)]
    fill = float(np.median(finite)) if finite.size else 1.0
    step = np.where(np.isfinite(step), step, fill)
    return np.maximum.accumulate(np.cumsum(step, axis=1), axis=1)


def finite_number(v: Any) -> bool:
    """Whether ``v`` is a number (or a string of one) that is finite."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def zero_shot_from_storage(storage: Any, study_names: Sequence[str] | None = None, split: str = "validation") -> dict[str, float]:
    """Base-model scores stored by ``trl_objectives.collect`` (study attr ``quicktune.zero_shot``).

    Returns ``{study name: score of the study's metric}`` for the studies that have one.
    """
    import optuna

    if isinstance(storage, str):
        storage = optuna.storages.get_storage(storage)
    names = study_names or [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    out: dict[str, float] = {}
    for n in names:
        attrs = optuna.load_study(study_name=n, storage=storage).user_attrs
        metric = (attrs.get(contract.TASK) or {}).get("metric")
        value = ((attrs.get(contract.ZERO_SHOT) or {}).get(split) or {}).get(metric)
        if metric is not None and finite_number(value):
            out[n] = float(value)
    return out
