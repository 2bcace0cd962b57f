"""An exact Gaussian process on learned embeddings, in plain torch.

Notation
--------
Z: embeddings of the conditioning points (the "context"), shape ``(n, e)``.
y: their normalised targets, shape ``(n,)``.
z: embeddings of query points, shape ``(q, e)``.
K = k(Z, Z) + noise * I: the covariance of the observed targets, ``(n, n)``.
L: the Cholesky factor of K (lower triangular).
alpha = K^-1 (y - mean): the weights of the posterior mean.
k(z, Z): cross-covariance ``(q, n)``; the posterior is
    mean(z) = mean + k(z, Z) alpha,    var(z) = k(z, z) - k(z, Z) K^-1 k(Z, z) + noise.

Incremental queries: a :class:`QueryState` keeps, for fixed query points z, ``k(z, Z)`` and the
posterior mean and variance. When the posterior is extended by a block of points z2 (Schur
complement ``S``, ``a = K^-1 k(Z, z2)``, residual ``r = y2 - mean(z2)``), the state follows in
``O(q n m)`` instead of ``O(q n^2)``:
    k~ = k(z, z2) - k(z, Z) a,   mean += k~ S^-1 r,   var -= rowsum((k~ S^-1) * k~).

Task effect: the points of the *target* task (the study's observations, and the queries that
have no observed curve yet) share an offset ``b ~ N(0, tau2)`` that the meta-training tasks do not
(each had its own, now integrated out). In kernel terms ``k'(u, v) = k(u, v) + tau2`` when both
``u`` and ``v`` are such target points. Conditioning on the study's runs then moves every
prediction for the task by the posterior of ``b``: a task on which the meta-learned level is off
by a constant is corrected after a few runs, however far apart the configurations are.
The context rows are ``Z[:n_ctx]``; every row added by :meth:`Posterior.extended` is a target row.

Observation noise: constant (``noise``) by default. A *heteroscedastic* GP (``ExactGP(hetero=True)``)
reads each point's noise from its own embedding: the last column ``h`` of an embedding is a
log-offset, ``noise(z) = softplus(raw_noise + h)``, and only the other columns enter the kernel.
Why: a run's final score given 40 of its 50 epochs is far more certain than a fresh
configuration's, and one shared noise level makes both equally uncertain (the predictive std is
then the noise floor everywhere, and expected improvements compare means only).

Mean: constant (``mean``) by default. With ``ExactGP(mean_offset=True)`` an embedding carries one
more column, its point's offset ``m`` from that constant (``mean(z) = mean + m``), before the noise
offset if there is one. Why: a run's score at the end of its curve is, to first order, its last
observed score; a kernel on a learned embedding reproduces that identity only approximately (on
LCBench its continuations were several accuracy points off where carrying the last value forward
was within a fraction of one), so the mean carries it and the GP models the rest.

Residual correlation on the target task: what the meta-learned kernel cannot explain of a fresh
configuration's score is observation noise to the GP, ``noise(z)``, independent between points. On
one task it is not: two similar configurations (and the same configuration at two nearby budgets)
miss the meta-learned prediction by similar amounts. With ``set_residual(share, ...)`` a share
``omega`` of a target point's noise becomes a process correlated over its raw inputs ``u`` (the
configuration's encoding and the budget fraction, carried as the *leading* columns of its
embedding):
    k_T(u, v) = omega * sqrt(noise(u) noise(v)) * exp(-0.5 ||(u - v) / ell||^2)   (target rows only),
    noise_T(u) = (1 - omega) * noise(u),
so every target point's prior variance is unchanged (calibration stays) while the study's own runs
now inform the configurations near them. ``omega = 0`` is the model without it.
``omega`` and ``ell`` are estimated after meta-training by the marginal likelihood of held-out tasks'
zero-shot residuals (:mod:`.residual`), not fitted on the target.

The kernel is ``outputscale * r(||z - z'|| / lengthscale)`` with ``r`` the RBF or the Matérn 5/2
correlation. Hyper-parameters are stored as unconstrained raw values and mapped through softplus
so that gradient steps can never make them non-positive.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ExactGP", "KERNELS", "Posterior", "QueryState"]

KERNELS = ("rbf", "matern52")
_JITTER = 1e-5
_LINEAGE = 64  # extension blocks a posterior remembers (older query states are recomputed)
_UIDS = itertools.count()


class ExactGP(nn.Module):
    """Constant mean, scaled RBF/Matérn 5/2 kernel and Gaussian noise (per point if ``hetero``)."""

    def __init__(self, kernel: str = "rbf", hetero: bool = False, mean_offset: bool = False) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}.")
        self.kernel = kernel
        self.hetero = bool(hetero)
        self.mean_offset = bool(mean_offset)
        self.extra = int(self.hetero) + int(self.mean_offset)  # trailing embedding columns that are not features
        self.mean = nn.Parameter(torch.zeros(()))
        self.raw_outputscale = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus -> 1
        self.raw_lengthscale = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.raw_noise = nn.Parameter(torch.tensor(-2.0))  # softplus -> ~0.13
        # Residual correlation (see the module notes): not gradient-trained, set after meta-training.
        self.lead = 0  # leading embedding columns (raw configuration, budget fraction); 0: none
        self.resid_share = 0.0
        self.resid_inv_scale: torch.Tensor | None = None  # (lead,) 1 / lengthscale per leading column

    def set_residual(self, share: float, inv_scale: "torch.Tensor | list[float]") -> None:
        """Turn the target-task residual correlation on (``share > 0``) or off (``share = 0``)."""
        share = float(share)
        if not 0.0 <= share < 1.0:
            raise ValueError(f"The residual share must be in [0, 1), got {share}.")
        inv = torch.as_tensor(inv_scale, dtype=torch.float64).reshape(-1)
        self.resid_share = share
        self.resid_inv_scale = inv if share > 0 else None
        self.lead = int(inv.shape[0]) if share > 0 else 0

    def residual_cov(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | float:
        """``k_T(a, b)`` between target rows ``a`` and ``b`` (0 when the residual model is off)."""
        if not self.resid_share:
            return 0.0
        assert self.resid_inv_scale is not None
        ua, ub = a[:, : self.lead] * self.resid_inv_scale, b[:, : self.lead] * self.resid_inv_scale
        corr = torch.exp(-0.5 * torch.cdist(ua, ub).pow(2))
        scale = torch.sqrt(self.point_noise(a)[:, None] * self.point_noise(b)[None, :])
        return self.resid_share * scale * corr

    @property
    def outputscale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_outputscale) + 1e-4

    @property
    def lengthscale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_lengthscale) + 1e-4

    @property
    def noise(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_noise) + 1e-4

    def point_noise(self, Z: torch.Tensor) -> torch.Tensor:
        """The observation noise of each embedded point, shape ``(n,)``."""
        if not self.hetero:
            return self.noise.expand(Z.shape[0])
        return nn.functional.softplus(self.raw_noise + Z[:, -1]) + 1e-4

    def point_mean(self, Z: torch.Tensor) -> torch.Tensor:
        """The prior mean of each embedded point, shape ``(n,)``."""
        if not self.mean_offset:
            return self.mean
        return self.mean + Z[:, -self.extra]

    def covariance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.extra or self.lead:  # leading raw inputs and trailing offset columns are not kernel features
            a, b = a[:, self.lead : a.shape[1] - self.extra], b[:, self.lead : b.shape[1] - self.extra]
        sq = torch.cdist(a / self.lengthscale, b / self.lengthscale).pow(2)
        if self.kernel == "rbf":
            corr = torch.exp(-0.5 * sq)
        else:
            d = torch.sqrt(sq.clamp_min(1e-12)) * math.sqrt(5.0)
            corr = (1.0 + d + d.pow(2) / 3.0) * torch.exp(-d)
        return self.outputscale * corr

    def _chol(self, Z: torch.Tensor) -> torch.Tensor:
        K = self.covariance(Z, Z)
        return torch.linalg.cholesky(K + self.noise_matrix(Z))

    def noise_matrix(self, Z: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``diag(noise(Z) + jitter)``, the noise term of the covariance of observations at ``Z``.

        ``target``: the rows are the target task's, whose noise keeps only ``1 - omega`` (the rest
        is the residual process, :meth:`residual_cov`).
        """
        keep = 1.0 - self.resid_share if target else 1.0
        if not self.hetero:
            return (keep * self.noise + _JITTER) * torch.eye(Z.shape[0], dtype=Z.dtype)
        return torch.diag(keep * self.point_noise(Z).to(Z.dtype) + _JITTER)

    def marginal_log_likelihood(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | Z) per point (so that losses of different batch sizes compare)."""
        L = self._chol(Z)
        r = (y - self.point_mean(Z)).unsqueeze(-1)
        a = torch.cholesky_solve(r, L)
        n = y.shape[0]
        mll = -0.5 * (r * a).sum() - torch.log(torch.diagonal(L)).sum() - 0.5 * n * math.log(2 * math.pi)
        return mll / n

    def condition(self, Z: torch.Tensor, y: torch.Tensor) -> "Posterior":
        with torch.no_grad():
            L = self._chol(Z)
            alpha = torch.cholesky_solve((y - self.point_mean(Z)).unsqueeze(-1), L).squeeze(-1)
            eye = torch.eye(Z.shape[0], dtype=Z.dtype)
            K_inv = torch.cholesky_solve(eye, L)
        return Posterior(self, Z, y, alpha, K_inv)


@dataclass(frozen=True)
class _Block:
    """How a posterior extends its parent: the new points and what a query needs to follow."""

    parent: int  # uid of the extended posterior
    z: torch.Tensor  # (m, e) the new points
    a: torch.Tensor  # (n, m) K^-1 k(Z, z) of the parent
    S_inv: torch.Tensor  # (m, m) inverse Schur complement
    resid: torch.Tensor  # (m,) y - the parent's mean at z


class _Columns:
    """The ``(q, capacity)`` buffer of ``k(z, Z)`` columns that a state and its successors share.

    Append-only: a state reads its first ``n`` columns, which later appends never touch, so an
    advanced state reuses the buffer (``O(q m)`` instead of copying ``O(q n)``); a second branch
    from an older state copies.
    """

    def __init__(self, k: torch.Tensor, *below: torch.Tensor, beside: torch.Tensor | None = None) -> None:
        """``k``, with the row blocks ``below`` under it and the columns ``beside`` next to it, in one
        new buffer with room for more columns (one copy of each part: studies with many paused runs
        add rows often, and concatenating first copied every cached column twice)."""
        rows = (k, *below)
        q, n = sum(r.shape[0] for r in rows), k.shape[1]
        m = 0 if beside is None else beside.shape[1]
        self.data = torch.empty((q, n + m + max(64, (n + m) // 2)), dtype=k.dtype)
        i = 0
        for r in rows:
            self.data[i : i + r.shape[0], :n] = r
            i += r.shape[0]
        if beside is not None:
            self.data[:, n : n + m] = beside
        self.used = n + m

    def appended(self, n: int, k2: torch.Tensor) -> "_Columns":
        m = k2.shape[1]
        if n == self.used and n + m <= self.data.shape[1]:
            self.data[:, n:n + m] = k2
            self.used = n + m
            return self
        return _Columns(self.data[:, :n], beside=k2)


@dataclass(frozen=True)
class QueryState:
    """Exact predictions at fixed query points ``z`` under the posterior ``uid``."""

    uid: int
    z: torch.Tensor  # (q, e)
    cols: _Columns  # k'(z, Z) in its first n columns
    n: int
    mean: torch.Tensor  # (q,)
    var: torch.Tensor  # (q,) noisy-observation variance, not clamped
    target: torch.Tensor  # (q,) 1.0 for target-task queries (they share the task effect), else 0.0

    @classmethod
    def of(cls, uid: int, z: torch.Tensor, k: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
           target: torch.Tensor) -> "QueryState":
        return cls(uid, z, _Columns(k), k.shape[1], mean, var, target)

    @property
    def k(self) -> torch.Tensor:
        return self.cols.data[:, : self.n]

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def rows(self, idx: torch.Tensor) -> "QueryState":
        return QueryState.of(self.uid, self.z[idx], self.k[idx], self.mean[idx], self.var[idx], self.target[idx])

    def cat(self, *others: "QueryState") -> "QueryState":
        """These rows, then those of ``others`` (one copy of each state's columns)."""
        if any(o.uid != self.uid for o in others):
            raise ValueError("Query states of two posteriors cannot be joined.")
        if any(o.n != self.n for o in others):
            raise ValueError("Query states of one posterior have the same columns.")
        parts = (self, *others)
        return QueryState(self.uid, torch.cat([p.z for p in parts]), _Columns(self.k, *(o.k for o in others)), self.n,
                          torch.cat([p.mean for p in parts]), torch.cat([p.var for p in parts]),
                          torch.cat([p.target for p in parts]))


class Posterior:
    """The GP conditioned on a fixed context; cheap to query many times.

    ``uid`` names this posterior; ``lineage`` holds the (last ``_LINEAGE``) extension blocks that
    led to it, so that a :class:`QueryState` made for an ancestor can be brought up to date.
    """

    def __init__(
        self, gp: ExactGP, Z: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, K_inv: torch.Tensor,
        lineage: tuple[_Block, ...] = (), n_ctx: int | None = None, tau2: float = 0.0,
    ) -> None:
        self.gp, self.Z, self.y, self.alpha, self.K_inv = gp, Z, y, alpha, K_inv
        self.lineage = lineage
        self.n_ctx = Z.shape[0] if n_ctx is None else int(n_ctx)
        self.tau2 = float(tau2)
        self.uid = next(_UIDS)

    def with_task_effect(self, tau2: float) -> "Posterior":
        """This context posterior with target-task effect variance ``tau2`` (before any study row)."""
        if self.Z.shape[0] != self.n_ctx:
            raise ValueError("The task effect is set on the context posterior, before study rows are added.")
        return Posterior(self.gp, self.Z, self.y, self.alpha, self.K_inv, (), self.n_ctx, tau2)

    def target_cov(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | float:
        """What two target-task rows share beyond the meta-learned kernel: task effect and residual."""
        return self.tau2 + self.gp.residual_cov(a, b)

    def extended(self, z: torch.Tensor, y: torch.Tensor) -> "Posterior":
        """The posterior after also observing ``y`` at ``z``, without refactorising the context.

        Block inverse through the Schur complement ``S = K22 + noise - K21 K11^-1 K12``: a new
        ``(n + m)`` inverse for ``O(n^2 m)`` instead of ``O((n + m)^3)``, so conditioning a study's
        runs on a large meta-training context stays cheap (the context is never copied by callers).
        """
        with torch.no_grad():
            n, m = self.Z.shape[0], z.shape[0]
            k12 = self.gp.covariance(self.Z, z)
            k12[self.n_ctx:] += self.target_cov(self.Z[self.n_ctx:], z)  # earlier study rows: same task
            k22 = self.gp.covariance(z, z) + self.target_cov(z, z) + self.gp.noise_matrix(z, target=True)
            a = self.K_inv @ k12
            S_inv = torch.cholesky_inverse(torch.linalg.cholesky(k22 - k12.T @ a))
            aS = a @ S_inv
            # One (n + m)^2 write: the old inverse plus a rank-m term, and the new border.
            K_inv = torch.empty((n + m, n + m), dtype=self.K_inv.dtype)
            K_inv[:n, :n].copy_(self.K_inv).addmm_(aS, a.T)
            K_inv[:n, n:] = -aS
            K_inv[n:, :n] = -aS.T
            K_inv[n:, n:] = S_inv
            Z = torch.cat([self.Z, z])
            y = y.to(self.y.dtype)
            y_all = torch.cat([self.y, y])
            resid = y - (self.gp.point_mean(z) + k12.T @ self.alpha)
            # alpha = K'^-1 (y' - mean) by the same block formula, O(n m).
            alpha = torch.cat([self.alpha - aS @ resid, S_inv @ resid])
            block = _Block(self.uid, z, a, S_inv, resid)
        return Posterior(self.gp, Z, y_all, alpha, K_inv, (self.lineage + (block,))[-_LINEAGE:], self.n_ctx, self.tau2)

    def query(self, z: torch.Tensor, target: torch.Tensor | None = None) -> QueryState:
        """Predictions at ``z`` from scratch, ``O(q n^2)``.

        ``target``: 1.0 for rows of the target task that share its effect (default: every row).
        """
        t = torch.ones(z.shape[0], dtype=z.dtype) if target is None else target.to(z.dtype)
        with torch.no_grad():
            k = self._cross(z, t)
            mean = self.gp.point_mean(z) + k @ self.alpha
            var = self.gp.outputscale + self.tau2 * t - ((k @ self.K_inv) * k).sum(-1) + self.gp.point_noise(z)
        return QueryState.of(self.uid, z, k, mean, var, t)

    def latent(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and joint covariance of the noise-free function at target rows ``z``.

        What :mod:`.residual` needs to weigh held-out tasks' rows jointly (``query`` gives only the
        diagonal).
        """
        with torch.no_grad():
            k = self._cross(z, torch.ones(z.shape[0], dtype=z.dtype))
            mean = self.gp.point_mean(z) + k @ self.alpha
            cov = self.gp.covariance(z, z) + self.target_cov(z, z) - k @ self.K_inv @ k.T
        return mean, cov

    def _cross(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``k'(z, Z)``: the kernel, plus what target queries (``t`` = 1) share with the study's rows."""
        k = self.gp.covariance(z, self.Z)
        k[:, self.n_ctx:] += t[:, None] * self.target_cov(z, self.Z[self.n_ctx:])
        return k

    def advance(self, state: QueryState) -> QueryState | None:
        """``state`` brought up to this posterior, or None when it is not an ancestor's (recompute then)."""
        if state.uid == self.uid:
            return state
        start = next((i for i, b in enumerate(self.lineage) if b.parent == state.uid), None)
        if start is None:
            return None
        cols, n, mean, var = state.cols, state.n, state.mean, state.var
        with torch.no_grad():
            for b in self.lineage[start:]:
                k2 = self.gp.covariance(state.z, b.z) + state.target[:, None] * self.target_cov(state.z, b.z)
                kt = k2 - cols.data[:, :n] @ b.a
                B = kt @ b.S_inv
                mean = mean + B @ b.resid
                var = var - (B * kt).sum(-1)
                cols, n = cols.appended(n, k2), n + k2.shape[1]
        return QueryState(self.uid, state.z, cols, n, mean, var, state.target)

    def predict(self, z: torch.Tensor, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance of noisy observations at ``z``."""
        q = self.query(z, target)
        return q.mean, q.var.clamp_min(1e-9)
