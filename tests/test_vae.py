"""Chapter 8's autoencoder: the KL term against Monte Carlo, the reparametrised gradient, the
shapes and the objective, and the shipped model's reconstructions."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from autograd.test_util import check_grads

from minidiff import latent
from minidiff.models import vae

pytestmark = pytest.mark.ch8


@pytest.mark.exercise("8.3")
def test_kl_matches_its_closed_form_by_monte_carlo():
    # KL(q || p) = E_q[log q(z) - log p(z)]. The Monte Carlo mean over n = 400,000 draws has a
    # standard error of std(log q - log p) / sqrt(n); the test allows five of them.
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(1, 6)), rng.normal(scale=0.7, size=(1, 6))
    n = 400_000
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal((n, 6))
    log_q = -0.5 * np.sum((z - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi), axis=1)
    log_p = -0.5 * np.sum(z ** 2 + np.log(2 * np.pi), axis=1)
    diff = log_q - log_p
    exact = vae.kl_divergence(mean, logvar)[0]
    assert abs(diff.mean() - exact) < 5 * diff.std() / np.sqrt(n)
    assert vae.kl_divergence(np.zeros((2, 4, 7, 7)), np.zeros((2, 4, 7, 7))) == \
        pytest.approx([0.0, 0.0])  # q = p


@pytest.mark.exercise("8.2")
def test_reparametrised_samples_have_the_posterior_moments_and_exact_gradients():
    rng = np.random.default_rng(1)
    mean, logvar = rng.normal(size=(1, 3)), rng.normal(size=(1, 3))
    eps = rng.standard_normal((200_000, 3))
    z = vae.reparametrise(mean, logvar, eps)
    # moments: standard errors sigma / sqrt(n) and ~sigma^2 sqrt(2 / n); five of each allowed
    sigma = np.exp(0.5 * logvar[0])
    assert np.all(np.abs(z.mean(0) - mean[0]) < 5 * sigma / np.sqrt(len(eps)))
    assert np.all(np.abs(z.var(0) - sigma ** 2) < 5 * sigma ** 2 * np.sqrt(2 / len(eps)))
    # d z / d mean = 1, d z / d logvar = eps exp(logvar / 2) / 2: the gradient flows through the
    # sample, which is the point of the trick
    e = eps[:4]
    g_mean = grad(lambda m: anp.sum(vae.reparametrise(m, logvar, e)))(mean)
    g_logvar = grad(lambda lv: anp.sum(vae.reparametrise(mean, lv, e)))(logvar)
    np.testing.assert_allclose(g_mean, np.full_like(mean, 4.0))
    np.testing.assert_allclose(g_logvar[0], (e * 0.5 * sigma).sum(0))
    check_grads(lambda m, lv: vae.reparametrise(m, lv, e), modes=["rev"], order=1)(mean, logvar)


def test_the_objective_passes_check_grads_in_float64():
    rng = np.random.default_rng(2)
    params = vae.init(rng, width=8, dtype=np.float64)
    batch = {"x": np.tanh(rng.normal(size=(2, 1, 28, 28))),
             "eps": rng.standard_normal((2, 4, 7, 7))}
    check_grads(lambda p: vae.loss(p, batch, kl_weight=0.1), modes=["rev"], order=1)(params)


def test_shapes_and_bad_input():
    params = vae.init(np.random.default_rng(0), width=8)
    x = np.zeros((3, 1, 28, 28), np.float32)
    mean, logvar = vae.encode(params, x)
    assert mean.shape == logvar.shape == (3, 4, 7, 7)
    assert vae.decode(params, mean).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 1, 28, 28\)"):
        vae.encode(params, np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match=r"`z` must have shape \(N, 4, 7, 7\)"):
        vae.decode(params, np.zeros((3, 4, 8, 8)))


def test_psnr_of_a_known_error():
    # a constant error of 0.1 on a peak-to-peak range of 2: 10 log10(4 / 0.01) = 26.02 dB
    x = np.zeros((2, 1, 28, 28))
    np.testing.assert_allclose(latent.psnr(x, x + 0.1), 10 * np.log10(400.0))


def test_the_shipped_autoencoder_reconstructs_test_digits():
    # 1,000 test digits (latent means, decoded): the bar is 97% agreement; the stated
    # PSNR is 29 dB (the file records 29.95 dB on 2,000 test digits).
    from minidiff.datasets import mnist
    from minidiff.images import SHIPPED, load_classifier
    from minidiff.models import classifier

    params, _ = latent.load_vae(SHIPPED["vae"])
    x, y = (v[:1000] for v in mnist("test"))
    recon = latent.decode(params, latent.encode(params, x))
    assert latent.psnr(recon, x).mean() > 29.0
    assert np.mean(classifier.predict(load_classifier(SHIPPED["classifier"]), recon) == y) >= 0.97
