"""The MNIST classifier used by the evaluation kit."""

import numpy as np
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
