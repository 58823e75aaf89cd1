"""Chapter 7's home: classifier-free guidance as the samplers use it."""

import numpy as np
import pytest
from conftest import TINY_UNET as TINY  # the tiny U-Net and its `tiny_params` fixture

from minidiff import guidance, images
from minidiff.models import unet

pytestmark = pytest.mark.ch7


def test_guidance_combines_conditional_and_unconditional(tiny_params, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)(x, 40)
    uncond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=0.0)(x, 40)
    guided = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5)(x, 40)
    np.testing.assert_allclose(uncond, unet.apply(tiny_params, x, 40.0, np.full(3, 10), TINY),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_a_guidance_interval_guides_inside_it_and_conditions_outside(tiny_params, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)
    full = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5)
    banded = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5, interval=(30, 60))
    for i, inside in [(29, False), (30, True), (59, True), (60, False)]:  # lo <= i < hi
        assert np.array_equal(banded(x, i), (full if inside else cond)(x, i))
    assert not np.allclose(full(x, 30), cond(x, 30))  # the two differ, so the check has teeth
    # Sampling with an interval covering every step is plain guided sampling; an empty one is w = 1.
    labels, kw = np.arange(4), dict(steps=3, guidance=2.5)
    run = lambda **k: images.sample(unet.apply, tiny_params, TINY, labels,  # noqa: E731
                                      np.random.default_rng(0), **kw, **k)
    assert np.array_equal(run(guidance_interval=(0, 1000)), run())
    assert np.array_equal(run(guidance_interval=(500, 500)),
                          images.sample(unet.apply, tiny_params, TINY, labels,
                                          np.random.default_rng(0), steps=3, guidance=1.0))
    for bad in [(60, 30), (1, 2, 3), (-1, 5), (0.5, 2)]:
        with pytest.raises(ValueError, match="guidance interval must be two step indices"):
            run(guidance_interval=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", None, True])
def test_a_guidance_scale_that_is_not_a_finite_number_is_refused(bad, tiny_params):
    # `--guidance nan` used to write all-black images with exit status 0.
    with pytest.raises(ValueError, match="`guidance` must be a finite number"):
        guidance.guided_eps(unet.apply, tiny_params, TINY, np.arange(2), guidance=bad)


def test_guidance_adds_w_minus_1_times_the_implicit_classifiers_gradient():
    # Bayes for scores: grad log p_t(c | x) = grad log p_t(x | c) - grad log p_t(x), and
    # score = -eps / sigma, so eps_c - eps_u = -sigma grad log p_t(c | x) (Ho & Salimans 2022,
    # sec. 3.2). On a Gaussian mixture whose components are the classes every term is exact:
    # the class posterior's gradient comes from autograd of the log responsibilities, and the
    # guided eps of guidance.guided_eps must move by -(w - 1) sigma times it (float64).
    import autograd
    from autograd.scipy.special import logsumexp

    from minidiff import datasets, ddpm

    means = np.array([[-1.0, 0.5], [1.2, -0.3], [0.1, 1.4]])
    mix = datasets.GaussianMixture.isotropic([0.2, 0.5, 0.3], means, 0.4)
    path = ddpm.schedule("linear").path
    i = 400
    a, s = float(path.alpha(i)), float(path.sigma(i))
    noised = mix.noised(a, s)
    classes = [datasets.GaussianMixture.isotropic([1.0], means[c:c + 1], 0.4).noised(a, s)
               for c in range(3)]

    def oracle(params, x, t, y, config):  # an exact "network": eps = -sigma * score
        x = x.reshape(len(x), 2).astype(np.float64)
        per_class = np.stack([cl.score(x) for cl in classes])  # (3, N, 2)
        score = np.where((y == 3)[:, None], noised.score(x),
                         per_class[np.minimum(y, 2), np.arange(len(x))])
        return -s * score.reshape(len(x), 1, 1, 2)

    x = noised.sample(6, np.random.default_rng(0))
    labels = np.array([0, 1, 2, 0, 1, 2])

    def log_posterior(x, c):
        logp = noised.component_log_probs(x)  # (N, K): log w_k N_k(x)
        return logp[np.arange(len(x)), c] - logsumexp(logp, axis=1)

    grad_log_post = autograd.elementwise_grad(log_posterior)(x, labels)  # (N, 2)
    x4 = x.reshape(6, 1, 1, 2)
    eps_c64, eps_u64 = oracle(None, x4, i, labels, None), oracle(None, x4, i, np.full(6, 3), None)
    np.testing.assert_allclose((eps_c64 - eps_u64).reshape(6, 2), -s * grad_log_post,
                               rtol=1e-12, atol=1e-12)  # the identity, in float64
    # guided_eps computes in float32, as the image networks do: agreement to float32 rounding
    eps_u = guidance.guided_eps(oracle, None, None, labels, 0.0, null_label=3)(x4, i)
    eps_c = guidance.guided_eps(oracle, None, None, labels, 1.0, null_label=3)(x4, i)
    np.testing.assert_allclose((eps_c - eps_u).reshape(6, 2), -s * grad_log_post, atol=1e-5)
    w = 2.5
    guided = guidance.guided_eps(oracle, None, None, labels, w, null_label=3)(x4, i)
    np.testing.assert_allclose((guided - eps_u).reshape(6, 2), -w * s * grad_log_post, atol=1e-5)
