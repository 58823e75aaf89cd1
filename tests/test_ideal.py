"""The ideal denoiser of a finite set: the exact posterior mean, per class and mixed, and the
memorisation it implies."""

import numpy as np
import pytest

from minidiff import datasets, ddpm, dsm, images
from minidiff.models import ideal

pytestmark = pytest.mark.ch6

CFG = ideal.IdealConfig(resolution=4, num_classes=3)
SCHED = ddpm.schedule("linear")


def _data(rng, m=12):
    pics = rng.uniform(-1.0, 1.0, (m, 1, 4, 4))
    labels = np.arange(m) % 3
    return pics, labels


def _brute_force_x0(pics, labels, x, i, keep):
    """E[x0 | x_t] over the images whose label passes ``keep``, from the Gaussian densities
    written out (no expansion of the squared distance, no shared code with the module)."""
    a, s = np.sqrt(SCHED.alpha_bar[i]), np.sqrt(1 - SCHED.alpha_bar[i])
    out = []
    for xn in x.reshape(len(x), -1):
        num, den = 0.0, 0.0
        for img, lab in zip(pics.reshape(len(pics), -1), labels, strict=True):
            if keep(lab):
                dens = np.exp(-np.sum((xn - a * img) ** 2) / (2 * s * s))
                num, den = num + dens * img, den + dens
        out.append(num / den)
    return np.array(out).reshape(x.shape), den


@pytest.mark.parametrize("i", [200, 600, 999])
def test_every_label_gives_the_exact_posterior_mean_over_its_images(i, rng):
    pics, labels = _data(rng)
    params = ideal.init(pics, labels, SCHED.path, CFG)
    a, s = np.sqrt(SCHED.alpha_bar[i]), np.sqrt(1 - SCHED.alpha_bar[i])
    x = a * pics[:4] + s * rng.standard_normal((4, 1, 4, 4))
    for y, keep in [(0, lambda c: c == 0), (2, lambda c: c == 2), (3, lambda c: True)]:
        x0_hat = ideal.apply(params, x, i, np.full(4, y), CFG)
        x0, _ = _brute_force_x0(pics, labels, x, i, keep)
        np.testing.assert_allclose(x0_hat, x0, rtol=0, atol=1e-10)
        # as a noise predictor for the samplers: eps = (x_t - alpha x0) / sigma
        eps = images.eps_network(ideal.apply, "x0", SCHED)(params, x, np.full(4, i), np.full(4, y),
                                                            CFG)
        np.testing.assert_allclose(eps, (x - a * x0) / s, rtol=0, atol=1e-10)
    assert np.array_equal(ideal.apply(params, x, i, None, CFG),
                          ideal.apply(params, x, i, np.full(4, 3), CFG))  # None = null


def test_the_null_posterior_mixes_the_class_posteriors_by_p_of_class(rng):
    # Law of total expectation: E[x0 | x] = sum_c P(c | x) E[x0 | x, c], with
    # P(c | x) proportional to the summed densities of class c's images.
    pics, labels = _data(rng)
    params, i = ideal.init(pics, labels, SCHED.path, CFG), 700
    a, s = np.sqrt(SCHED.alpha_bar[i]), np.sqrt(1 - SCHED.alpha_bar[i])
    x = a * pics[5:6] + s * rng.standard_normal((1, 1, 4, 4))
    x0 = {c: ideal.apply(params, x, i, np.array([c]), CFG) for c in range(4)}
    mass = np.array([_brute_force_x0(pics, labels, x, i, lambda k, c=c: k == c)[1]
                     for c in range(3)])
    mixed = sum(mass[c] / mass.sum() * x0[c] for c in range(3))
    np.testing.assert_allclose(x0[3], mixed, rtol=0, atol=1e-10)
    assert 0.05 < mass.max() / mass.sum() < 0.95  # the classes genuinely mix at this noise


def test_the_ideal_denoiser_is_the_posterior_weights_times_the_images(rng):
    # models/ideal.py computes its weights as a softmax of its own (models depend on nn only);
    # datasets.posterior_weights is the data-level formula: the two must agree.
    pics, labels = _data(rng)
    params, i = ideal.init(pics, labels, SCHED.path, CFG), 400
    a, s = np.sqrt(SCHED.alpha_bar[i]), np.sqrt(1 - SCHED.alpha_bar[i])
    x = a * pics[:3] + s * rng.standard_normal((3, 1, 4, 4))
    w = datasets.posterior_weights(pics.reshape(12, -1), x.reshape(3, -1), a, s)  # (3, 12)
    np.testing.assert_allclose(ideal.apply(params, x, i, None, CFG).reshape(3, -1),
                               w @ pics.reshape(12, -1), rtol=0, atol=1e-12)


def test_posterior_weights_match_the_written_out_densities_and_keep_float32(rng):
    x0, xt = rng.standard_normal((7, 5)), rng.standard_normal((3, 5))
    w = dsm.posterior_weights(x0, xt, 0.8, 0.6)
    dens = np.exp(-np.sum((xt[:, None] - 0.8 * x0[None]) ** 2, axis=2) / (2 * 0.36))
    np.testing.assert_allclose(w, dens / dens.sum(1, keepdims=True), rtol=1e-12, atol=0)
    w32 = dsm.posterior_weights(x0.astype(np.float32), xt.astype(np.float32), 0.8, 0.6)
    assert w32.dtype == np.float32 and np.allclose(w32, w, atol=1e-5)
    pics, labels = _data(rng)
    params = ideal.init(pics.astype(np.float32), labels, SCHED.path, CFG)
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    assert ideal.apply(params, x, 500, np.array([0, 3]), CFG).dtype == np.float32


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_ddim_with_the_ideal_denoiser_ends_on_training_images_of_the_asked_class(guidance, rng):
    # Memorisation: at the last step (sigma = 0.01) the posterior is all on the nearest training
    # image, whose neighbours are >= 1 away in every pixel norm here, so the weights of the others
    # are below exp(-1 / (2 * 1e-4)): the sample *is* a training image, of the requested class.
    # With guidance 2 the two posteriors agree on that image at the end, so the same holds.
    pics = np.sign(rng.standard_normal((12, 1, 4, 4)))  # +-1 patterns, far apart
    labels = np.arange(12) % 3
    cfg = ideal.IdealConfig(resolution=4)  # 10 classes: the sampler's null label is 10
    apply, params, cfg = images.ideal_model(pics, labels, SCHED, cfg)
    asked = np.repeat(np.arange(3), 4)
    x = images.sample(apply, params, cfg, asked, np.random.default_rng(0), steps=50,
                      guidance=guidance)
    dist = np.sqrt(np.sum((x[:, None] - pics[None]) ** 2, axis=(2, 3, 4)))  # (12, 12)
    nearest = dist.argmin(1)
    assert np.all(dist.min(1) < 1e-6)
    assert np.array_equal(labels[nearest], asked)


def test_bad_inputs_are_named(rng):
    pics, labels = _data(rng)
    with pytest.raises(ValueError, match="`images` must have shape"):
        ideal.init(pics[:, :, :3], labels, SCHED.path, CFG)
    with pytest.raises(ValueError, match="`labels` must be 12 integers in 0..2"):
        ideal.init(pics, labels + 1, SCHED.path, CFG)
    params = ideal.init(pics[labels != 1], labels[labels != 1], SCHED.path, CFG)
    x = rng.standard_normal((2, 1, 4, 4))
    with pytest.raises(TypeError, match="`path` must be a discrete Gaussian path"):
        ideal.init(pics, labels, "linear", CFG)
    with pytest.raises(ValueError, match="one integer DDPM step"):
        ideal.apply(params, x, np.array([3, 4]), None, CFG)
    with pytest.raises(ValueError, match="class 1 has no images"):
        ideal.apply(params, x, 3, np.array([1, 0]), CFG)
    with pytest.raises(ValueError, match="`y` must be 2 integer labels"):
        ideal.apply(params, x, 3, np.array([4, 0]), CFG)
