"""An Optuna storage read as a meta-dataset of finetuning runs, and written back.

Notation
--------
``T`` tasks (studies), ``N`` runs (stitched trial chains), ``F`` the largest fidelity of any task,
``d`` the encoded configuration width and ``m`` the number of meta-features. :meth:`MetaDataset.arrays`
gives ``X (N, d)``, ``Y (N, F)`` (scores, NaN after a run stopped), ``C (N, F)`` (cost of each step,
NaN where unknown), ``task (N,)`` and ``M (T, m)``.

Reading one study (the contract checks and the stitching of paused-and-resumed trials into one
curve) lives in :mod:`~optuna_quicktune.study_reader`; this module holds the collection of tasks
and runs, its arrays, and its import and export (storage, CSV, Parquet).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from optuna_quicktune import contract
from optuna_quicktune.errors import EmptyMetaDatasetError, MetaFeatureError, MixedSpaceError
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.storage import open_storage
from optuna_quicktune.study_reader import (
    MetaFeaturePolicy,
    Run,
    Task,
    apply_metafeature_policy,
    describe_metafeature_mismatch,
    read_study,
)

__all__ = ["Task", "Run", "MetaDataset"]

_logger = logging.getLogger(__name__)


class MetaDataset:
    """Configurations, learning curves, step costs and meta-features of many tasks in one space."""

    def __init__(self, space: SearchSpace, tasks: Sequence[Task], runs: Sequence[Run]) -> None:
        self.space = space
        self.tasks = list(tasks)
        self.runs = list(runs)
        if not self.tasks:
            raise EmptyMetaDatasetError("A MetaDataset needs at least one task.")
        names = [sorted(t.metafeatures) for t in self.tasks]
        if any(n != names[0] for n in names):
            raise MetaFeatureError(
                "All tasks of a MetaDataset must have the same meta-feature names; "
                + describe_metafeature_mismatch(self.tasks)
            )
        self.metafeature_names: list[str] = names[0]
        for r in self.runs:
            if not 0 <= r.task < len(self.tasks):
                raise ValueError(f"Run refers to task {r.task}, but there are {len(self.tasks)} tasks.")

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        return (
            f"MetaDataset({len(self.tasks)} tasks, {len(self.runs)} runs, space={self.space.name!r}, "
            f"metafeatures={self.metafeature_names})"
        )

    @property
    def max_fidelity(self) -> int:
        return max(t.fidelity_max for t in self.tasks)

    def task_index(self, name: str) -> int:
        for i, t in enumerate(self.tasks):
            if t.name == name:
                return i
        raise KeyError(f"No task named {name!r}; tasks are {[t.name for t in self.tasks]}.")

    def select_tasks(self, indices: Iterable[int]) -> "MetaDataset":
        """A MetaDataset with only the given tasks (re-indexed), e.g. for leave-one-task-out."""
        keep = list(indices)
        remap = {old: new for new, old in enumerate(keep)}
        runs = [replace(r, task=remap[r.task]) for r in self.runs if r.task in remap]
        return MetaDataset(self.space, [self.tasks[i] for i in keep], runs)

    def runs_of(self, task: int) -> list[Run]:
        return [r for r in self.runs if r.task == task]

    def arrays(self) -> dict[str, np.ndarray]:
        """Dense arrays for training (see the module docstring for shapes)."""
        n, f = len(self.runs), self.max_fidelity
        X = self.space.encode_many([r.config for r in self.runs]) if n else np.zeros((0, self.space.dim))
        Y = np.full((n, f), np.nan)
        C = np.full((n, f), np.nan)
        for i, r in enumerate(self.runs):
            Y[i, : r.length] = r.curve
            cum = np.asarray(r.cost, dtype=np.float64)
            step = np.diff(np.concatenate([[0.0], cum]))
            C[i, : r.length] = np.where(step > 0, step, np.nan)
        M = np.array(
            [[t.metafeatures[k] for k in self.metafeature_names] for t in self.tasks], dtype=np.float64
        ).reshape(len(self.tasks), len(self.metafeature_names))
        return {
            "X": X,
            "Y": Y,
            "C": C,
            "task": np.array([r.task for r in self.runs], dtype=np.int64),
            "M": M,
            "sign": np.array([t.sign for t in self.tasks]),
            "fidelity_max": np.array([t.fidelity_max for t in self.tasks], dtype=np.int64),
        }

    # ------------------------------------------------------------------ storage
    @classmethod
    def from_storage(
        cls,
        storage: str | optuna.storages.BaseStorage,
        study_names: Sequence[str] | None = None,
        *,
        space: SearchSpace | None = None,
        metafeatures: MetaFeaturePolicy = "strict",
    ) -> "MetaDataset":
        """Read every study that follows the storage contract.

        Studies and trials that break the contract are skipped with a logged reason (``WARNING``
        for studies, ``INFO`` for trials). ``metafeatures`` says what to do when studies disagree on
        meta-feature names: ``"strict"`` raises, ``"intersection"`` keeps the common names,
        ``"none"`` drops them all (dataset-agnostic transfer).
        """
        storage = open_storage(storage)  # a mistyped path is an error, not a new empty database
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        available = [s.study_name for s in summaries]
        if study_names is None:
            names = available
        else:
            unknown = [n for n in study_names if n not in available]
            if unknown:
                raise EmptyMetaDatasetError(
                    f"Studies {unknown} are not in the storage; it holds {available or 'no study'}."
                )
            names = list(study_names)

        per_study: list[tuple[Task, SearchSpace, list[Run]]] = []
        for name in names:
            study = optuna.load_study(study_name=name, storage=storage)
            reason, parsed = read_study(study, space)
            if reason is not None:
                _logger.warning("Skipping study %r: %s", name, reason)
                continue
            assert parsed is not None
            per_study.append(parsed)

        if not per_study:
            raise EmptyMetaDatasetError(
                f"No study in the storage follows the quicktune storage contract (looked at "
                f"{len(names)} studies). Each task study needs the user attributes "
                f"{contract.TASK!r} and {contract.FIDELITY!r} (write them with "
                "optuna_quicktune.contract.describe_task) and COMPLETE or PRUNED trials with "
                "reported intermediate values."
            )

        fingerprints: dict[str, list[str]] = {}
        for task, sp, _ in per_study:
            fingerprints.setdefault(sp.fingerprint, []).append(task.name)
        if len(fingerprints) > 1:
            groups = "; ".join(f"{fp}: {studies}" for fp, studies in fingerprints.items())
            raise MixedSpaceError(
                f"The studies use {len(fingerprints)} different search spaces ({groups}). Select one "
                "group with study_names=[...], or pass space=... to keep only the studies of that space."
            )
        the_space = space or per_study[0][1]

        tasks = [t for t, _, _ in per_study]
        tasks = apply_metafeature_policy(tasks, metafeatures)
        runs: list[Run] = []
        for i, (_, _, task_runs) in enumerate(per_study):
            runs.extend(replace(r, task=i) for r in task_runs)
        return cls(the_space, tasks, runs)

    def to_storage(
        self, storage: str | optuna.storages.BaseStorage, *, study_prefix: str = ""
    ) -> list[str]:
        """Write each task as an ordinary Optuna study following the contract; returns the names.

        An existing study of the same name is never touched: the call fails before writing anything.
        """
        storage = open_storage(storage, create=True)
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        names = [study_prefix + t.name for t in self.tasks]
        clash = sorted(set(names) & existing)
        if clash:
            raise ValueError(
                f"Studies {clash} already exist in the storage; nothing was written. Pass another "
                "study_prefix=, or delete those studies first with optuna.delete_study."
            )
        for ti, (task, name) in enumerate(zip(self.tasks, names)):
            study = optuna.create_study(storage=storage, study_name=name, direction=task.direction)
            contract.describe_task(
                study,
                dataset=task.dataset,
                model=task.model,
                metric=task.metric,
                fidelity_max=task.fidelity_max,
                fidelity_unit=task.fidelity_unit,
                metafeatures=dict(task.metafeatures) if self.metafeature_names else None,
                space=self.space,
            )
            trials = []
            for r in self.runs_of(ti):
                finished = r.length >= task.fidelity_max
                user_attrs: dict[str, Any] = {contract.CONFIG_ID: self.space.config_id(r.config)}
                if np.all(np.isfinite(r.cost)):
                    user_attrs[contract.COST] = [float(c) for c in r.cost]
                trials.append(
                    optuna.trial.create_trial(
                        params=self.space.project(r.config),  # active parameters only
                        distributions=self.space.active_distributions(r.config),
                        value=float(r.curve[-1]) if finished else None,
                        intermediate_values={s + 1: float(v) for s, v in enumerate(r.curve)},
                        user_attrs=user_attrs,
                        state=TrialState.COMPLETE if finished else TrialState.PRUNED,
                    )
                )
            study.add_trials(trials)
        return names

    # ------------------------------------------------------------------ tables
    def to_rows(self) -> list[dict[str, Any]]:
        """Long format: one row per (run, fidelity step), with task and configuration columns."""
        rows = []
        for ri, r in enumerate(self.runs):
            t = self.tasks[r.task]
            base: dict[str, Any] = {
                "task": t.name,
                "dataset": t.dataset,
                "model": t.model,
                "metric": t.metric,
                "direction": t.direction,
                "fidelity_unit": t.fidelity_unit,
                "fidelity_max": t.fidelity_max,
                "run": ri,
            }
            base.update({f"mf.{k}": t.metafeatures[k] for k in self.metafeature_names})
            base.update({f"param.{k}": r.config.get(k) for k in self.space.names})  # None: inactive
            for s in range(r.length):
                row = dict(base)
                row.update(step=s + 1, value=float(r.curve[s]), cost=float(r.cost[s]))
                rows.append(row)
        return rows

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], space: SearchSpace) -> "MetaDataset":
        """Inverse of :meth:`to_rows`; missing task columns get defaults (maximize, epoch)."""
        required = {"task", "run", "step", "value"}
        if not rows:
            raise EmptyMetaDatasetError("The table has no rows.")
        missing = required - set(rows[0])
        if missing:
            raise ValueError(f"The table lacks the columns {sorted(missing)}; see MetaDataset.to_rows().")
        lacking = [k for k in space.names if f"param.{k}" not in rows[0]]
        if lacking:
            raise MixedSpaceError(
                f"The table has no column for parameters {lacking} of space {space.name!r}: "
                "pass the space the table was written with."
            )
        tasks: dict[str, dict[str, Any]] = {}
        runs: dict[tuple[str, Any], dict[str, Any]] = {}
        for row in rows:
            tname = str(row["task"])
            if tname not in tasks:
                tasks[tname] = {
                    "dataset": str(row.get("dataset", tname)),
                    "model": str(row.get("model", "")),
                    "metric": str(row.get("metric", "value")),
                    "direction": str(row.get("direction", "maximize")),
                    "fidelity_unit": str(row.get("fidelity_unit", "epoch")),
                    "fidelity_max": row.get("fidelity_max"),
                    "mf": {k[3:]: float(v) for k, v in row.items() if k.startswith("mf.") and _present(v)},
                    "steps": 0,
                }
            key = (tname, row["run"])
            if key not in runs:
                cells = {k: row[f"param.{k}"] for k in space.names if _present(row[f"param.{k}"])}
                config = {k: _from_cell(space.distributions[k], cells[k]) for k in space.active(cells) if k in cells}
                runs[key] = {"task": tname, "config": config, "points": {}}
            step = int(row["step"])
            cost = row.get("cost")
            runs[key]["points"][step] = (
                float(row["value"]),
                float(cost) if _present(cost) else math.nan,
            )
            tasks[tname]["steps"] = max(tasks[tname]["steps"], step)
        task_list = []
        for tname, info in tasks.items():
            fmax = info["fidelity_max"]
            task_list.append(
                Task(
                    name=tname,
                    dataset=info["dataset"],
                    model=info["model"],
                    metric=info["metric"],
                    direction=info["direction"],
                    fidelity_unit=info["fidelity_unit"],
                    fidelity_max=int(float(fmax)) if _present(fmax) else int(info["steps"]),
                    metafeatures=info["mf"],
                )
            )
        order = {t.name: i for i, t in enumerate(task_list)}
        run_list = []
        for info in runs.values():
            steps = sorted(info["points"])
            if steps != list(range(1, len(steps) + 1)):
                _logger.info("Skipping a run of task %r: steps %s are not 1..L.", info["task"], steps)
                continue
            run_list.append(
                Run(
                    task=order[info["task"]],
                    config=info["config"],
                    curve=np.array([info["points"][s][0] for s in steps]),
                    cost=np.array([info["points"][s][1] for s in steps]),
                )
            )
        return cls(space, task_list, run_list)

    def to_csv(self, path: str | Path) -> Path:
        """Write the long table to ``path`` and the search space to ``<path>.space.json``."""
        path = Path(path)
        rows = self.to_rows()
        columns = list(rows[0]) if rows else ["task", "run", "step", "value", "cost"]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        _space_sidecar(path).write_text(json.dumps(self.space.to_json(), indent=1))
        return path

    @classmethod
    def from_csv(cls, path: str | Path, space: SearchSpace | None = None) -> "MetaDataset":
        path = Path(path)
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return cls.from_rows(rows, space or _read_space_sidecar(path))

    def to_parquet(self, path: str | Path) -> Path:
        pd = _pandas()
        path = Path(path)
        pd.DataFrame(self.to_rows()).to_parquet(path, index=False)
        _space_sidecar(path).write_text(json.dumps(self.space.to_json(), indent=1))
        return path

    @classmethod
    def from_parquet(cls, path: str | Path, space: SearchSpace | None = None) -> "MetaDataset":
        pd = _pandas()
        path = Path(path)
        rows = pd.read_parquet(path).to_dict(orient="records")
        return cls.from_rows(rows, space or _read_space_sidecar(path))


# ---------------------------------------------------------------------- table helpers
def _space_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".space.json")


def _read_space_sidecar(path: Path) -> SearchSpace:
    sidecar = _space_sidecar(path)
    if not sidecar.exists():
        raise FileNotFoundError(
            f"{sidecar} not found: pass space=SearchSpace(...) describing the table's parameters."
        )
    return SearchSpace.from_json(json.loads(sidecar.read_text()))


def _present(v: Any) -> bool:
    if v is None or v == "":
        return False
    try:
        return not math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def _from_cell(dist: BaseDistribution, cell: Any) -> Any:
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if choice == cell or str(choice) == str(cell):
                return choice
        try:
            as_float = float(cell)
        except (TypeError, ValueError):
            as_float = None
        for choice in dist.choices:
            if isinstance(choice, (int, float)) and as_float is not None and float(choice) == as_float:
                return choice
        raise ValueError(f"Cell {cell!r} is not one of {list(dist.choices)}.")
    value = float(cell)
    return int(round(value)) if isinstance(dist, optuna.distributions.IntDistribution) else value


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on extras
        raise ImportError(
            "Parquet import/export needs pandas and pyarrow: pip install 'optuna-quicktune[parquet]'."
        ) from e
    return pd
