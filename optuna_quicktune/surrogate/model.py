"""The meta-trained surrogates and the bundle that the sampler and pruner use.

``PerformanceSurrogate`` is Quick-Tune's deep-kernel GP: a :class:`FeatureExtractor` embeds
(configuration, curve prefix, target budget, meta-features) and an :class:`ExactGP` on the embedding
predicts the normalised score. After meta-training the GP is conditioned once on a bounded context
of meta-training points, so a prediction costs ``O(q * n_context)`` whatever the meta-dataset size.

``CostSurrogate`` regresses the log of one step's cost, so every predicted cost is positive.

``QuickTuneSurrogate`` bundles both with the search space and the preprocessing record; it is what
``meta_train`` returns, what ``save``/``load`` persist and what ``QuickTuneSampler`` takes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from optuna_quicktune.errors import SpaceMismatchError
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.surrogate.calibration import row_scales
from optuna_quicktune.surrogate.gp import ExactGP, Posterior
from optuna_quicktune.surrogate.networks import CostNet, FeatureExtractor
from optuna_quicktune.surrogate.preprocessing import Batch, Preprocessing
from optuna_quicktune.surrogate.query_cache import QueryCache, task_rows
from optuna_quicktune.surrogate.task_scale import TaskScalePrior

if TYPE_CHECKING:
    from optuna_quicktune.portfolio import PortfolioTable

_VIEW_IDS = itertools.count()

__all__ = ["PerformanceSurrogate", "CostSurrogate", "QuickTuneSurrogate"]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the surrogates' small matrix work on one thread.

    Predictions and meta-training steps are many small matrix products; torch's thread pool spins
    on every one, which costs more than the work: on a busy 2-core machine a prediction took 40 ms
    instead of 2 ms and a meta-training step 416 ms instead of 87 ms (measured).
    """
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


class PerformanceSurrogate:
    """Deep-kernel GP over (configuration, curve prefix, budget, meta-features)."""

    def __init__(
        self, dim_x: int, max_fidelity: int, dim_mf: int, *, hidden: int = 64, embedding: int = 16, kernel: str = "rbf",
        noise: str = "constant", mean: str = "constant",
    ) -> None:
        # Surrogates saved before these models existed have no "noise"/"mean" hparam: constant.
        self.hparams = {
            "dim_x": dim_x, "max_fidelity": max_fidelity, "dim_mf": dim_mf,
            "hidden": hidden, "embedding": embedding, "kernel": kernel, "noise": noise, "mean": mean,
        }
        self.net = FeatureExtractor(dim_x, max_fidelity, dim_mf, hidden, embedding, noise, mean)
        self.gp = ExactGP(kernel, hetero=noise == "prefix", mean_offset=mean == "last")
        self.context: Batch | None = None
        self.context_y: torch.Tensor | None = None
        self.n_context = 0
        self.std_scale = 1.0
        # Per-bin std factors by how much of the target budget a row's prefix covers (see
        # .calibration); empty: ``std_scale`` for every row (surrogates saved before them).
        self.std_scales: tuple[float, ...] = ()
        self._set_scales: OrderedDict[Hashable, np.ndarray | float] = OrderedDict()  # named row sets' factors
        # tau2: variance of the offset that a new task's level has from the meta-learned one
        # (GP units; estimated on validation tasks by meta_train; see gp.py, "Task effect").
        self.task_effect = 0.0
        self._posterior: Posterior | None = None
        # Predictions that follow conditioned views; shared by them (copy.copy), not by deep copies.
        self.queries = QueryCache()

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters()) + list(self.gp.parameters())

    def embed(self, b: Batch) -> torch.Tensor:
        z = self.net(b).double()
        if self.gp.lead:  # the residual kernel's raw inputs lead (see gp.py, "Residual correlation")
            z = torch.cat([b.x.double(), b.budget.double(), z], 1)
        return z

    def set_calibration(self, std_scale: float, std_scales: Sequence[float] = ()) -> None:
        """The predictive std's factors: one for every row, and per prefix bin (:mod:`.calibration`)."""
        self.std_scale = float(std_scale)
        self.std_scales = tuple(float(v) for v in std_scales)
        self._set_scales.clear()

    def set_residual(self, share: float, inv_scale: "torch.Tensor | Sequence[float]") -> None:
        """Target-task residual correlation (``inv_scale``: per configuration dimension, then budget)."""
        inv = torch.as_tensor(inv_scale, dtype=torch.float64).reshape(-1)
        if share > 0 and inv.shape[0] != self.hparams["dim_x"] + 1:
            raise ValueError(f"inv_scale needs {self.hparams['dim_x'] + 1} entries (configuration, budget), got {inv.shape[0]}.")
        self.gp.set_residual(share, inv)
        self.invalidate()

    def loss(self, b: Batch, y: torch.Tensor) -> torch.Tensor:
        """Negative exact marginal log-likelihood (per point) of the batch."""
        return -self.gp.marginal_log_likelihood(self.embed(b), y.double())

    def set_context(self, b: Batch, y: np.ndarray | torch.Tensor) -> None:
        self.context = b
        self.context_y = torch.as_tensor(y, dtype=torch.float64)
        self.n_context = len(b)  # rows after these (a view's study rows) are the target task's
        self._posterior = None
        self.queries.clear()

    def posterior(self) -> Posterior:
        if self.context is None or self.context_y is None:
            raise RuntimeError("The surrogate has no conditioning context; meta-train or load one.")
        if self._posterior is None:
            n = self.n_context
            with torch.no_grad():
                post = self.gp.condition(self.embed(self.context.select(slice(0, n))), self.context_y[:n])
                if self.task_effect > 0:
                    post = post.with_task_effect(self.task_effect)
                if len(self.context) > n:  # a view's study rows, rebuilt after invalidate()
                    post = post.extended(self.embed(self.context.select(slice(n, None))), self.context_y[n:])
            self._posterior = post
        return self._posterior

    def predict_z(self, b: Batch, cache: bool = True, keys: list[bytes] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the normalised score (calibrated: :mod:`.calibration`).

        ``cache=False`` skips the query cache, for rows that will not be asked for again.
        ``keys``: the rows' keys in the query cache (``row_keys(b)``), when the caller kept them.
        """
        with torch.no_grad():
            if cache:
                mean, var = self.queries.predict(self.posterior(), b, self.embed, keys)
            else:
                q = self.posterior().query(self.embed(b), task_rows(b))
                mean, var = q.mean, q.var.clamp_min(1e-9)
        return mean.numpy(), np.sqrt(var.numpy()) * row_scales(b, self.std_scales, self.std_scale)

    def predict_z_set(self, key: Hashable, make_batch: Callable[[], Batch]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_z` of a fixed row set named by ``key`` (see :class:`QueryCache`)."""
        if not self.std_scales:  # one factor: nothing to remember about the rows
            with torch.no_grad():
                mean, var = self.queries.predict_set(self.posterior(), key, make_batch, self.embed)
            return mean.numpy(), np.sqrt(var.numpy()) * self.std_scale
        made: list[Batch] = []

        def make() -> Batch:
            made.append(make_batch())
            return made[-1]

        with torch.no_grad():
            mean, var = self.queries.predict_set(self.posterior(), key, make, self.embed)
        return mean.numpy(), np.sqrt(var.numpy()) * self._set_scale(key, made, make_batch)

    def _set_scale(self, key: Hashable, made: list[Batch], make_batch: Callable[[], Batch]) -> np.ndarray | float:
        """The std factors of the named row set ``key`` (kept per key: a cached set's batch is not rebuilt)."""
        scales = self._set_scales.get(key)
        if scales is None:  # read once and returned as computed: views on other threads share the dict
            scales = row_scales(made[-1] if made else make_batch(), self.std_scales, self.std_scale)
            self._set_scales[key] = scales
            while len(self._set_scales) > 64:
                self._set_scales.popitem(last=False)
        return scales

    def conditioned(self, b: Batch, y: np.ndarray | torch.Tensor) -> "PerformanceSurrogate":
        """A new view that also conditions on ``(b, y)``; weights are shared and never change.

        The posterior is extended, not recomputed: the meta-training context is embedded and
        factorised once, whatever number of study runs is added to it.
        """
        y = torch.as_tensor(y, dtype=torch.float64)
        base = self.posterior()
        view = copy.copy(self)
        assert self.context is not None and self.context_y is not None
        view.context, view.context_y = self.context.cat(b), torch.cat([self.context_y, y])
        with torch.no_grad():
            view._posterior = base.extended(self.embed(b), y)
        return view

    def invalidate(self) -> None:
        self._posterior = None
        self.queries.clear()
        self._set_scales.clear()


class CostSurrogate:
    """Per-step cost; trained on and predicting log-cost, so predictions are strictly positive."""

    def __init__(self, dim_x: int, dim_mf: int, *, hidden: int = 64) -> None:
        self.hparams = {"dim_x": dim_x, "dim_mf": dim_mf, "hidden": hidden}
        self.net = CostNet(dim_x, dim_mf, hidden)
        self.trained = False

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.net.parameters())

    def predict_log(self, b: Batch) -> np.ndarray:
        with torch.no_grad():
            return self.net(b).double().numpy()


class QuickTuneSurrogate:
    """Performance and cost surrogates of one search space, ready to score candidates."""

    def __init__(
        self,
        space: SearchSpace,
        prep: Preprocessing,
        performance: PerformanceSurrogate,
        cost: CostSurrogate,
        *,
        meta_configs: np.ndarray | None = None,
        info: Mapping[str, Any] | None = None,
        portfolio: "PortfolioTable | None" = None,
    ) -> None:
        self.space = space
        self.prep = prep
        self.performance = performance
        self.cost = cost
        self.meta_configs = np.zeros((0, space.dim)) if meta_configs is None else np.asarray(meta_configs)
        self.info: dict[str, Any] = dict(info or {})
        # The meta-dataset's normalised regret table (a dataset-aware portfolio is built from it);
        # None for surrogates saved before it was stored.
        self.portfolio = portfolio
        # Cache keys: a conditioned view gets a new view_id; it shares the cost network (cost_id).
        self.view_id = f"view-{next(_VIEW_IDS)}"
        self.cost_id = self.view_id
        self.scale_id = ""  # a rescaled view's own (what the inputs built from a study's scores depend on)

    # --------------------------------------------------------------- identity
    @property
    def metafeature_names(self) -> list[str]:
        return list(self.prep.metafeature_names)

    @property
    def max_fidelity(self) -> int:
        return self.prep.max_fidelity

    def check_space(self, space: SearchSpace) -> None:
        if space.fingerprint != self.space.fingerprint:
            ours, theirs = set(self.space.names), set(space.names)
            raise SpaceMismatchError(
                f"This surrogate was trained on space {self.space.name!r} ({self.space.fingerprint}), "
                f"not {space.name!r} ({space.fingerprint}). Parameters only in the surrogate's space: "
                f"{sorted(ours - theirs)}; only in yours: {sorted(theirs - ours)}; same names may differ in "
                "range or choices. Use the surrogate's space (surrogate.space) or meta-train one on yours."
            )

    def weights_digest(self) -> str:
        """A hash of every weight: equal digests mean identical models (used to prove no refit)."""
        h = hashlib.sha256()
        for name, t in sorted(_all_tensors(self).items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def task_scale(self) -> TaskScalePrior | None:
        """A new task's score-scale prior, when meta-trained on per-task standardised scores (else None)."""
        raw = self.info.get("task_scale")
        return None if raw is None else TaskScalePrior.from_json(raw)

    def rescaled(self, level: float, scale: float) -> "QuickTuneSurrogate":
        """A view that reads a task's scores with level ``level`` (higher is better) and spread ``scale``.

        Only the score normalisation changes, from the prior's map (:mod:`.task_scale`) to this one,
        and the map counts as known (no widening); the weights and the meta-training context are
        shared, so configurations without a curve keep their standardised predictions.
        """
        prior = self.task_scale
        if prior is None:
            raise ValueError("rescaled() needs a surrogate meta-trained with targets='task'.")
        m0, s0 = prior.mode
        view = copy.copy(self)
        ym, ys = (self.prep.y_mean - m0) / s0, self.prep.y_std / s0  # the standardised units' normalisation
        view.prep = dataclasses.replace(self.prep, y_mean=level + scale * ym, y_std=scale * ys)
        view.view_id = view.scale_id = f"view-{next(_VIEW_IDS)}"
        return view

    def _std(self, mean: np.ndarray, std: np.ndarray, sign: float) -> np.ndarray:
        """The predictive std in metric units: with the prior map's own uncertainty unless rescaled."""
        prior = None if self.scale_id else self.task_scale
        return std if prior is None else prior.widen(mean, std, sign)

    def copy(self) -> "QuickTuneSurrogate":
        out = copy.deepcopy(self)
        out.view_id = out.cost_id = f"view-{next(_VIEW_IDS)}"
        return out

    def conditioned_on(
        self,
        X: np.ndarray,
        fidelities: np.ndarray | Sequence[int],
        y: np.ndarray | Sequence[float],
        *,
        fidelity_max: int,
        metafeatures: Mapping[str, float] | np.ndarray | None,
        sign: float = 1.0,
    ) -> "QuickTuneSurrogate":
        """A new view whose GP also sees scores ``y`` of configurations ``X`` at ``fidelities``.

        Still zero-shot: no weight changes, only the conditioning set grows, so what the study saw
        moves the predictions of similar configurations. ``self`` is left as it was.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[0] == 0:
            return self
        b = self.batch(X, None, np.asarray(fidelities), fidelity_max=fidelity_max, metafeatures=metafeatures, sign=sign)
        view = copy.copy(self)
        with single_thread():
            view.performance = self.performance.conditioned(b, self.prep.z(np.asarray(y, dtype=np.float64), sign))
        view.view_id = f"view-{next(_VIEW_IDS)}"
        return view

    # --------------------------------------------------------------- inputs
    def batch(
        self,
        X: np.ndarray,
        prefixes: Sequence[np.ndarray | Sequence[float]] | None,
        target: np.ndarray | Sequence[int] | int,
        *,
        fidelity_max: int,
        metafeatures: Mapping[str, float] | np.ndarray | None,
        sign: float = 1.0,
    ) -> Batch:
        """Network inputs for candidates ``X`` (encoded), each with an observed curve prefix."""
        X, target_arr, fmax_arr, mf_u = self._inputs(X, target, fidelity_max, metafeatures)
        q, F = X.shape[0], self.prep.max_fidelity
        prefix_z = np.zeros((q, F))
        lengths = np.zeros(q, dtype=np.int64)
        if prefixes is not None:
            if len(prefixes) != q:
                raise ValueError(f"Got {len(prefixes)} prefixes for {q} candidates.")
            raw = np.zeros((q, F))
            for i, p in enumerate(prefixes):
                if len(p):
                    p = np.asarray(p, dtype=np.float64)[:F]
                    lengths[i] = p.shape[0]
                    raw[i, : p.shape[0]] = p
            if lengths.any():
                # z is elementwise; entries beyond a row's length are masked out by Batch.build.
                prefix_z = np.where(np.arange(F)[None, :] < lengths[:, None], self.prep.z(raw, sign), 0.0)
        return Batch.build(X, prefix_z, lengths, target_arr, fmax_arr, mf_u, F)

    # --------------------------------------------------------------- predictions
    def predict(
        self,
        X: np.ndarray,
        prefixes: Sequence[np.ndarray | Sequence[float]] | None,
        target: np.ndarray | Sequence[int] | int,
        *,
        fidelity_max: int,
        metafeatures: Mapping[str, float] | np.ndarray | None,
        sign: float = 1.0,
        query_key: Hashable | None = None,
        cache: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean and std of the score at ``target`` in the metric's own units and direction.

        ``query_key``: a name the caller gives this exact set of inputs when it predicts the same
        set under several views (the sampler's pool); its predictions then follow the views
        without being recomputed. Never reuse a key for other inputs.
        ``cache=False``: rows that will not be asked for again (a running trial's curve, one step
        longer at every pruner call); adding them to the row cache costs a copy of all its rows.
        """
        def make() -> Batch:
            return self.batch(X, prefixes, target, fidelity_max=fidelity_max, metafeatures=metafeatures, sign=sign)

        if query_key is None:
            return self.predict_batch(make(), sign=sign, cache=cache)
        with single_thread():
            mz, sz = self.performance.predict_z_set(query_key, make)
        mean = self.prep.y(mz, sign)
        return mean, self._std(mean, sz * self.prep.y_std, sign)

    def predict_batch(
        self, b: Batch, *, sign: float = 1.0, keys: list[bytes] | None = None, cache: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` of network inputs built with :meth:`batch` (``sign`` must be the one used).

        Why: rows whose inputs do not change between decisions (a paused run's curve) need not be
        rebuilt at every one; ``keys`` (:func:`~.query_cache.row_keys` of ``b``) are kept with them.
        """
        with single_thread():
            mz, sz = self.performance.predict_z(b, cache=cache, keys=keys)
        mean = self.prep.y(mz, sign)
        return mean, self._std(mean, sz * self.prep.y_std, sign)

    def predict_cost(
        self,
        X: np.ndarray,
        target: np.ndarray | Sequence[int] | int,
        *,
        fidelity_max: int,
        metafeatures: Mapping[str, float] | np.ndarray | None,
    ) -> np.ndarray:
        """Predicted seconds of the step that reaches fidelity ``target`` (strictly positive)."""
        b = Batch.without_curve(*self._inputs(X, target, fidelity_max, metafeatures))
        with single_thread():
            return self.prep.cost(self.cost.predict_log(b))

    def _inputs(
        self, X: np.ndarray, target: np.ndarray | Sequence[int] | int, fidelity_max: int,
        metafeatures: Mapping[str, float] | np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The per-row inputs every network reads: configurations, target, fidelity max, meta-features."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        q, F = X.shape[0], self.prep.max_fidelity
        if fidelity_max > F:
            raise ValueError(
                f"The task's max fidelity {fidelity_max} exceeds the surrogate's {F}: the surrogate never "
                "saw curves that long. Report fewer fidelity steps or meta-train on longer curves."
            )
        target_arr = np.broadcast_to(np.asarray(target, dtype=np.float64), (q,))
        mf_u = np.broadcast_to(self.prep.metafeatures(metafeatures), (q, len(self.prep.metafeature_names)))
        return X, target_arr, np.full(q, float(fidelity_max)), mf_u

    # --------------------------------------------------------------- persistence
    def save(self, directory: str) -> None:
        from optuna_quicktune.surrogate.persistence import save

        save(self, directory)

    @classmethod
    def load(cls, directory: str) -> "QuickTuneSurrogate":
        from optuna_quicktune.surrogate.persistence import load

        return load(directory)


def _all_tensors(s: QuickTuneSurrogate) -> dict[str, torch.Tensor]:
    out = {f"perf.net.{k}": v for k, v in s.performance.net.state_dict().items()}
    out.update({f"perf.gp.{k}": v for k, v in s.performance.gp.state_dict().items()})
    out.update({f"cost.net.{k}": v for k, v in s.cost.net.state_dict().items()})
    return out
