"""The two learned networks: the deep kernel's feature extractor and the log-cost regressor.

Quick-Tune's deep kernel joins separate encoders of the configuration, the learning-curve prefix
and the dataset meta-features with the target budget; the GP then works on the joint embedding.
The cost network sees what determines the price of one more step (configuration, dataset, budget)
but not the curve, since how well a run learns does not change how long a step takes.

With ``noise="prefix"`` the extractor also returns one more column: the log-offset of the point's
observation noise (see :mod:`.gp`), from how much of the run is known (prefix length, target budget
and the distance between them) only. Its last layer starts at zero, so training starts from the
constant-noise model; keeping its inputs to these few numbers makes the noise a statement about
extrapolation distance, which transfers across datasets, rather than about one dataset.
"""

from __future__ import annotations

import torch
from torch import nn

from optuna_quicktune.surrogate.preprocessing import Batch

__all__ = ["FeatureExtractor", "CostNet", "NOISE_MODELS", "MEAN_MODELS"]

#: ``"constant"``: one noise level for every point; ``"prefix"``: noise from the prefix and budget.
NOISE_MODELS = ("constant", "prefix")
#: ``"constant"``: one prior mean; ``"last"``: a run with a curve prefix starts from its last score.
MEAN_MODELS = ("constant", "last")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _neutral_mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """An MLP whose output starts at exactly zero, so a head starts at its neutral value."""
    net = _mlp(n_in, hidden, n_out)
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class NoiseHead(nn.Module):
    """Log-offset of a point's observation noise from (prefix fraction, budget fraction)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = _neutral_mlp(4, hidden, 1)

    def forward(self, b: Batch) -> torch.Tensor:
        p, s = b.curve[:, -1:], b.budget
        return self.net(torch.cat([p, s, s - p, (p == 0).to(p.dtype)], dim=-1))


class MeanHead(nn.Module):
    """Prior-mean offset of a point with a curve prefix: ``g * last + b``, 0 without a prefix.

    ``g`` and ``b`` depend on the prefix and budget fractions only and start at 1 and 0 (the
    curve stays at its last score), so meta-training learns how much curves still move.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = _neutral_mlp(3, hidden, 2)

    def forward(self, b: Batch) -> torch.Tensor:
        p, s, last = b.curve[:, -1:], b.budget, b.curve[:, -2:-1]
        gb = self.net(torch.cat([p, s, s - p], dim=-1))
        return (p > 0).to(p.dtype) * ((1.0 + gb[:, :1]) * last + gb[:, 1:])


class FeatureExtractor(nn.Module):
    def __init__(
        self, dim_x: int, max_fidelity: int, dim_mf: int, hidden: int = 64, embedding: int = 16,
        noise: str = "constant", mean: str = "constant",
    ) -> None:
        super().__init__()
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, not {noise!r}.")
        if mean not in MEAN_MODELS:
            raise ValueError(f"mean must be one of {MEAN_MODELS}, not {mean!r}.")
        self.dim_mf = dim_mf
        self.noise = NoiseHead() if noise == "prefix" else None
        self.mean = MeanHead() if mean == "last" else None
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
        out = [self.joint(torch.cat(parts, dim=-1))]  # kernel features, then the offsets the GP reads
        if self.mean is not None:
            out.append(self.mean(b))
        if self.noise is not None:
            out.append(self.noise(b))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


class CostNet(nn.Module):
    def __init__(self, dim_x: int, dim_mf: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_x + dim_mf + 1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, b: Batch) -> torch.Tensor:
        """Normalised log-cost of the step that reaches ``b.budget``."""
        return self.net(torch.cat([b.x, b.mf, b.budget], dim=-1)).squeeze(-1)
