"""What the network predicts, and how each prediction converts into every other, and into the score.

For the Gaussian path ``x_t = alpha x0 + sigma eps`` (``process.py``) a network can be trained to
output any of

- ``eps``      the noise (Ho et al. 2020),
- ``x0``       the clean signal,
- ``v``        ``alpha eps - sigma x0`` (Salimans & Ho 2022, sec. 4),
- ``velocity`` ``d x_t / dt = alpha' x0 + sigma' eps`` (flow matching, Lipman et al. 2023;
               rectified flow, Liu et al. 2023), which needs the path's derivatives,
- ``score``    ``grad log p_t(x_t)``.

At the optimum each is the posterior mean of its target given ``x_t`` — and all posterior means
are the same information, because of **Tweedie's formula** (Robbins 1956; Miyasawa 1961; Efron
2011): for ``x_t = alpha x0 + sigma eps``,

    E[eps | x_t] = -sigma grad log p_t(x_t),    E[x0 | x_t] = (x_t + sigma² grad log p_t) / alpha.

Every conversion goes through ``eps``: one function per direction (``eps_from_x0``,
``x0_from_eps``, ...), each the exact inverse of its partner given ``x_t``, and ``convert`` for
any pair. Coefficients are scalars or one value per sample ``(N,)``.
"""

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

KINDS = ("eps", "x0", "v", "velocity", "score")


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


# ----------------------------------------------------------------------------- score <-> eps

def score_from_eps(eps, sigma):
    """``score = -eps / sigma`` (Song et al. 2021, sec. 3; Vincent 2011).

    DDPM's form of the same identity is ``s = -eps_theta / sqrt(1 - alpha_bar)``.
    """
    return -eps / per_sample(sigma, eps, "sigma", positive=True)


def eps_from_score(score, sigma):
    """``eps = -sigma * score``: the inverse of ``score_from_eps``."""
    return -per_sample(sigma, score, "sigma", positive=True) * score


# ----------------------------------------------------------------------------- x0 <-> eps

def x0_from_eps(eps, xt, alpha, sigma):
    """``x0 = (x_t - sigma eps) / alpha`` (Ho et al. 2020, eq. (15))."""
    a = per_sample(alpha, xt, "alpha", positive=True)
    return (xt - per_sample(sigma, xt, "sigma") * eps) / a


def eps_from_x0(x0, xt, alpha, sigma):
    """``eps = (x_t - alpha x0) / sigma``."""
    s = per_sample(sigma, xt, "sigma", positive=True)
    return (xt - per_sample(alpha, xt, "alpha") * x0) / s


def x0_from_score(score, xt, alpha, sigma):
    """Tweedie: ``E[x0 | x_t] = (x_t + sigma² grad log p_t(x_t)) / alpha`` (Efron 2011, sec. 2,
    for ``alpha = 1``: ``E[x0 | y] = y + sigma² grad log p(y)``; here for the scaled path, since
    ``x_t / alpha = x0 + (sigma / alpha) eps``)."""
    s = per_sample(sigma, xt, "sigma", positive=True)
    return (xt + s * s * score) / per_sample(alpha, xt, "alpha", positive=True)


# ----------------------------------------------------------------------------- v <-> eps

def v_from_eps(eps, xt, alpha, sigma):
    """``v = alpha eps - sigma x0`` (Salimans & Ho 2022, sec. 4), with ``x0`` from ``eps``.

    Equivalently ``v = (eps - sigma x_t) / alpha`` on a variance-preserving path; written here for
    any ``(alpha, sigma)``.
    """
    a, s = per_sample(alpha, xt, "alpha"), per_sample(sigma, xt, "sigma")
    return a * eps - s * x0_from_eps(eps, xt, alpha, sigma)


def eps_from_v(v, xt, alpha, sigma):
    """``eps = (sigma x_t + alpha v) / (alpha² + sigma²)``: ``x_t`` and ``v`` are a rotation of
    ``(x0, eps)`` scaled by ``sqrt(alpha² + sigma²)``, so inverting it is a transpose."""
    a, s = per_sample(alpha, xt, "alpha"), per_sample(sigma, xt, "sigma")
    return (s * xt + a * v) / (a * a + s * s)


# ----------------------------------------------------------------------------- velocity <-> eps

def velocity_from_eps(eps, xt, alpha, sigma, dalpha, dsigma):
    """``u = dx_t/dt = alpha' x0 + sigma' eps`` with ``x0`` from ``eps`` (the conditional
    velocity of flow matching; for ``alpha = 1 - t``, ``sigma = t`` it is ``eps - x0``)."""
    da, ds = per_sample(dalpha, xt, "dalpha"), per_sample(dsigma, xt, "dsigma")
    return da * x0_from_eps(eps, xt, alpha, sigma) + ds * eps


def eps_from_velocity(u, xt, alpha, sigma, dalpha, dsigma):
    """Solve ``[x_t, u] = [[alpha, sigma], [alpha', sigma']] [x0, eps]`` for ``eps``:
    ``eps = (alpha u - alpha' x_t) / (alpha sigma' - sigma alpha')``."""
    a, s = per_sample(alpha, xt, "alpha"), per_sample(sigma, xt, "sigma")
    da, ds = per_sample(dalpha, xt, "dalpha"), per_sample(dsigma, xt, "dsigma")
    det = a * ds - s * da
    if onp.any(onp.asarray(getval(det)) == 0):
        raise ValueError("alpha * dsigma - sigma * dalpha is zero: the velocity does not "
                         "determine the noise on this path")
    return (a * u - da * xt) / det


# ----------------------------------------------------------------------------- any <-> any

def to_eps(kind, pred, xt, alpha, sigma, dalpha=None, dsigma=None):
    """The noise prediction equivalent to a prediction ``pred`` of type ``kind``."""
    if kind == "eps":
        return pred
    if kind == "x0":
        return eps_from_x0(pred, xt, alpha, sigma)
    if kind == "v":
        return eps_from_v(pred, xt, alpha, sigma)
    if kind == "velocity":
        _need_derivatives(dalpha, dsigma)
        return eps_from_velocity(pred, xt, alpha, sigma, dalpha, dsigma)
    if kind == "score":
        return eps_from_score(pred, sigma)
    raise ValueError(f"unknown prediction kind {kind!r}: expected one of {KINDS}")


def from_eps(kind, eps, xt, alpha, sigma, dalpha=None, dsigma=None):
    """The prediction of type ``kind`` equivalent to the noise prediction ``eps``."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0_from_eps(eps, xt, alpha, sigma)
    if kind == "v":
        return v_from_eps(eps, xt, alpha, sigma)
    if kind == "velocity":
        _need_derivatives(dalpha, dsigma)
        return velocity_from_eps(eps, xt, alpha, sigma, dalpha, dsigma)
    if kind == "score":
        return score_from_eps(eps, sigma)
    raise ValueError(f"unknown prediction kind {kind!r}: expected one of {KINDS}")


def convert(pred, source, target, xt, alpha, sigma, dalpha=None, dsigma=None):
    """Convert a prediction of kind ``source`` into kind ``target`` (through ``eps``)."""
    eps = to_eps(source, pred, xt, alpha, sigma, dalpha, dsigma)
    return from_eps(target, eps, xt, alpha, sigma, dalpha, dsigma)


def _need_derivatives(dalpha, dsigma):
    if dalpha is None or dsigma is None:
        raise ValueError("the velocity target needs the path's derivatives `dalpha` and `dsigma`")
