"""What the network predicts, and how each prediction converts into the score.

For the Gaussian path ``x_t = alpha x0 + sigma eps`` the score of the noised density is
``grad log p_t(x_t) = -E[eps | x_t] / sigma`` (Tweedie / Miyasawa; Vincent 2011): a network that
predicts the noise *is* a score network, reparametrised. Every conversion between eps, x0, v, flow
velocity and the score lives in this one module, so samplers, guidance and likelihoods work with
any of them.

Coefficients (``alpha``, ``sigma``) are a scalar or one value per sample, shape ``(N,)``; they
broadcast against ``(N, ...)`` arrays.
"""

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval


def per_sample(c, x, name="coefficient", positive=False):
    """Reshape a scalar or ``(N,)`` coefficient ``c`` to broadcast against ``x: (N, ...)``."""
    value = onp.asarray(getval(c))
    if positive and not onp.all(value > 0):
        raise ValueError(f"`{name}` must be positive (got {value.min() if value.size else value})")
    if value.ndim == 0:
        return c
    if value.ndim != 1 or value.shape[0] != np.shape(x)[0]:
        raise ValueError(f"`{name}` must be a scalar or have shape ({np.shape(x)[0]},) "
                         f"(got {value.shape})")
    return np.reshape(c, (-1,) + (1,) * (np.ndim(x) - 1))  # (N, 1, ..., 1)


def score_from_eps(eps, sigma):
    """``score = -eps / sigma`` (Song et al. 2021, sec. 3).

    DDPM's form of the same identity is ``s = -eps_theta / sqrt(1 - alpha_bar)``.
    """
    return -eps / per_sample(sigma, eps, "sigma", positive=True)


def eps_from_score(score, sigma):
    """``eps = -sigma * score``: the inverse of ``score_from_eps``."""
    return -per_sample(sigma, score, "sigma", positive=True) * score
