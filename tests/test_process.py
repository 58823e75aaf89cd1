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
    path = ddpm.schedule("scaled_linear").path  # any discrete schedule
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


def test_discrete_t_from_ratio_round_trips_on_the_training_grid():
    path = ddpm.schedule("scaled_linear").path
    steps = np.arange(path.T)
    np.testing.assert_allclose(path.t_from_ratio(path.ratios), steps, rtol=0, atol=1e-9)
    # a fractional step and its ratio invert each other; at integer steps the fractional
    # formulas give the chain's own alpha and sigma
    t = np.array([0.25, 17.5, 998.9])
    np.testing.assert_allclose(path.t_from_ratio(path._fractional_ratio(t)), t, atol=1e-9)
    np.testing.assert_allclose(path.alpha(steps.astype(float)), path.alpha(steps), atol=1e-14)
    np.testing.assert_allclose(path.sigma(steps.astype(float)), path.sigma(steps), atol=1e-14)


def _diffusers_sigma_to_t(sigma, log_sigmas):
    # The rule of diffusers' EulerDiscreteScheduler._sigma_to_t, written out independently:
    # find the neighbouring training levels in log sigma, interpolate the index linearly.
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


@pytest.mark.exercise("5.2")
def test_discrete_t_from_ratio_interpolates_as_diffusers_on_a_karras_grid():
    from minidiff import samplers

    path = ddpm.schedule("linear").path
    sigmas = samplers.karras_sigmas(30, 0.002, 80.0)[:-1]  # beyond both ends of the chain's range
    expected = _diffusers_sigma_to_t(sigmas, np.log(path.ratios))
    np.testing.assert_allclose(path.t_from_ratio(sigmas), expected, rtol=0, atol=1e-9)
    assert path.t_from_ratio(500.0) == 999 and path.t_from_ratio(0.002) == 0  # clipped ends


@pytest.mark.parametrize("path", [process.VP(), process.Linear(), ddpm.schedule().path],
                         ids=["VP", "Linear", "DiscreteVP"])
def test_t_from_ratio_refuses_negative_and_nan_levels(path):
    # VP.t_from_ratio(-1) used to equal t_from_ratio(1); Linear's returned 2.0 for -2.
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="`r` .* must be"):
            path.t_from_ratio(bad)
