"""The simulated clock and the Optuna objective that replays a scenario's curves on it.

A :class:`Session` is one optimiser run on one task: it charges the replayed cost of every fidelity
step the method trains, records every score the method observes with the simulated time at which it
became known, and refuses new steps once the budget is spent. Whatever a method computes itself
(sampling, surrogates, pruning decisions) is wall-clock *overhead*, measured separately.

Trajectory convention: the incumbent at simulated time ``t`` is the best score observed at any
fidelity by ``t``; a step that starts before the budget ends but finishes after it is charged but
its score falls outside the budget window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from optuna_quicktune import contract
from optuna_quicktune.benchmark.scenarios import Curves, Scenario

__all__ = ["BudgetExhausted", "Session", "ReplayObjective", "Trajectory"]


class BudgetExhausted(Exception):
    """Raised when a method asks for a step after its simulated budget is spent."""


@dataclass
class Trajectory:
    """What one run of a method did, in simulated seconds."""

    times: list[float] = field(default_factory=list)  # when each observation became known
    values: list[float] = field(default_factory=list)  # the observed score
    trial_ends: list[float] = field(default_factory=list)  # simulated time at the end of each trial
    charged: float = 0.0  # simulated seconds charged
    replayed_cost: float = 0.0  # sum of the step costs of every step trained (lower bound of charged)
    steps: int = 0  # fidelity steps trained
    full_runs: int = 0  # runs that reached the largest fidelity
    overhead: float = 0.0  # wall seconds the method spent outside the replay
    wall: float = 0.0
    ledger: list[dict[str, Any]] | None = None  # with ``audit``: every charge (config, step, kind, cost)

    def to_json(self) -> dict[str, Any]:
        return {k: (v if not isinstance(v, list) else [float(x) for x in v]) for k, v in self.__dict__.items()}


class Session:
    """One method on one task: replayed curves, a simulated clock, a budget and a record."""

    def __init__(self, scenario: Scenario, task: str, budget: float, *, max_trials: int = 5000, audit: bool = False) -> None:
        self.scenario = scenario
        self.task = str(task)
        self.budget = float(budget)
        self.max_trials = max_trials
        self.L = scenario.fidelity_max
        self.sign = scenario.sign
        self.clock = 0.0
        self.traj = Trajectory(ledger=[] if audit else None)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._replay_wall = 0.0
        self._t0 = time.perf_counter()
        self.n_trials = 0

    # ------------------------------------------------------------------ replay
    @property
    def exhausted(self) -> bool:
        return self.clock >= self.budget or self.n_trials >= self.max_trials

    def curve(self, config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, step_costs, scratch_costs)`` of a configuration (cached)."""
        key = self.scenario.space.config_id(config)
        if key not in self._cache:
            t0 = time.perf_counter()
            c: Curves = self.scenario.curves(self.task, [config])
            self._cache[key] = (c.values[0], c.step_costs[0], c.scratch_costs[0])
            self._replay_wall += time.perf_counter() - t0
        return self._cache[key]

    def prefetch(self, configs: list[Mapping[str, Any]]) -> None:
        """Query many configurations at once (faster than one by one); not charged."""
        todo = [c for c in configs if self.scenario.space.config_id(c) not in self._cache]
        if not todo:
            return
        t0 = time.perf_counter()
        c = self.scenario.curves(self.task, todo)
        for i, cfg in enumerate(todo):
            self._cache[self.scenario.space.config_id(cfg)] = (c.values[i], c.step_costs[i], c.scratch_costs[i])
        self._replay_wall += time.perf_counter() - t0

    def step(self, config: Mapping[str, Any], s: int) -> tuple[float, float]:
        """Continue a run of ``config`` from fidelity ``s-1`` to ``s``; returns (score, step cost)."""
        if self.exhausted:
            raise BudgetExhausted
        if not 1 <= s <= self.L:
            raise ValueError(f"Fidelity step {s} outside 1..{self.L}.")
        values, step_costs, _ = self.curve(config)
        cost = float(step_costs[s - 1])
        self._charge(cost)
        self._audit(config, s, "step", cost)
        v = float(values[s - 1])
        self._observe(v)
        if s == self.L:
            self.traj.full_runs += 1
        return v, cost

    def scratch(self, config: Mapping[str, Any], b: int) -> tuple[float, float]:
        """Train ``config`` from nothing to fidelity ``b`` (a DEHB job); returns (score at b, cost)."""
        if self.exhausted:
            raise BudgetExhausted
        values, _, scratch = self.curve(config)
        cost = float(scratch[b - 1])
        self._charge(cost, steps=b if self.scenario.observe_prefix_on_scratch else 1)
        self._audit(config, b, "scratch", cost)
        if self.scenario.observe_prefix_on_scratch:
            self._observe(float(np.max(self.sign * values[:b]) * self.sign))
        else:
            self._observe(float(values[b - 1]))
        if b == self.L:
            self.traj.full_runs += 1
        return float(values[b - 1]), cost

    def observe_free(self, value: float) -> None:
        """Record a score that costs no training (the base model's zero-shot score)."""
        self._observe(float(value))

    def _charge(self, cost: float, steps: int = 1) -> None:
        self.clock += cost
        self.traj.charged += cost
        self.traj.replayed_cost += cost
        self.traj.steps += steps

    def _audit(self, config: Mapping[str, Any], s: int, kind: str, cost: float) -> None:
        if self.traj.ledger is not None:
            self.traj.ledger.append({"config": dict(config), "step": int(s), "kind": kind, "cost": cost})

    def _observe(self, value: float) -> None:
        self.traj.times.append(self.clock)
        self.traj.values.append(value)

    def end_trial(self) -> None:
        self.n_trials += 1
        self.traj.trial_ends.append(self.clock)

    def finish(self) -> Trajectory:
        self.traj.wall = time.perf_counter() - self._t0
        self.traj.overhead = max(self.traj.wall - self._replay_wall, 0.0)
        return self.traj


class ReplayObjective:
    """An Optuna objective following the storage contract, replaying ``session``'s task.

    Like :class:`optuna_quicktune.simulate.SimulatedObjective`: it describes the task, reports the
    curve step by step, records cumulative cost, consults the pruner, saves a (simulated)
    checkpoint when ``pausable`` and resumes a paused run from its parent's step.
    """

    def __init__(self, session: Session, *, pausable: bool = False, describe: bool = True) -> None:
        self.session = session
        self.pausable = pausable
        self.describe = describe
        self._described = False

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.session
        sc = s.scenario
        if self.describe and not self._described:
            contract.describe_task(
                trial.study, dataset=s.task, model=sc.model_name, metric=sc.metric, fidelity_max=s.L,
                fidelity_unit=sc.fidelity_unit, metafeatures=sc.metafeatures(s.task) or None, space=sc.space,
            )
            self._described = True
        if s.exhausted:
            trial.study.stop()
            raise optuna.TrialPruned("budget exhausted")
        config = sc.space.suggest(trial)
        start = 0
        if trial.user_attrs.get(contract.RESUME_OF) is not None:
            ckpt = trial.user_attrs.get(contract.CHECKPOINT)
            if ckpt:
                start = int(str(ckpt).rsplit("/", 1)[-1])
        cumulative: list[float] = []
        spent = 0.0
        value = float("nan")
        for step in range(start + 1, s.L + 1):
            try:
                value, cost = s.step(config, step)
            except BudgetExhausted:
                trial.study.stop()
                raise optuna.TrialPruned("budget exhausted") from None
            spent += cost
            cumulative.append(spent)
            trial.report(value, step)
            contract.record_cost(trial, cumulative)
            if step < s.L and trial.should_prune():
                if self.pausable:
                    trial.set_user_attr(contract.CHECKPOINT, f"replay://{s.task}/{trial.number}/{step}")
                raise optuna.TrialPruned()
        return value
