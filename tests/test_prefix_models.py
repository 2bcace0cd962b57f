"""Per-point observation noise: a run's own long curve narrows its prediction, a fresh start does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optuna_quicktune.surrogate.gp import ExactGP


def _hetero_points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, 4, dtype=torch.float64, generator=g)
    Z[:, -1] = torch.linspace(-3.0, 2.0, n, dtype=torch.float64)  # noise offsets from small to large
    return Z, torch.randn(n, dtype=torch.float64, generator=g)


def test_heteroscedastic_conditioning_is_exact_and_follows_extensions():
    gp = ExactGP("matern52", hetero=True)
    Z, y = _hetero_points(30, 0)
    zs, ys = _hetero_points(5, 1)
    q, _ = _hetero_points(12, 2)
    post = gp.condition(Z, y)
    early = post.query(q)
    post = post.extended(zs[:2], ys[:2]).extended(zs[2:], ys[2:])
    got = post.advance(early)
    with torch.no_grad():  # one exact GP with diagonal noise softplus(raw + h_i); h is not a kernel input
        Za, ya = torch.cat([Z, zs]), torch.cat([y, ys])
        feats, qf = Za[:, :-1], q[:, :-1]
        noise = torch.nn.functional.softplus(gp.raw_noise + Za[:, -1]) + 1e-4

        def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # Matérn 5/2 on the features only
            d = torch.cdist(a / gp.lengthscale, b / gp.lengthscale) * np.sqrt(5.0)
            return gp.outputscale * (1 + d + d**2 / 3) * torch.exp(-d)

        K = k(feats, feats) + torch.diag(noise + 1e-5)
        kq = k(qf, feats)
        mean = gp.mean + kq @ torch.linalg.solve(K, ya - gp.mean)
        qnoise = torch.nn.functional.softplus(gp.raw_noise + q[:, -1]) + 1e-4
        var = gp.outputscale - (kq @ torch.linalg.solve(K, kq.T)).diagonal() + qnoise
    assert got is not None
    np.testing.assert_allclose(got.mean.numpy(), mean.numpy(), atol=1e-8)
    np.testing.assert_allclose(got.var.numpy(), var.numpy(), atol=1e-8)
    np.testing.assert_allclose(post.query(q).var.numpy(), var.numpy(), atol=1e-8)
    # A query's own noise offset changes its predictive variance, not the kernel.
    q2 = q.clone()
    q2[:, -1] -= 5.0
    assert bool((post.query(q2).var < post.query(q).var).all())
    np.testing.assert_allclose(post.query(q2).mean.numpy(), post.query(q).mean.numpy(), atol=1e-10)


def test_a_zero_noise_offset_is_the_constant_noise_gp():
    Z, y = _hetero_points(20, 3)
    q, _ = _hetero_points(7, 4)
    Z[:, -1], q[:, -1] = 0.0, 0.0
    const, het = ExactGP(), ExactGP(hetero=True)
    het.load_state_dict(const.state_dict())
    a = const.condition(Z[:, :-1], y).query(q[:, :-1])
    b = het.condition(Z, y).query(q)
    np.testing.assert_allclose(a.mean.numpy(), b.mean.numpy(), atol=1e-10)
    np.testing.assert_allclose(a.var.numpy(), b.var.numpy(), atol=1e-10)


def test_prefix_noise_narrows_a_long_curve_and_survives_save_and_load(train_md, family, tmp_path):
    from optuna_quicktune.surrogate import load, meta_train

    sur = meta_train(train_md, steps=150, seed=0, noise="prefix")
    assert sur.performance.hparams["noise"] == "prefix" and sur.info["hyperparameters"]["noise"] == "prefix"
    task = family.tasks[-1]
    space, F = sur.space, sur.max_fidelity
    X = space.encode_many(space.sample(8, 11))
    kw = dict(fidelity_max=F, metafeatures=task.metafeatures)
    _, fresh_sd = sur.predict(X, None, F, **kw)
    curves = [np.linspace(0.2, 0.6, F - 1) for _ in range(len(X))]
    _, long_sd = sur.predict(X, curves, F, **kw)
    assert float(np.median(long_sd)) < float(np.median(fresh_sd))
    sur.save(tmp_path / "s")
    back = load(tmp_path / "s")
    m1, s1 = sur.predict(X, curves, F, **kw)
    m2, s2 = back.predict(X, curves, F, **kw)
    np.testing.assert_allclose(m1, m2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6)


def test_unknown_noise_model_is_refused(train_md):
    from optuna_quicktune.surrogate import meta_train

    with pytest.raises(ValueError, match="noise must be one of"):
        meta_train(train_md, steps=1, noise="heteroscedastic")


def test_a_mean_offset_is_exact_conditioning_with_a_per_point_prior_mean():
    gp = ExactGP(hetero=True, mean_offset=True)
    Z, y = _hetero_points(25, 5)
    Z = torch.cat([Z[:, :-1], torch.randn(25, 1, dtype=torch.float64), Z[:, -1:]], 1)  # features, mean, noise
    q = torch.cat([torch.randn(6, 3, dtype=torch.float64), torch.linspace(-1, 1, 6, dtype=torch.float64)[:, None],
                   torch.zeros(6, 1, dtype=torch.float64)], 1)
    post = gp.condition(Z[:20], y[:20])
    early = post.query(q)
    post = post.extended(Z[20:], y[20:])
    got = post.advance(early)
    with torch.no_grad():
        K = gp.covariance(Z, Z) + torch.diag(torch.nn.functional.softplus(gp.raw_noise + Z[:, -1]) + 1e-4 + 1e-5)
        kq = gp.covariance(q, Z)  # on the features only (asserted by the test above)
        mean = gp.mean + q[:, 3] + kq @ torch.linalg.solve(K, y - gp.mean - Z[:, 3])
    assert got is not None
    np.testing.assert_allclose(got.mean.numpy(), mean.numpy(), atol=1e-8)
    np.testing.assert_allclose(post.query(q).mean.numpy(), mean.numpy(), atol=1e-8)


def test_the_last_score_mean_predicts_a_nearly_finished_run_better(full_md, train_md):
    """Held-out task: a run's final score given all but its last step, with and without the last-score mean."""
    from optuna_quicktune.surrogate import meta_train

    from tests.conftest import HELD_OUT

    arrays = full_md.arrays()
    rows = np.flatnonzero(arrays["task"] == HELD_OUT)
    Y = arrays["Y"][rows]
    F = Y.shape[1]
    errors = {}
    for mean in ("constant", "last"):
        sur = meta_train(train_md, steps=150, seed=0, noise="prefix", mean=mean)
        mf = full_md.tasks[HELD_OUT].metafeatures
        pred, _ = sur.predict(arrays["X"][rows], [y[: F - 1] for y in Y], F, fidelity_max=F, metafeatures=mf)
        errors[mean] = float(np.median(np.abs(pred - Y[:, -1])))
    assert errors["last"] < errors["constant"]
