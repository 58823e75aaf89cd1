"""Conversions between what a network predicts and the score: exact inverses, Tweedie."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import datasets, targets

positive = st.floats(min_value=1e-2, max_value=1e2)
derivative = st.floats(min_value=-10.0, max_value=10.0)


@settings(max_examples=200, deadline=None)
@given(alpha=positive, sigma=positive, dalpha=derivative, dsigma=derivative,
       seed=st.integers(0, 2**32 - 1))
def test_every_conversion_round_trips(alpha, sigma, dalpha, dsigma, seed):
    det = alpha * dsigma - sigma * dalpha
    if abs(det) < 1e-2 * (alpha + sigma):  # the velocity does not determine eps there
        dsigma += 1.0
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
