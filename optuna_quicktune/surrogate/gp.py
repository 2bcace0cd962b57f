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

The kernel is ``outputscale * r(||z - z'|| / lengthscale)`` with ``r`` the RBF or the Matérn 5/2
correlation. Hyper-parameters are stored as unconstrained raw values and mapped through softplus
so that gradient steps can never make them non-positive.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ExactGP", "KERNELS"]

KERNELS = ("rbf", "matern52")
_JITTER = 1e-5


class ExactGP(nn.Module):
    """Constant mean, scaled RBF/Matérn 5/2 kernel and Gaussian noise."""

    def __init__(self, kernel: str = "rbf") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, not {kernel!r}.")
        self.kernel = kernel
        self.mean = nn.Parameter(torch.zeros(()))
        self.raw_outputscale = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus -> 1
        self.raw_lengthscale = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.raw_noise = nn.Parameter(torch.tensor(-2.0))  # softplus -> ~0.13

    @property
    def outputscale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_outputscale) + 1e-4

    @property
    def lengthscale(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_lengthscale) + 1e-4

    @property
    def noise(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_noise) + 1e-4

    def covariance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(a / self.lengthscale, b / self.lengthscale).pow(2)
        if self.kernel == "rbf":
            corr = torch.exp(-0.5 * sq)
        else:
            d = torch.sqrt(sq.clamp_min(1e-12)) * math.sqrt(5.0)
            corr = (1.0 + d + d.pow(2) / 3.0) * torch.exp(-d)
        return self.outputscale * corr

    def _chol(self, Z: torch.Tensor) -> torch.Tensor:
        K = self.covariance(Z, Z)
        K = K + (self.noise + _JITTER) * torch.eye(Z.shape[0], dtype=Z.dtype)
        return torch.linalg.cholesky(K)

    def marginal_log_likelihood(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | Z) per point (so that losses of different batch sizes compare)."""
        L = self._chol(Z)
        r = (y - self.mean).unsqueeze(-1)
        a = torch.cholesky_solve(r, L)
        n = y.shape[0]
        mll = -0.5 * (r * a).sum() - torch.log(torch.diagonal(L)).sum() - 0.5 * n * math.log(2 * math.pi)
        return mll / n

    def condition(self, Z: torch.Tensor, y: torch.Tensor) -> "Posterior":
        with torch.no_grad():
            L = self._chol(Z)
            alpha = torch.cholesky_solve((y - self.mean).unsqueeze(-1), L).squeeze(-1)
            eye = torch.eye(Z.shape[0], dtype=Z.dtype)
            K_inv = torch.cholesky_solve(eye, L)
        return Posterior(self, Z, y, alpha, K_inv)


class Posterior:
    """The GP conditioned on a fixed context; cheap to query many times."""

    def __init__(self, gp: ExactGP, Z: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, K_inv: torch.Tensor) -> None:
        self.gp, self.Z, self.y, self.alpha, self.K_inv = gp, Z, y, alpha, K_inv

    def extended(self, z: torch.Tensor, y: torch.Tensor) -> "Posterior":
        """The posterior after also observing ``y`` at ``z``, without refactorising the context.

        Block inverse through the Schur complement ``S = K22 + noise - K21 K11^-1 K12``: a new
        ``(n + m)`` inverse for ``O(n^2 m)`` instead of ``O((n + m)^3)``, so conditioning a study's
        runs on a large meta-training context stays cheap (the context is never copied by callers).
        """
        with torch.no_grad():
            k12 = self.gp.covariance(self.Z, z)
            k22 = self.gp.covariance(z, z) + (self.gp.noise + _JITTER) * torch.eye(z.shape[0], dtype=z.dtype)
            a = self.K_inv @ k12
            S = k22 - k12.T @ a
            S_inv = torch.cholesky_inverse(torch.linalg.cholesky(S))
            top_left = self.K_inv + a @ S_inv @ a.T
            top_right = -a @ S_inv
            K_inv = torch.cat([torch.cat([top_left, top_right], 1), torch.cat([top_right.T, S_inv], 1)], 0)
            Z = torch.cat([self.Z, z])
            y_all = torch.cat([self.y, y.to(self.y.dtype)])
            alpha = K_inv @ (y_all - self.gp.mean)
        return Posterior(self.gp, Z, y_all, alpha, K_inv)

    def predict(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance of noisy observations at ``z``."""
        k = self.gp.covariance(z, self.Z)
        mean = self.gp.mean + k @ self.alpha
        var = self.gp.outputscale - ((k @ self.K_inv) * k).sum(-1) + self.gp.noise
        return mean, var.clamp_min(1e-9)
