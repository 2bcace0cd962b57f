"""Meta-training (and optional target fine-tuning) of the surrogates.

Notation
--------
A training *tuple* is (run r, target step s, prefix length p < s): inputs are r's configuration,
its curve up to p, the budget s and its task's meta-features; the target is r's score at s.
Each optimisation step draws one *query task* and ``batch_size`` tuples from it, plus a *context*
of ``batch_size`` tuples from the other meta-training tasks, and minimises the exact GP negative
marginal log-likelihood of the union. Because the query task's points are explained through
other tasks' points, the deep kernel learns what zero-shot use needs: which points of *other*
datasets say something about this one (through the meta-features) and how a curve prefix
continues. The cost network is trained alongside on log step costs (MSE).

Validation is by task: held-out tasks are predicted from a context of training tasks only; the
best step's weights are kept (early stopping) and the predictive std is calibrated on them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optuna_quicktune.errors import EmptyMetaDatasetError
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.surrogate.calibration import CALIBRATIONS, calibrate
from optuna_quicktune.surrogate.model import CostSurrogate, PerformanceSurrogate, QuickTuneSurrogate, single_thread
from optuna_quicktune.surrogate.preprocessing import Batch, Preprocessing
from optuna_quicktune.surrogate.residual import estimate_residual, validation_rows
from optuna_quicktune.surrogate.task_scale import TARGETS, TaskScalePrior, standardise_tasks
from optuna_quicktune.surrogate.tuples import TrainingTuples
from optuna_quicktune.surrogate.validation import estimate_task_effect, validation_nll, validation_report

__all__ = ["meta_train", "fine_tune", "TrainingTuples"]

_logger = logging.getLogger(__name__)


@dataclass
class _Split:
    train: list[int]
    val: list[int]


def _on_one_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Train on one torch thread (see :func:`single_thread`: 5x faster on a busy 2-core CPU)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper


def _split(tasks: list[int], val_tasks: Sequence[int] | None, val_fraction: float, rng: np.random.Generator) -> _Split:
    if val_tasks is not None:
        val = [t for t in tasks if t in set(val_tasks)]
    elif len(tasks) >= 3 and val_fraction > 0:
        k = max(1, int(round(val_fraction * len(tasks))))
        val = sorted(rng.choice(tasks, size=k, replace=False).tolist())
    else:
        val = []
    train = [t for t in tasks if t not in set(val)]
    return _Split(train, val)


@_on_one_thread
def meta_train(
    metadataset: MetaDataset,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    context_size: int = 256,
    learning_rate: float = 1e-3,
    hidden: int = 64,
    embedding: int = 16,
    kernel: str = "rbf",
    val_fraction: float = 0.2,
    val_tasks: Sequence[int] | None = None,
    eval_every: int = 100,
    patience: int = 5,
    seed: int = 0,
    time_limit: float | None = None,
    progress: bool | Callable[[int, dict[str, float]], None] = False,
    task_effect: bool = False,
    noise: str = "prefix",
    mean: str = "last",
    residual: bool = True,
    calibration: str = "global",
    targets: str = "task",
) -> QuickTuneSurrogate:
    """Meta-train the performance and cost surrogates on every task of ``metadataset``.

    Args:
        steps: Optimisation steps (upper bound; early stopping may end sooner).
        batch_size: Tuples from the query task per step (and as many context tuples from others).
        context_size: Meta-training points the GP conditions on after training (prediction cost).
        val_tasks: Task indices to validate on; by default ``val_fraction`` of the tasks, seeded.
        patience: Evaluations without improvement before stopping.
        progress: ``True`` for a progress bar, or a callback ``(step, metrics)``.
        task_effect: Estimate the variance of a new task's offset from the meta-learned level on
            the validation tasks (see :mod:`.gp`, "Task effect"), so that a study's own runs move
            every prediction for its task. Off by default: on LCBench (24 folds x 5 seeds) it
            helped on 6 tasks, hurt on 11 and was 0.076 against 0.074 final regret overall
            (docs/benchmarks.md, stop 12).
        noise: ``"prefix"`` (each point's noise learned from how much of its run is known, so that
            a run's own long curve gives a narrow prediction and a fresh configuration a wide one)
            or ``"constant"`` (one noise level, the model before stop 16; see :mod:`.gp`).
        mean: ``"last"`` (a run with a curve prefix is predicted from its last score, the GP
            modelling how it moves on) or ``"constant"``. Together with ``noise="prefix"`` this
            lowered QuickTune's LCBench regret at 100 % of the budget from 0.070 to 0.058
            (docs/benchmarks.md, stop 16).
        residual: Estimate on the validation tasks how much of a fresh configuration's
            unexplained score its neighbours on the same task share (:mod:`.residual`), so that a
            study's own runs inform the predictions of configurations near them. The estimate may
            be 0 (the model without it); it needs validation tasks.
        calibration: ``"global"`` (one std factor for every row, fitted on the validation
            tasks) or ``"prefix"`` (one factor per bin of how much of the target budget a row's
            curve covers, :mod:`.calibration`). ``"prefix"`` makes the 90 % intervals of a run's
            end honest at every curve length (LCBench held-out: 0.81-0.93 coverage from 1 to 45
            of 50 epochs, against 0.61-0.99 with one factor), but did not lower QuickTune's regret
            (LCBench 24 tasks x 10 seeds: within noise at 50 and 100 % of the budget, 0.001 worse
            at 10 %; docs/benchmarks.md, stop 23), so it is not the default.
        targets: ``"task"`` (each task's scores standardised by its own mean and std,
            :mod:`.task_scale`) or ``"global"`` (scores normalised once over every task, the model
            before stop 27). With ``"task"`` the model learns which configurations win on a task
            rather than each task's level, and the sampler estimates a new task's scale from its
            study (``info["task_scale"]`` is the prior). It lowered QuickTune's LCBench regret at 25
            and 50 % of the budget on two seed sets (50 %: 0.064 -> 0.051 and 0.067 -> 0.056) and
            rbv2_rpart's at 100 % (0.092 -> 0.082) (docs/benchmarks.md, stop 27).
    """
    if len(metadataset.runs) == 0:
        raise EmptyMetaDatasetError("The meta-dataset has no runs; there is nothing to meta-train on.")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {calibration!r}.")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, not {targets!r}.")
    t0 = time.perf_counter()
    original = metadataset
    scale_prior = None
    if targets == "task":
        metadataset, stats = standardise_tasks(metadataset)
        scale_prior = TaskScalePrior.from_stats(stats, [t.sign for t in metadataset.tasks])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    arrays = metadataset.arrays()
    prep = Preprocessing.fit(arrays, metadataset.metafeature_names)
    data = TrainingTuples(arrays, prep)
    split = _split(data.tasks, val_tasks, val_fraction, rng)
    if len(split.train) < 1:
        raise EmptyMetaDatasetError("Meta-training needs at least one training task with a learning curve.")

    dim_mf = len(prep.metafeature_names)
    perf = PerformanceSurrogate(metadataset.space.dim, prep.max_fidelity, dim_mf, hidden=hidden, embedding=embedding,
                                kernel=kernel, noise=noise, mean=mean)
    cost = CostSurrogate(metadataset.space.dim, dim_mf, hidden=hidden)
    opt = torch.optim.Adam(_param_groups(perf, learning_rate))
    opt_cost = torch.optim.Adam(cost.parameters(), lr=learning_rate)

    val_rng = np.random.default_rng(seed + 1)
    val_sets = [(data.sample(split.train, batch_size, val_rng), data.sample([t], batch_size, val_rng)) for t in split.val]
    best = (math.inf, None, 0)
    history: list[dict[str, float]] = []
    bar = _progress_bar(steps) if progress is True else None
    stale = 0
    step = 0
    for step in range(1, steps + 1):
        task = int(rng.choice(split.train))
        others = [t for t in split.train if t != task] or [task]
        qb, qy = data.sample([task], batch_size, rng)
        cb, cy = data.sample(others, batch_size, rng)
        opt.zero_grad()
        loss = perf.loss(qb.cat(cb), torch.as_tensor(np.concatenate([qy, cy])))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(perf.parameters(), 10.0)
        opt.step()
        cs = data.sample_cost(split.train, 2 * batch_size, rng)
        if cs is not None:
            opt_cost.zero_grad()
            closs = torch.mean((cost.net(cs[0]) - torch.as_tensor(cs[1], dtype=torch.float32)) ** 2)
            closs.backward()
            opt_cost.step()
            cost.trained = True
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % eval_every == 0 or step == steps:
            metrics = {"step": step, "train_nll": float(loss.item())}
            if val_sets:
                metrics["val_nll"] = validation_nll(perf, val_sets)
                history.append(metrics)
                if metrics["val_nll"] < best[0] - 1e-4:
                    best = (metrics["val_nll"], _state(perf), step)
                    stale = 0
                else:
                    stale += 1
            else:
                history.append(metrics)
            if callable(progress):
                progress(step, metrics)
            if stale >= patience:
                break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            _logger.info("meta_train: time limit reached after %d steps.", step)
            break
    if bar is not None:
        bar.close()
    if best[1] is not None:
        _restore(perf, best[1])

    info: dict[str, Any] = {
        "tasks": [t.name for t in metadataset.tasks],
        "train_tasks": [metadataset.tasks[t].name for t in split.train],
        "val_tasks": [metadataset.tasks[t].name for t in split.val],
        "n_runs": len(metadataset.runs),
        "steps": step,
        "best_step": best[2] or step,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - t0, 3),
        "history": history,
        "hyperparameters": {
            "steps": steps, "batch_size": batch_size, "context_size": context_size, "learning_rate": learning_rate,
            "hidden": hidden, "embedding": embedding, "kernel": kernel, "noise": noise, "mean": mean,
            "residual": residual, "calibration": calibration, "targets": targets,
        },
    }
    if scale_prior is not None:
        info["task_scale"] = scale_prior.to_json()
    # Calibrate the predictive std on validation tasks (context from training tasks only).
    if split.val:
        ctx_b, ctx_y = data.sample(split.train, context_size, np.random.default_rng(seed + 2))
        perf.set_context(ctx_b, ctx_y)
        perf.task_effect = estimate_task_effect(perf, data, split.val) if task_effect else 0.0
        perf.invalidate()
        calibrate(perf, data, split.val, seed, per_bin=calibration == "prefix")
        info["validation"] = validation_report(perf, data, split.val)
        if residual:
            fit = estimate_residual(perf, validation_rows(data, split.val, seed + 5))
            perf.set_residual(fit.share, fit.inv_scale(data.X.shape[1]))
            info["validation"]["residual"] = fit.report()
    ctx_b, ctx_y = data.sample(data.tasks, context_size, np.random.default_rng(seed + 3))
    perf.set_context(ctx_b, ctx_y)
    meta_configs = np.unique(np.round(arrays["X"], 6), axis=0)
    from optuna_quicktune.portfolio import PortfolioTable

    if scale_prior is not None:  # on its own the surrogate predicts in metric units at the prior's map
        level, scale = scale_prior.mode
        prep = dataclasses.replace(prep, y_mean=level + scale * prep.y_mean, y_std=scale * prep.y_std)
    return QuickTuneSurrogate(
        metadataset.space, prep, perf, cost, meta_configs=meta_configs, info=info,
        portfolio=PortfolioTable.from_metadataset(original),
    )


@_on_one_thread
def fine_tune(
    surrogate: QuickTuneSurrogate,
    observations: MetaDataset,
    *,
    steps: int = 50,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> QuickTuneSurrogate:
    """Quick-Tune's refit: a copy fine-tuned on the target study's curves and conditioned on them.

    The original surrogate is left untouched, so ``refit=False`` users sharing it see no change.
    """
    s = surrogate.copy()
    if not observations.runs:
        return s
    surrogate.check_space(observations.space)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    arrays = observations.arrays()
    F = s.prep.max_fidelity
    arrays = _pad_to(arrays, F)
    data = TrainingTuples(arrays, s.prep)
    base_ctx, base_y = s.performance.context, s.performance.context_y
    assert base_ctx is not None and base_y is not None
    opt = torch.optim.Adam(s.performance.parameters(), lr=learning_rate)
    n_ctx = min(batch_size, len(base_y))
    for _ in range(steps):
        qb, qy = data.sample(data.tasks, batch_size, rng)
        idx = torch.as_tensor(rng.choice(len(base_y), size=n_ctx, replace=False))
        cb = Batch(base_ctx.x[idx], base_ctx.curve[idx], base_ctx.budget[idx], base_ctx.mf[idx])
        opt.zero_grad()
        loss = s.performance.loss(qb.cat(cb), torch.cat([torch.as_tensor(qy), base_y[idx]]))
        loss.backward()
        opt.step()
    # Condition on the meta context plus every target observation at its prefix-free final step.
    qb, qy = data.sample(data.tasks, min(256, 4 * int(data.lengths.sum()) + 1), rng)
    s.performance.set_context(base_ctx.cat(qb), torch.cat([base_y, torch.as_tensor(qy)]))
    s.info = dict(s.info, refit={"observations": int(np.isfinite(arrays["Y"]).sum()), "steps": steps})
    return s


# ---------------------------------------------------------------------- helpers
#: Learning-rate factor of the prefix heads (noise and mean). They start at their neutral values
#: with few parameters; at the shared rate the noise head had barely moved by the step early
#: stopping kept (100 of 400 on most LCBench folds: noise std 14.4 fresh vs 12.9 at 98 % of a curve).
_HEAD_LR_FACTOR = 10.0


def _param_groups(perf: PerformanceSurrogate, learning_rate: float) -> list[dict[str, Any]]:
    """One group, or two when the network has prefix heads (see ``_HEAD_LR_FACTOR``)."""
    heads = [h for h in (perf.net.noise, perf.net.mean) if h is not None]
    if not heads:
        return [{"params": perf.parameters(), "lr": learning_rate}]
    head_params = [p for h in heads for p in h.parameters()]
    ids = {id(p) for p in head_params}
    rest = [p for p in perf.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": learning_rate}, {"params": head_params, "lr": learning_rate * _HEAD_LR_FACTOR}]


def _pad_to(arrays: dict[str, np.ndarray], F: int) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for k in ("Y", "C"):
        a = arrays[k]
        if a.shape[1] < F:
            out[k] = np.concatenate([a, np.full((a.shape[0], F - a.shape[1]), np.nan)], axis=1)
    return out


def _state(perf: PerformanceSurrogate) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "net": {k: v.clone() for k, v in perf.net.state_dict().items()},
        "gp": {k: v.clone() for k, v in perf.gp.state_dict().items()},
    }


def _restore(perf: PerformanceSurrogate, state: dict[str, dict[str, torch.Tensor]]) -> None:
    perf.net.load_state_dict(state["net"])
    perf.gp.load_state_dict(state["gp"])
    perf.invalidate()


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="meta-train", unit="step")
