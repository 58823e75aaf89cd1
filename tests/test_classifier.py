"""The MNIST classifier used by the evaluation kit."""

import autograd
import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff import nn
from minidiff.models import classifier


def test_shapes_and_gradients(rng):
    params = nn.tree_cast(classifier.init(rng), np.float64)
    x = rng.uniform(-1, 1, (3, 1, 28, 28))
    assert classifier.features(params, x).shape == (3, 128)
    assert classifier.apply(params, x).shape == (3, 10)
    batch = {"x": x, "y": np.array([0, 4, 9])}
    # Finite differences across a ReLU kink are wrong: with ~10^5 ReLU units in the conv layers a
    # crossing is likely, so the numerical check covers the dense head (128 units) with the conv
    # layers fixed; conv2d and avg_pool2 have their own checks in tests/test_conv.py.
    head = {k: params[k] for k in ("fc1", "fc2")}
    check_grads(lambda h: classifier.loss({**params, **h}, batch), modes=["rev"], order=1)(head)


def test_cross_entropy_of_uniform_logits_is_log_10(rng):
    params = classifier.init(rng, dtype=np.float64)
    params["fc2"]["w"][:] = 0  # logits all zero: every class has probability 1/10
    batch = {"x": rng.uniform(-1, 1, (4, 1, 28, 28)), "y": np.array([1, 2, 3, 4])}
    np.testing.assert_allclose(classifier.loss(params, batch), np.log(10), rtol=1e-12)


# ----------------------------------------------------------------------------- chapter 7

@pytest.mark.ch7
def test_noise_conditional_classifier_gradients(rng):
    # The input gradient grad_x log p_t(c | x) is what classifier guidance adds to the score, so
    # it is checked against finite differences through the whole network (float64; this seed's
    # input crosses no ReLU kink within the check's step), and so are the time-embedding MLP's
    # parameters, the part the clean classifier does not have.
    from minidiff import images

    params = nn.tree_cast(classifier.init_noisy(rng), np.float64)
    x = rng.uniform(-1, 1, (2, 1, 28, 28))
    t = np.array([10.0, 700.0])
    labels = np.array([3, 8])
    assert classifier.noisy_log_probs(params, x, t).shape == (2, 10)
    np.testing.assert_allclose(np.exp(classifier.noisy_log_probs(params, x, t)).sum(1), 1.0,
                               rtol=1e-12)
    log_p = lambda x: classifier.noisy_log_probs(params, x, t)[np.arange(2), labels].sum()  # noqa: E731
    check_grads(log_p, modes=["rev"], order=1)(x)
    grad = images.noisy_classifier_grad(params)(x, t, labels)
    np.testing.assert_allclose(grad, autograd.grad(log_p)(x), rtol=1e-12)
    batch = {"xt": x, "i": t, "y": labels}
    emb = {k: params[k] for k in ("temb1", "temb2")}
    check_grads(lambda e: classifier.noisy_loss({**params, **e}, batch), modes=["rev"],
                order=1)(emb)


@pytest.mark.ch7
def test_the_noise_conditional_classifier_hears_the_time(rng):
    # Same image, other step index: other logits (the embedding reaches the convolutions).
    params = classifier.init_noisy(rng, dtype=np.float64)
    x = rng.uniform(-1, 1, (1, 1, 28, 28))
    a = classifier.noisy_log_probs(params, x, np.array([5.0]))
    b = classifier.noisy_log_probs(params, x, np.array([900.0]))
    assert not np.allclose(a, b)
