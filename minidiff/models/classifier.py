"""A small MNIST classifier built with ``minidiff.nn``: the evaluator of the image chapters.

    conv 3x3 (1 -> 32), ReLU, 2x2 average pool        28 -> 14
    conv 3x3 (32 -> 64), ReLU, 2x2 average pool       14 -> 7
    linear 64*7*7 -> 128, ReLU                        the "features" used by FD-MNIST
    linear 128 -> 10                                  logits

Trained on the training split (``images.train_classifier``); its accuracy on the test split and its
penultimate features give the sample-quality measures of ``metrics.py``.
"""

import autograd.numpy as np
import numpy as onp
from autograd.scipy.special import logsumexp

from ..nn import init_linear, linear, mean
from ..nn.conv import avg_pool2, conv2d


def init(rng, dtype=onp.float32):
    def conv(c_in, c_out):
        bound = 1.0 / onp.sqrt(c_in * 9)
        return {"w": rng.uniform(-bound, bound, (c_out, c_in, 3, 3)).astype(dtype),
                "b": onp.zeros(c_out, dtype)}
    return {"conv1": conv(1, 32), "conv2": conv(32, 64),
            "fc1": init_linear(rng, 64 * 7 * 7, 128, dtype),
            "fc2": init_linear(rng, 128, 10, dtype)}


def features(params, x):
    """``x: (N, 1, 28, 28)`` in ``[-1, 1]`` -> penultimate features ``(N, 128)``."""
    h = avg_pool2(np.maximum(conv2d(x, params["conv1"]["w"], params["conv1"]["b"], padding=1),
                             0.0))
    h = avg_pool2(np.maximum(conv2d(h, params["conv2"]["w"], params["conv2"]["b"], padding=1),
                             0.0))
    h = np.reshape(h, (h.shape[0], -1))  # (N, 64*7*7)
    return np.maximum(linear(params["fc1"], h), 0.0)


def apply(params, x):
    """Logits ``(N, 10)``."""
    return linear(params["fc2"], features(params, x))


def loss(params, batch):
    """Mean cross-entropy of ``batch = {"x", "y"}``."""
    logits = apply(params, batch["x"])
    picked = np.sum(logits * onp.eye(10, dtype=logits.dtype)[batch["y"]], axis=1)
    return mean(logsumexp(logits, axis=1) - picked)


def predict(params, x, batch_size=1000):
    """Predicted labels, in batches."""
    return onp.concatenate([onp.argmax(apply(params, x[i:i + batch_size]), axis=1)
                            for i in range(0, len(x), batch_size)])
