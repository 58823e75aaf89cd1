"""A small MNIST classifier built with ``minidiff.nn``: the evaluator of the image chapters.

    conv 3x3 (1 -> 32), ReLU, 2x2 average pool        28 -> 14
    conv 3x3 (32 -> 64), ReLU, 2x2 average pool       14 -> 7
    linear 64*7*7 -> 128, ReLU                        the "features" used by FD-MNIST
    linear 128 -> 10                                  logits

Trained on the training split (``images.train_classifier``); its accuracy on the test split and its
penultimate features give the sample-quality measures of ``metrics.py``.

The same network with the timestep added is chapter 7's **noise-conditional classifier**
``p_t(c | x_t)`` (``init_noisy`` / ``noisy_log_probs``): the sinusoidal embedding of the step
index, a two-layer SiLU MLP, and a per-channel bias after each convolution (32 and 64 channels),
as the U-Net adds its time embedding. Classifier guidance (Dhariwal & Nichol 2021) needs one
trained on noised images, because it is asked about ``x_t`` at every step of the sampler.
"""

import autograd.numpy as np
import numpy as onp

from ..nn import init_linear, linear, logsumexp, mean, silu, sinusoidal_embedding
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


# ----------------------------------------------------------------------------- noise-conditional

def init_noisy(rng, embed_dim=64, dtype=onp.float32):
    """The classifier's parameters plus a time-embedding MLP ``embed_dim -> embed_dim -> 96``
    whose output is the biases of the two convolutions' 32 and 64 channels."""
    params = init(rng, dtype)
    params["temb1"] = init_linear(rng, embed_dim, embed_dim, dtype)
    params["temb2"] = init_linear(rng, embed_dim, 32 + 64, dtype)
    return params


def noisy_features(params, x, t):
    """``x: (N, 1, 28, 28)`` noised at step indices ``t: (N,)`` -> features ``(N, 128)``."""
    dim = params["temb1"]["w"].shape[0]
    e = linear(params["temb2"], silu(linear(params["temb1"],
                                            sinusoidal_embedding(t, dim, dtype=x.dtype))))
    b1, b2 = e[:, :32, None, None], e[:, 32:, None, None]  # (N, 32, 1, 1), (N, 64, 1, 1)
    h = avg_pool2(np.maximum(conv2d(x, params["conv1"]["w"], params["conv1"]["b"], padding=1)
                             + b1, 0.0))
    h = avg_pool2(np.maximum(conv2d(h, params["conv2"]["w"], params["conv2"]["b"], padding=1)
                             + b2, 0.0))
    h = np.reshape(h, (h.shape[0], -1))
    return np.maximum(linear(params["fc1"], h), 0.0)


def noisy_log_probs(params, x, t):
    """``log p_t(c | x_t)`` for every class: log-softmax of the logits, ``(N, 10)``."""
    logits = linear(params["fc2"], noisy_features(params, x, t))
    return logits - logsumexp(logits, axis=1, keepdims=True)


def noisy_loss(params, batch):
    """Mean cross-entropy of ``batch = {"xt", "i", "y"}`` (noised images, their step indices,
    their classes)."""
    lp = noisy_log_probs(params, batch["xt"], batch["i"])
    return -mean(np.sum(lp * onp.eye(10, dtype=lp.dtype)[batch["y"]], axis=1))


def noisy_predict(params, x, t, batch_size=1000):
    """Predicted labels of ``x`` noised at steps ``t`` (an array ``(N,)``), in batches."""
    t = onp.broadcast_to(onp.asarray(t, dtype=x.dtype), (len(x),))
    return onp.concatenate([onp.argmax(noisy_log_probs(params, x[i:i + batch_size],
                                                       t[i:i + batch_size]), axis=1)
                            for i in range(0, len(x), batch_size)])
