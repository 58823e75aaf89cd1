"""Conversions between what a network predicts and the score: exact inverses, Tweedie."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minidiff import datasets, targets

pytestmark = pytest.mark.ch5

positive = st.floats(min_value=1e-2, max_value=1e2)
derivative = st.floats(min_value=-10.0, max_value=10.0)


@settings(max_examples=200, deadline=None)
@given(alpha=positive, sigma=positive, dalpha=derivative, dsigma=derivative,
       seed=st.integers(0, 2**32 - 1))
def test_every_conversion_round_trips(alpha, sigma, dalpha, dsigma, seed):
    # Where alpha * dsigma - sigma * dalpha vanishes the velocity does not determine eps
    # (targets.eps_from_velocity raises there; tested below); keep to well-posed paths.
    assume(abs(alpha * dsigma - sigma * dalpha) > 1e-2 * (alpha + sigma))
    rng = np.random.default_rng(seed)
    x0, eps = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    xt = alpha * x0 + sigma * eps
    kw = {"dalpha": dalpha, "dsigma": dsigma}
    # The true quantities of this (x0, eps) pair, each by its own definition.
    truth = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0,
             "velocity": dalpha * x0 + dsigma * eps, "score": -eps / sigma}
    for source in targets.KINDS:
        for target in targets.KINDS:
            got = targets.convert(truth[source], source, target, xt, alpha, sigma, **kw)
            scale = 1 + np.abs(truth[target]).max()
            np.testing.assert_allclose(got, truth[target], rtol=1e-9, atol=1e-9 * scale,
                                       err_msg=f"{source} -> {target}")


@given(alpha=positive, sigma=positive, seed=st.integers(0, 2**32 - 1))
def test_pairwise_functions_are_inverses(alpha, sigma, seed):
    rng = np.random.default_rng(seed)
    xt, eps = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    pairs = [(targets.x0_from_eps, targets.eps_from_x0), (targets.v_from_eps, targets.eps_from_v)]
    for forward, backward in pairs:
        np.testing.assert_allclose(backward(forward(eps, xt, alpha, sigma), xt, alpha, sigma), eps,
                                   rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(targets.eps_from_score(targets.score_from_eps(eps, sigma), sigma),
                               eps, rtol=1e-12)


def test_per_sample_coefficients_broadcast(rng):
    alpha, sigma = rng.uniform(0.1, 1, 6), rng.uniform(0.1, 1, 6)
    x0, eps = rng.normal(size=(6, 1, 4, 4)), rng.normal(size=(6, 1, 4, 4))  # images
    xt = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
    np.testing.assert_allclose(targets.x0_from_eps(eps, xt, alpha, sigma), x0, atol=1e-12)


@pytest.mark.exercise("2.4")
def test_tweedie_with_the_exact_score_is_the_closed_form_posterior_mean(rng):
    # E[x0 | x_t] = (x_t + sigma² grad log p_t(x_t)) / alpha, to float64 precision.
    gm = datasets.gmm8()
    for alpha, sigma in [(1.0, 0.3), (0.8, 0.6), (0.2, 0.98)]:
        xt = gm.noised(alpha, sigma).sample(500, rng)
        score = gm.noised(alpha, sigma).score(xt)
        np.testing.assert_allclose(targets.x0_from_score(score, xt, alpha, sigma),
                                   gm.posterior_mean(xt, alpha, sigma), rtol=1e-10, atol=1e-12)
        # ... and E[eps | x_t] = -sigma * score is the same statement for the noise.
        eps_mean = (xt - alpha * gm.posterior_mean(xt, alpha, sigma)) / sigma
        np.testing.assert_allclose(targets.eps_from_score(score, sigma), eps_mean, atol=1e-10)


def test_score_from_eps_of_the_conditional_noise_is_the_kernel_score(rng):
    # For x~ = x0 + sigma eps, grad_x~ log N(x~; x0, sigma² I) = -(x~ - x0)/sigma² = -eps/sigma.
    x0, eps, sigma = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), rng.uniform(0.1, 2, 5)
    x_noisy = x0 + sigma[:, None] * eps
    kernel = datasets.GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2)])  # unit Gaussian
    by_kernel = kernel.score((x_noisy - x0) / sigma[:, None]) / sigma[:, None]
    np.testing.assert_allclose(targets.score_from_eps(eps, sigma), by_kernel, rtol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`sigma` must be positive"):
        targets.score_from_eps(np.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match=r"`sigma` must be a scalar or have shape \(2,\)"):
        targets.score_from_eps(np.ones((2, 2)), np.ones(3))
    with pytest.raises(ValueError, match="unknown prediction kind 'noise'"):
        targets.convert(np.ones((2, 2)), "noise", "eps", np.ones((2, 2)), 1.0, 1.0)
    with pytest.raises(ValueError, match="needs the path's derivatives"):
        targets.convert(np.ones((2, 2)), "eps", "velocity", np.ones((2, 2)), 1.0, 1.0)
    with pytest.raises(ValueError, match="does not determine the noise"):
        targets.eps_from_velocity(np.ones((2, 2)), np.ones((2, 2)), 1.0, 1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- chapter 5

def test_targets_are_the_definitions(rng):
    x0, eps, a, s = rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), 0.6, 0.8
    np.testing.assert_allclose(targets.target("v", x0, eps, a, s), a * eps - s * x0)
    np.testing.assert_allclose(targets.target("velocity", x0, eps, a, s, -1.0, 1.0), eps - x0)
    np.testing.assert_allclose(targets.target("score", x0, eps, a, s), -eps / s)


@pytest.mark.parametrize("vp", [True, False])
def test_min_snr_frames(vp, rng):
    # One network output per point, read as eps, x0 and v: an eps loss with constant weight is
    # an x0 loss weighted by SNR; an x0 loss with constant weight is an eps loss weighted by
    # 1/SNR; on a VP path a v loss is an x0 loss weighted by SNR + 1 (Salimans & Ho 2022,
    # sec. 4; notebook 05 says the same words); the Min-SNR-weighted losses coincide.
    n = 64
    t = rng.uniform(0.02, 0.98, n)
    alpha = np.cos(t * np.pi / 2) if vp else 1.0 - t
    sigma = np.sin(t * np.pi / 2) if vp else t
    x0, eps = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    xt = alpha[:, None] * x0 + sigma[:, None] * eps
    eps_hat = rng.normal(size=(n, 3))  # a random "model"
    loss = {k: targets.squared_error(targets.from_eps(k, eps_hat, xt, alpha, sigma),
                                     targets.target(k, x0, eps, alpha, sigma))
            for k in ("x0", "eps", "v")}
    snr = (alpha / sigma) ** 2
    np.testing.assert_allclose(loss["eps"], snr * loss["x0"], rtol=1e-9)
    np.testing.assert_allclose(loss["x0"], loss["eps"] / snr, rtol=1e-9)
    v_factor = snr + 1 if vp else (snr + 1) * (alpha**2 + sigma**2)
    np.testing.assert_allclose(loss["v"], v_factor * loss["x0"], rtol=1e-9)
    for k in loss:
        np.testing.assert_allclose(loss[k], targets.x0_error_factor(k, alpha, sigma) * loss["x0"],
                                   rtol=1e-9)
    # The velocity, with the path's derivatives, obeys the same kind of identity.
    da = -np.pi / 2 * np.sin(t * np.pi / 2) if vp else -np.ones(n)
    ds = np.pi / 2 * np.cos(t * np.pi / 2) if vp else np.ones(n)
    u_loss = targets.squared_error(
        targets.from_eps("velocity", eps_hat, xt, alpha, sigma, da, ds),
        targets.target("velocity", x0, eps, alpha, sigma, da, ds))
    np.testing.assert_allclose(
        u_loss, targets.x0_error_factor("velocity", alpha, sigma, da, ds) * loss["x0"], rtol=1e-9)
    weighted = {k: targets.min_snr_weight(k, alpha, sigma, gamma=5.0) * loss[k] for k in loss}
    np.testing.assert_allclose(weighted["eps"], weighted["x0"], rtol=1e-9)
    np.testing.assert_allclose(weighted["v"], weighted["x0"], rtol=1e-9)
    np.testing.assert_allclose(weighted["x0"], np.minimum(snr, 5.0) * loss["x0"], rtol=1e-12)


@pytest.mark.exercise("5.1")
def test_edm_effective_target_has_unit_variance_at_every_sigma(rng):
    # Karras et al. 2022, eq. (8): for data of std sigma_data the target of F has unit variance.
    # Data: a two-point distribution ±sigma_data (only its variance matters). 200,000 draws per
    # sigma; the sample variance of unit-variance data has standard error ≈ sqrt(2/n) = 0.0032
    # (a little more for the non-Gaussian part), so 5 standard errors is 0.016.
    sd, n = 0.5, 200_000
    for sigma in [0.002, 0.05, 0.5, 2.0, 80.0]:
        x0 = sd * rng.choice([-1.0, 1.0], size=(n, 1))
        eff = targets.edm_effective_target(x0, rng.standard_normal((n, 1)), sigma, sd)
        assert abs(eff.var() - 1.0) < 0.016, sigma


@pytest.mark.exercise("5.1")
def test_edm_weight_is_one_over_c_out_squared_and_losses_agree(rng):
    sigma = np.exp(rng.normal(-1.2, 1.2, 8))
    _, c_out, _, _ = targets.edm_precond(sigma)
    np.testing.assert_allclose(targets.edm_loss_weight(sigma), 1 / c_out**2, rtol=1e-12)
    # lambda |D - x0|² equals |F - effective target|² for any network output F.
    net = lambda p, x, c: np.tanh(x * p + c[:, None])
    D = targets.edm_denoiser(net)
    x0, eps = rng.normal(size=(8, 2)) * 0.5, rng.normal(size=(8, 2))
    x = x0 + sigma[:, None] * eps
    lhs = targets.edm_loss_weight(sigma) * targets.squared_error(D(1.3, x, sigma), x0)
    c_skip, c_out, c_in, c_noise = targets.edm_precond(sigma)
    rhs = targets.squared_error(net(1.3, c_in[:, None] * x, c_noise),
                                targets.edm_effective_target(x0, eps, sigma))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


@pytest.mark.exercise("5.1")
def test_edm_preconditioning_limits():
    c_skip, c_out, c_in, c_noise = targets.edm_precond(np.array([1e-6, 1e6]), 0.5)
    np.testing.assert_allclose(c_skip, [1.0, 0.0], atol=1e-10)  # small noise: D(x) ≈ x
    np.testing.assert_allclose(c_out, [1e-6, 0.5], rtol=1e-6)  # large noise: D ≈ sd F
    np.testing.assert_allclose(c_in * np.sqrt(np.array([1e-12, 1e12]) + 0.25), 1.0)
    np.testing.assert_allclose(c_noise, np.log([1e-6, 1e6]) / 4)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
def test_prediction_loss_is_the_weighted_regression(kind, rng):
    import autograd

    from minidiff import nn, process
    from minidiff.models import mlp

    batch = process.path_batches(process.VP(), rng.normal(size=(100, 2)), 16)(rng)
    params = mlp.init(rng, hidden=8, depth=1, emb_dim=4)
    net = lambda p, x, t: mlp.apply(p, x, 1000.0 * t)
    for weighting in (None, "min_snr"):
        loss = targets.prediction_loss(net, kind, weighting)
        truth = targets.target(kind, batch["x0"], batch["eps"], batch["alpha"], batch["sigma"],
                               batch["dalpha"], batch["dsigma"])
        w = 1.0 if weighting is None else targets.min_snr_weight(
            kind, batch["alpha"], batch["sigma"], 5.0, batch["dalpha"], batch["dsigma"])
        ref = np.mean(w * np.sum((net(params, batch["xt"], batch["t"]) - truth) ** 2, axis=1))
        np.testing.assert_allclose(loss(params, batch), ref, rtol=1e-5)
        grads = autograd.grad(loss)(params, batch)
        assert {g.dtype for g in nn.tree_leaves(grads)} == {np.dtype(np.float32)}


@pytest.mark.exercise("5.1")
def test_edm_loss_is_the_weighted_denoising_error(rng):
    net = lambda p, x, c: np.tanh(x * p + c[:, None])
    batch = targets.edm_batches(rng.normal(size=(50, 2)), 8, dtype=np.float64)(rng)
    x = batch["x0"] + batch["sigma"][:, None] * batch["eps"]
    D = targets.edm_denoiser(net, 0.5)(0.7, x, batch["sigma"])
    ref = np.mean(targets.edm_loss_weight(batch["sigma"]) * np.sum((D - batch["x0"]) ** 2, 1))
    np.testing.assert_allclose(targets.edm_loss(net, 0.5)(0.7, batch), ref, rtol=1e-10)


def test_edm_training_levels_have_p_mean_and_p_std():
    # Karras et al. 2022, table 1: ln sigma ~ N(P_mean, P_std²). With 100,000 draws the sample
    # mean and std of ln sigma have standard errors P_std / 316 and P_std / 447; the tolerance is
    # five of them.
    n, p_mean, p_std = 100_000, -1.2, 1.2
    log_s = np.log(targets.edm_sigmas(n, np.random.default_rng(3), p_mean, p_std))
    assert log_s.mean() == pytest.approx(p_mean, abs=5 * p_std / np.sqrt(n))
    assert log_s.std() == pytest.approx(p_std, abs=5 * p_std / np.sqrt(2 * n))
    log_s = np.log(targets.edm_sigmas(n, np.random.default_rng(3), 0.4, 0.5))
    assert log_s.std() == pytest.approx(0.5, abs=5 * 0.5 / np.sqrt(2 * n))


@pytest.mark.parametrize("data_var", [1.0, 0.25])
def test_v_target_variance_is_alpha2_plus_sigma2_times_the_data_variance(data_var):
    # v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4), eps independent of x0, so
    # Var[v] = alpha² + sigma² Var[x0]: exactly 1 at every t on a VP path for unit-variance data,
    # and between Var[x0] and 1 otherwise (MNIST's pixels in [-1, 1] have a per-pixel variance of
    # 0.27 on average, so Var[v] falls from 1 to 0.27 along the path; notebook 05 prints it).
    # Checked by sampling: 200,000 values per level, relative standard error of a variance
    # sqrt(2 / n) = 0.3%, tolerance 5 of them.
    from minidiff import ddpm

    n, rng = 200_000, np.random.default_rng(0)
    path = ddpm.schedule("linear").path
    for i in (0, 250, 500, 999):
        a, s = float(path.alpha(i)), float(path.sigma(i))
        x0 = rng.normal(0, np.sqrt(data_var), n)
        v = targets.target("v", x0, rng.standard_normal(n), a, s)
        assert v.var() == pytest.approx(a * a + s * s * data_var, rel=5 * np.sqrt(2 / n))
        if data_var == 1.0:
            assert a * a + s * s == pytest.approx(1.0, abs=1e-12)
