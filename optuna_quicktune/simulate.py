"""A simulated family of finetuning tasks with known structure, for tests, examples and benchmarks.

Each task has a hidden optimum learning rate ``lr*`` and a size. Its meta-features reveal both
(with noise) next to an irrelevant one, so a surrogate can only transfer well if it uses them. The
final score of a configuration falls off quadratically in ``log10(lr / lr*)`` and mildly with the
distance of the LoRA rank from a task-dependent best rank; curves approach the final score
exponentially at a speed that grows with the learning rate. Step costs grow with rank, target
modules and task size. Everything is a deterministic function of (task, configuration, step).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from optuna_quicktune import contract
from optuna_quicktune.metadataset import MetaDataset, Run, Task
from optuna_quicktune.space import SearchSpace, lora_space

__all__ = ["SimulatedTask", "SimulatedFamily", "SimulatedObjective"]


@dataclass(frozen=True)
class SimulatedTask:
    name: str
    log_lr_opt: float  # log10 of the best learning rate
    log_rank_opt: float  # log2 of the best LoRA rank
    size: float  # relative dataset size (scales cost)
    ceiling: float  # best reachable score
    metafeatures: Mapping[str, float]
    fidelity_max: int

    def _noise(self, config: Mapping[str, Any]) -> float:
        key = json.dumps({k: str(v) for k, v in sorted(config.items())}) + self.name
        h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        return (h / 0xFFFFFFFF - 0.5) * 0.02

    def lr_gap(self, config: Mapping[str, Any]) -> float:
        """Distance (decades) of the effective learning rate (lr x sqrt(batch / 8)) from the optimum."""
        batch = float(config.get("per_device_train_batch_size", 8)) * float(config.get("gradient_accumulation_steps", 1))
        # Optimizers of the conditional space: SGD needs a ~10x, Adafactor a ~2x larger rate than AdamW.
        shift = {"sgd": -1.0, "adafactor": -0.3}.get(config.get("optim", "adamw_torch"), 0.0)
        return math.log10(float(config["learning_rate"])) + 0.5 * math.log10(batch / 8.0) - self.log_lr_opt + shift

    def final_score(self, config: Mapping[str, Any]) -> float:
        lr_gap = self.lr_gap(config)
        rank_gap = math.log2(float(config["lora_r"])) - self.log_rank_opt
        score = self.ceiling - 0.3 * lr_gap**2 - 0.01 * rank_gap**2
        score += {"attention": 0.0, "attention_mlp": 0.015, "all_linear": 0.01}.get(config.get("target_modules"), 0.0)
        score -= 0.1 * float(config.get("lora_dropout", 0.0)) ** 2
        if "adam_beta1" in config:  # AdamW's own settings (conditional space): best near 0.9 / 0.99
            score -= 0.5 * abs(float(config["adam_beta1"]) - 0.9) + 2.0 * abs(float(config.get("adam_beta2", 0.99)) - 0.99)
        return float(score + self._noise(config))

    def curve(self, config: Mapping[str, Any], steps: int | None = None) -> np.ndarray:
        steps = steps or self.fidelity_max
        final = self.final_score(config)
        lr_gap = self.lr_gap(config)
        rate = 0.25 * math.exp(0.9 * math.log10(float(config["learning_rate"])) + 3.6) / (1 + lr_gap**2)
        f = np.arange(1, steps + 1, dtype=np.float64)
        start = 0.1
        return final - (final - start) * np.exp(-rate * f)

    def step_costs(self, config: Mapping[str, Any], steps: int | None = None) -> np.ndarray:
        steps = steps or self.fidelity_max
        rank = float(config["lora_r"])
        mult = {"attention": 1.0, "attention_mlp": 1.6, "all_linear": 1.9}.get(config.get("target_modules"), 1.0)
        batch = float(config.get("per_device_train_batch_size", 8))
        per_step = 10.0 * self.size * (1 + rank / 64) * mult * (1 + 2.0 / batch)
        c = np.full(steps, per_step)
        c[0] *= 1.3  # start-up
        return c


class SimulatedFamily:
    """``n_tasks`` related tasks on the default LoRA space (or ``space``, e.g. ``lora_conditional_space()``)."""

    def __init__(self, n_tasks: int = 8, *, fidelity_max: int = 10, seed: int = 0, space: SearchSpace | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.space: SearchSpace = space if space is not None else lora_space()
        self.tasks: list[SimulatedTask] = []
        for i in range(n_tasks):
            lr = rng.uniform(-5.0, -3.0)
            rank = rng.uniform(2.5, 6.0)
            size = float(np.exp(rng.uniform(-1.0, 1.5)))
            mf = {
                "lr_hint": float(lr + rng.normal(0, 0.05)),
                "rank_hint": float(rank + rng.normal(0, 0.2)),
                "n_examples": float(round(1000 * size)),
                "irrelevant": float(rng.normal()),
            }
            self.tasks.append(
                SimulatedTask(
                    name=f"sim-{seed}-{i}",
                    log_lr_opt=float(lr),
                    log_rank_opt=float(rank),
                    size=size,
                    ceiling=float(rng.uniform(0.7, 0.9)),
                    metafeatures=mf,
                    fidelity_max=fidelity_max,
                )
            )

    def metadataset(self, n_configs: int = 32, *, seed: int = 0, tasks: list[int] | None = None) -> MetaDataset:
        """The same ``n_configs`` random configurations run to the end on every task (a full table)."""
        configs = self.space.sample(n_configs, seed)
        chosen = list(range(len(self.tasks))) if tasks is None else tasks
        md_tasks, runs = [], []
        for ti, k in enumerate(chosen):
            t = self.tasks[k]
            md_tasks.append(
                Task(t.name, dataset=t.name, model="simulated", metric="score", direction="maximize",
                     fidelity_unit="epoch", fidelity_max=t.fidelity_max, metafeatures=dict(t.metafeatures))
            )
            for c in configs:
                runs.append(Run(task=ti, config=c, curve=t.curve(c), cost=np.cumsum(t.step_costs(c))))
        return MetaDataset(self.space, md_tasks, runs)


class SimulatedObjective:
    """An Optuna objective that "trains" a simulated task one fidelity step at a time.

    It follows the storage contract like a real objective: it describes the task, reports the curve,
    records cumulative cost, saves a (simulated) checkpoint and raises ``TrialPruned`` when the
    pruner says so, and resumes a paused run from its checkpoint. ``clock`` accumulates the
    simulated seconds spent, so optimisers can be compared at a fixed simulated budget;
    ``sleep`` > 0 makes each step take real time (for multi-worker tests).
    """

    def __init__(self, task: SimulatedTask, space: SearchSpace | None = None, *, sleep: float = 0.0) -> None:
        self.task = task
        self.space = space or lora_space()
        self.sleep = sleep
        self.clock = 0.0
        self.steps_run = 0

    def __call__(self, trial: optuna.Trial) -> float:
        t = self.task
        contract.describe_task(
            trial.study, dataset=t.name, model="simulated", metric="score",
            fidelity_max=t.fidelity_max, metafeatures=t.metafeatures, space=self.space,
        )
        config = self.space.suggest(trial)
        start = 0
        ckpt = trial.user_attrs.get(contract.CHECKPOINT) if trial.user_attrs.get(contract.RESUME_OF) is not None else None
        if ckpt is not None:
            start = int(str(ckpt).rsplit("/", 1)[-1])
        curve = t.curve(config)
        costs = t.step_costs(config)
        cumulative: list[float] = []
        spent = 0.0
        for step in range(start + 1, t.fidelity_max + 1):
            if self.sleep:
                time.sleep(self.sleep)
            spent += float(costs[step - 1])
            self.clock += float(costs[step - 1])
            self.steps_run += 1
            cumulative.append(spent)
            trial.report(float(curve[step - 1]), step)
            contract.record_cost(trial, cumulative)
            if step < t.fidelity_max and trial.should_prune():
                trial.set_user_attr(contract.CHECKPOINT, f"sim://{t.name}/{trial.number}/{step}")
                raise optuna.TrialPruned()
        return float(curve[-1])
