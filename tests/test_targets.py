"""Conversions between network outputs and the score (chapter 2 grows this module)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import datasets, targets

sigmas = st.floats(min_value=1e-3, max_value=1e3)


@given(sigma=sigmas, seed=st.integers(0, 2**32 - 1))
def test_score_and_eps_round_trip(sigma, seed):
    eps = np.random.default_rng(seed).normal(size=(4, 3))
    back = targets.eps_from_score(targets.score_from_eps(eps, sigma), sigma)
    np.testing.assert_allclose(back, eps, rtol=1e-12)


def test_score_from_eps_of_the_conditional_noise_is_the_kernel_score(rng):
    # For x~ = x0 + sigma eps, grad_x~ log N(x~; x0, sigma² I) = -(x~ - x0)/sigma² = -eps/sigma.
    x0, eps, sigma = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), rng.uniform(0.1, 2, 5)
    x_noisy = x0 + sigma[:, None] * eps
    kernel = datasets.GaussianMixture([1.0], [[0.0, 0.0]], [np.eye(2)])  # unit Gaussian
    by_kernel = kernel.score((x_noisy - x0) / sigma[:, None]) / sigma[:, None]
    np.testing.assert_allclose(targets.score_from_eps(eps, sigma), by_kernel, rtol=1e-12)


def test_per_sample_coefficients_are_checked():
    with pytest.raises(ValueError, match="`sigma` must be positive"):
        targets.score_from_eps(np.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match=r"`sigma` must be a scalar or have shape \(2,\)"):
        targets.score_from_eps(np.ones((2, 2)), np.ones(3))
