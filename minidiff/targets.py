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


def check_positive(value, name, allow_zero=False, why=""):
    """``value`` (a number or an array) as float64, checked to be finite and positive (or
    non-negative): a ``ValueError`` naming ``name`` otherwise, never a NaN later."""
    v = onp.asarray(getval(value), dtype=onp.float64)
    if v.size == 0 or not onp.all(onp.isfinite(v) & ((v >= 0) if allow_zero else (v > 0))):
        bad = v.min() if v.size and not onp.isnan(v).any() else value
        raise ValueError(f"`{name}` must be {'non-negative' if allow_zero else 'positive'} and "
                         f"finite (got {bad}){why}")
    return v


def per_sample(c, x, name="coefficient", positive=False):
    """Reshape a scalar or ``(N,)`` coefficient ``c`` to broadcast against ``x: (N, ...)``."""
    value = onp.asarray(getval(c))
    if positive and not onp.all((value > 0) & onp.isfinite(value)):
        raise ValueError(f"`{name}` must be positive and finite (got "
                         f"{value.min() if value.size else value})")
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
    check_positive(sigma, "sigma", allow_zero=True, why=": it is a standard deviation")
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
    # BEGIN EXERCISE 2.4: Tweedie's formula: the posterior mean from the score (Efron 2011, sec. 2);
    #   notebook 02, section 4
    return (xt + s * s * score) / per_sample(alpha, xt, "alpha", positive=True)
    # END EXERCISE


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


# ----------------------------------------------------------------------------- training targets

def target(kind, x0, eps, alpha, sigma, dalpha=None, dsigma=None):
    """The regression target of a network that predicts ``kind``, from the pair ``(x0, eps)``
    that made ``x_t = alpha x0 + sigma eps`` (each by its own definition, module docstring)."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    a, s = per_sample(alpha, x0, "alpha"), per_sample(sigma, x0, "sigma", positive=True)
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        _need_derivatives(dalpha, dsigma)
        return per_sample(dalpha, x0, "dalpha") * x0 + per_sample(dsigma, x0, "dsigma") * eps
    if kind == "score":
        return -eps / s
    raise ValueError(f"unknown prediction kind {kind!r}: expected one of {KINDS}")


def squared_error(pred, truth):
    """``|pred - truth|²`` per sample, summed over every non-batch axis: shape ``(N,)``."""
    d = pred - truth
    return np.sum(np.reshape(d * d, (np.shape(d)[0], -1)), axis=1)


def x0_error_factor(kind, alpha, sigma, dalpha=None, dsigma=None):
    """The factor ``w`` with ``|kind_hat - kind|² = w |x0_hat - x0|²`` when both predictions come
    from the same ``x_t`` (so ``eps_hat - eps = -(alpha / sigma)(x0_hat - x0)``):

    - x0: 1;  eps: ``SNR = alpha²/sigma²``;  v: ``(alpha² + sigma²)² / sigma² = (SNR + 1)(alpha² +
      sigma²)``, which is ``SNR + 1`` on a variance-preserving path (``alpha² + sigma² = 1``);
      velocity: ``((alpha' sigma - sigma' alpha) / sigma)²`` (``1 / t²`` on the linear path).

    These are the frames of Min-SNR (Hang et al. 2023, sec. 3.3): an eps loss *is* an x0 loss
    weighted by SNR, a v loss one weighted by SNR + 1 (on VP paths)."""
    snr = (alpha / sigma) ** 2
    if kind == "x0":
        return onp.ones_like(onp.asarray(snr, dtype=float))
    if kind == "eps":
        return snr
    if kind == "v":
        return (alpha**2 + sigma**2) ** 2 / sigma**2
    if kind == "velocity":
        _need_derivatives(dalpha, dsigma)
        return ((dalpha * sigma - dsigma * alpha) / sigma) ** 2
    raise ValueError(f"x0_error_factor is defined for eps, x0, v and velocity (got {kind!r})")


def min_snr_weight(kind, alpha, sigma, gamma=5.0, dalpha=None, dsigma=None):
    """Min-SNR-gamma (Hang et al. 2023, eq. (9)): weight the x0 error by ``min(SNR, gamma)``.
    Expressed as a weight on the ``kind`` loss this is ``min(SNR, gamma) / x0_error_factor`` —
    ``min(SNR, gamma)/SNR`` for eps, ``min(SNR, gamma)/(SNR + 1)`` for v on a VP path — so the three
    weighted losses are one and the same objective."""
    if not gamma > 0:  # refuses NaN too; gamma = inf is no cap: the weight of the plain loss
        raise ValueError(f"`gamma` must be positive (got {gamma}): it caps the SNR")
    snr = (onp.asarray(alpha, dtype=float) / onp.asarray(sigma, dtype=float)) ** 2
    return onp.minimum(snr, gamma) / x0_error_factor(kind, alpha, sigma, dalpha, dsigma)


def prediction_loss(net, kind, weighting=None, gamma=5.0):
    """``loss(params, batch)`` for a network ``net(params, x_t, t)`` that predicts ``kind``
    (eps, x0, v or velocity): the mean over the batch of ``w(t) |net - target|²``, the batch as
    drawn by ``process.path_batches``. ``weighting`` is ``None`` (w = 1, each target's own
    implied weighting) or ``"min_snr"`` (Hang et al. 2023: ``min(SNR, gamma)`` on the x0 error,
    expressed in this target's frame by ``min_snr_weight``)."""
    if weighting not in (None, "min_snr"):
        raise ValueError(f"`weighting` must be None or 'min_snr' (got {weighting!r})")

    def loss(params, batch):
        a, s = batch["alpha"], batch["sigma"]
        truth = target(kind, batch["x0"], batch["eps"], a, s, batch["dalpha"], batch["dsigma"])
        err = squared_error(net(params, batch["xt"], batch["t"]), truth)
        if weighting == "min_snr":
            w = min_snr_weight(kind, a, s, gamma, batch["dalpha"], batch["dsigma"])
            err = err * w.astype(err.dtype)
        return np.sum(err) * (1.0 / err.shape[0])
    return loss


# ----------------------------------------------------------------------------- EDM

def edm_precond(sigma, sigma_data=0.5):
    """EDM's preconditioning (Karras et al. 2022, table 1, "Ours"):
    ``c_skip = sd² / (sigma² + sd²)``, ``c_out = sigma sd / sqrt(sigma² + sd²)``,
    ``c_in = 1 / sqrt(sigma² + sd²)``, ``c_noise = ln(sigma) / 4``. Returns the four as arrays."""
    sigma = check_positive(sigma, "sigma", why=": it is a noise level")
    check_positive(sigma_data, "sigma_data", why=": it is the data's standard deviation")
    # BEGIN EXERCISE 5.1: EDM's preconditioning c_skip, c_out, c_in, c_noise (Karras et al. 2022,
    #   table 1); notebook 05, section 2
    total = sigma**2 + sigma_data**2
    return (sigma_data**2 / total, sigma * sigma_data / onp.sqrt(total), 1.0 / onp.sqrt(total),
            0.25 * onp.log(sigma))
    # END EXERCISE


def edm_denoiser(net, sigma_data=0.5):
    """``D(x, sigma) = c_skip x + c_out F(c_in x; c_noise)`` (Karras et al. 2022, eq. (7)) from a
    raw network ``net(params, x, c_noise)``; returns ``D(params, x, sigma)``, sigma per sample."""
    def denoise(params, x, sigma):
        c_skip, c_out, c_in, c_noise = edm_precond(getval(sigma), sigma_data)
        c_skip, c_out, c_in = (per_sample(c.astype(x.dtype), x) for c in (c_skip, c_out, c_in))
        return c_skip * x + c_out * net(params, c_in * x, c_noise.astype(x.dtype))
    return denoise


def edm_loss_weight(sigma, sigma_data=0.5):
    """``lambda(sigma) = (sigma² + sd²) / (sigma sd)² = 1 / c_out²`` (Karras et al. 2022, tab 1)."""
    sigma = check_positive(sigma, "sigma", why=": it is a noise level")
    check_positive(sigma_data, "sigma_data", why=": it is the data's standard deviation")
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_effective_target(x0, eps, sigma, sigma_data=0.5):
    """What ``F`` is trained to output: ``(x0 - c_skip (x0 + sigma eps)) / c_out`` (Karras et al.
    2022, eq. (8)). For data of std ``sigma_data`` it has unit variance at every ``sigma``."""
    c_skip, c_out, _, _ = edm_precond(sigma, sigma_data)
    c_skip, c_out = per_sample(c_skip, x0), per_sample(c_out, x0)
    return (x0 - c_skip * (x0 + per_sample(sigma, x0) * eps)) / c_out


def edm_sigmas(n, rng, p_mean=-1.2, p_std=1.2):
    """Training noise levels: ``ln sigma ~ N(P_mean, P_std²)`` (Karras et al. 2022, table 1)."""
    check_positive(p_std, "p_std", why=": it is a standard deviation")
    return onp.exp(p_mean + p_std * rng.standard_normal(n))


def edm_loss(net, sigma_data=0.5):
    """EDM's training loss (Karras et al. 2022, eq. (8)) for ``net(params, c_in x, c_noise)``:
    ``lambda(sigma) |D(x0 + sigma eps, sigma) - x0|² = |F - effective target|²`` (the weight
    ``1/c_out²`` cancels ``c_out²``), averaged over a batch ``{"x0", "sigma", "eps"}``."""
    def loss(params, batch):
        x0, sigma, eps = batch["x0"], batch["sigma"], batch["eps"]
        _, _, c_in, c_noise = edm_precond(sigma, sigma_data)
        x = x0 + per_sample(sigma, x0) * eps
        out = net(params, per_sample(c_in.astype(x0.dtype), x0) * x, c_noise.astype(x0.dtype))
        truth = edm_effective_target(x0, eps, sigma, sigma_data).astype(x0.dtype)
        err = squared_error(out, truth)
        return np.sum(err) * (1.0 / err.shape[0])
    return loss


def edm_batches(data, batch_size, p_mean=-1.2, p_std=1.2, dtype=onp.float32):
    """``batch_fn(rng)``: data points, log-normal noise levels (``edm_sigmas``) and the noise."""
    data = onp.asarray(data, dtype=dtype)

    def batch_fn(rng):
        x0 = data[rng.integers(0, data.shape[0], size=batch_size)]
        sigma = edm_sigmas(batch_size, rng, p_mean, p_std).astype(dtype)
        return {"x0": x0, "sigma": sigma, "eps": rng.standard_normal(x0.shape, dtype=dtype)}
    return batch_fn
