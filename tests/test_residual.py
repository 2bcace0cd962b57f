"""Residual correlation on the target task: a study's runs inform the configurations near them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optuna_quicktune.decision import local_candidates
from optuna_quicktune.surrogate.gp import ExactGP

LEAD = 3  # raw-input columns in these tests


def _points(n: int, seed: int) -> torch.Tensor:
    """Embeddings [raw inputs (3) | features (3) | noise offset (1)]."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, LEAD + 4, dtype=torch.float64, generator=g)
    Z[:, :LEAD] = torch.rand(n, LEAD, dtype=torch.float64, generator=g)
    Z[:, -1] = torch.linspace(-2.0, 1.0, n, dtype=torch.float64)
    return Z


def test_residual_conditioning_is_an_exact_gp_and_follows_extensions():
    gp = ExactGP("rbf", hetero=True)
    share, inv = 0.8, torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    gp.set_residual(share, inv)
    g = torch.Generator().manual_seed(9)
    ctx, study, q = _points(25, 0), _points(6, 1), _points(10, 2)
    y_ctx, y_study = torch.randn(25, dtype=torch.float64, generator=g), torch.randn(6, dtype=torch.float64, generator=g)
    t = torch.tensor([1.0, 0.0] * 5, dtype=torch.float64)  # fresh target queries and queries with a curve
    post = gp.condition(ctx, y_ctx)
    early = post.query(q, t)
    post = post.extended(study[:2], y_study[:2]).extended(study[2:], y_study[2:])
    got = post.advance(early)
    with torch.no_grad():
        def noise(Z: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.softplus(gp.raw_noise + Z[:, -1]) + 1e-4

        def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # RBF on the features only
            d = torch.cdist(a[:, LEAD:-1] / gp.lengthscale, b[:, LEAD:-1] / gp.lengthscale)
            return gp.outputscale * torch.exp(-0.5 * d**2)

        def r(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the residual kernel on the raw inputs
            d = torch.cdist(a[:, :LEAD] * inv, b[:, :LEAD] * inv)
            return share * torch.sqrt(noise(a)[:, None] * noise(b)[None, :]) * torch.exp(-0.5 * d**2)

        Z, y = torch.cat([ctx, study]), torch.cat([y_ctx, y_study])
        K = k(Z, Z)
        K[25:, 25:] += r(study, study)
        K += torch.diag(torch.cat([noise(ctx), (1 - share) * noise(study)]) + 1e-5)
        kq = k(q, Z)
        kq[:, 25:] += t[:, None] * r(q, study)
        mean = gp.mean + kq @ torch.linalg.solve(K, y - gp.mean)
        var = gp.outputscale + noise(q) - (kq @ torch.linalg.solve(K, kq.T)).diagonal()
    assert got is not None
    for state in (got, post.query(q, t)):
        np.testing.assert_allclose(state.mean.numpy(), mean.numpy(), atol=1e-8)
        np.testing.assert_allclose(state.var.numpy(), var.numpy(), atol=1e-8)


def test_the_residual_keeps_every_prior_variance_and_the_share_zero_model():
    ctx, q = _points(20, 3), _points(8, 4)
    y = torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    on, off = ExactGP(hetero=True), ExactGP(hetero=True)
    on.set_residual(0.9, [1.0, 1.0, 1.0])
    # Before a study row is added the residual has nothing to share: the predictions are the same
    # (the raw inputs lead the embedding and are not kernel features).
    a, b = on.condition(ctx, y).query(q), off.condition(ctx[:, LEAD:], y).query(q[:, LEAD:])
    np.testing.assert_allclose(a.mean.numpy(), b.mean.numpy(), atol=1e-10)
    np.testing.assert_allclose(a.var.numpy(), b.var.numpy(), atol=1e-10)
    with pytest.raises(ValueError, match="share must be in"):
        on.set_residual(1.0, [1.0, 1.0, 1.0])


def test_meta_train_estimates_it_and_a_studys_runs_then_predict_their_neighbours_better(train_md, family, tmp_path):
    from optuna_quicktune.surrogate import load, meta_train

    from tests.conftest import HELD_OUT

    # The mechanism on the model it was designed with (scores normalised over all tasks). Under
    # per-task targets (the default since stop 27) the same check on this family found the
    # neighbours no better predicted with it (median error 0.091 against 0.086, the scale estimated
    # from the six runs as the sampler does); docs/benchmarks.md, stop 27.
    sur = meta_train(train_md, steps=150, seed=0, targets="global")
    fit = sur.info["validation"]["residual"]
    assert fit["share"] > 0 and fit["loglik_gain_per_row"] > 0
    task, space, F = family.tasks[HELD_OUT], sur.space, sur.max_fidelity
    kw = dict(fidelity_max=F, metafeatures=task.metafeatures)
    seen = space.sample(6, 5)
    near = local_candidates(space, seen, 40, 0.1, [0])
    truth = np.array([task.final_score(c) for c in near])
    X, Xn = space.encode_many(seen), space.encode_many(near)
    y = np.array([task.final_score(c) for c in seen])

    def error(s):  # median error on the neighbours once the study has finished the six runs
        mean, _ = s.conditioned_on(X, [F] * len(seen), y, **kw).predict(Xn, None, F, **kw)
        return float(np.median(np.abs(mean - truth)))

    with_residual = error(sur)
    sur.save(tmp_path / "s")
    assert error(load(tmp_path / "s")) == pytest.approx(with_residual, abs=1e-9)
    # The same weights without it: what a surrogate saved before the residual model predicts.
    cfg = json.loads((tmp_path / "s" / "surrogate.json").read_text())
    del cfg["performance"]["residual"]
    (tmp_path / "s" / "surrogate.json").write_text(json.dumps(cfg))
    old = load(tmp_path / "s")
    assert old.performance.gp.resid_share == 0.0
    assert with_residual < error(old)


def test_meta_train_without_the_residual(train_md):
    from optuna_quicktune.surrogate import meta_train

    sur = meta_train(train_md, steps=20, seed=0, residual=False)
    assert sur.performance.gp.resid_share == 0.0 and "residual" not in sur.info["validation"]
