"""The two learned networks: the deep kernel's feature extractor and the log-cost regressor.

Quick-Tune's deep kernel joins separate encoders of the configuration, the learning-curve prefix
and the dataset meta-features with the target budget; the GP then works on the joint embedding.
The cost network sees what determines the price of one more step (configuration, dataset, budget)
but not the curve, since how well a run learns does not change how long a step takes.
"""

from __future__ import annotations

import torch
from torch import nn

from optuna_quicktune.surrogate.preprocessing import Batch

__all__ = ["FeatureExtractor", "CostNet"]


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class FeatureExtractor(nn.Module):
    def __init__(self, dim_x: int, max_fidelity: int, dim_mf: int, hidden: int = 64, embedding: int = 16) -> None:
        super().__init__()
        self.dim_mf = dim_mf
        self.config = _mlp(dim_x, hidden, hidden // 2)
        self.curve = _mlp(2 * max_fidelity + 2, hidden, hidden // 2)
        mf_out = hidden // 4 if dim_mf else 0
        self.mf = _mlp(dim_mf, hidden // 2, mf_out) if dim_mf else None
        joint_in = hidden // 2 + hidden // 2 + mf_out + 1
        self.joint = nn.Sequential(
            nn.Linear(joint_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embedding)
        )

    def forward(self, b: Batch) -> torch.Tensor:
        parts = [self.config(b.x), self.curve(b.curve), b.budget]
        if self.mf is not None:
            parts.append(self.mf(b.mf))
        return self.joint(torch.cat(parts, dim=-1))


class CostNet(nn.Module):
    def __init__(self, dim_x: int, dim_mf: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_x + dim_mf + 1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, b: Batch) -> torch.Tensor:
        """Normalised log-cost of the step that reaches ``b.budget``."""
        return self.net(torch.cat([b.x, b.mf, b.budget], dim=-1)).squeeze(-1)
