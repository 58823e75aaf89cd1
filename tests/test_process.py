"""Gaussian paths and the mixture oracle."""

import numpy as np
import pytest

from minidiff import datasets, ddpm, process


def test_marginal_is_alpha_x0_plus_sigma_eps(rng):
    path = process.Linear()
    x0, eps, t = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), rng.uniform(size=5)
    np.testing.assert_allclose(path.marginal(x0, t, eps),
                               (1 - t)[:, None] * x0 + t[:, None] * eps)
    np.testing.assert_allclose(path.snr(0.25), (0.75 / 0.25) ** 2)


def test_discrete_vp_is_variance_preserving():
    path = ddpm.schedule("cosine").path
    i = np.arange(path.T)
    np.testing.assert_allclose(path.alpha(i) ** 2 + path.sigma(i) ** 2, 1.0, rtol=1e-14)


def test_linear_path_derivatives_match_finite_differences():
    path, t, h = process.Linear(), 0.3, 1e-6
    assert np.isclose(path.dalpha(t), (path.alpha(t + h) - path.alpha(t - h)) / (2 * h))
    assert np.isclose(path.dsigma(t), (path.sigma(t + h) - path.sigma(t - h)) / (2 * h))


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
def test_oracle_predictions_are_posterior_means(kind, rng):
    gm, path, t = datasets.gmm8(), ddpm.schedule("linear").path, np.int64(400)
    alpha, sigma = float(path.alpha(t)), float(path.sigma(t))
    xt = gm.noised(alpha, sigma).sample(300, rng)
    x0_mean = gm.posterior_mean(xt, alpha, sigma)
    eps_mean = (xt - alpha * x0_mean) / sigma
    expected = {"eps": eps_mean, "x0": x0_mean, "v": alpha * eps_mean - sigma * x0_mean,
                "score": -eps_mean / sigma}[kind]
    np.testing.assert_allclose(process.oracle(gm, path, kind)(xt, t), expected, atol=1e-10)


def test_oracle_velocity_on_the_linear_path(rng):
    gm, path, t = datasets.gmm8(), process.Linear(), 0.4
    xt = gm.noised(0.6, 0.4).sample(100, rng)
    x0_mean = gm.posterior_mean(xt, 0.6, 0.4)
    eps_mean = (xt - 0.6 * x0_mean) / 0.4
    np.testing.assert_allclose(process.oracle(gm, path, "velocity")(xt, t), eps_mean - x0_mean,
                               atol=1e-10)


def test_bad_input_is_named(rng):
    with pytest.raises(ValueError, match=r"step index must be an integer in \[0, 999\]"):
        ddpm.schedule().path.alpha(1000)
    with pytest.raises(ValueError, match=r"`t` must lie in \[0, 1\]"):
        process.Linear().sigma(1.5)
    with pytest.raises(ValueError, match="same shape"):
        process.Linear().marginal(np.zeros((3, 2)), 0.5, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="`alpha_bar` must be"):
        process.DiscreteVP(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="one scalar time"):
        process.oracle(datasets.gmm8(), process.Linear())(np.zeros((2, 2)), np.ones(2) * 0.5)
