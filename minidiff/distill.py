"""Chapter 12 — few-step sampling and distillation (in progress: issue 27).

So far: the consistency function's parametrisation and the multistep consistency sampler
(``consistency_scalings``, ``consistency_function``, ``multistep_sample``; below), and
**progressive distillation's target** (Salimans & Ho 2022, Algorithm 2). A student learns
to take in one DDIM step what its teacher takes in two. On a path ``z_t = alpha_t x + sigma_t eps``
the deterministic DDIM step from ``t`` to ``s`` with a prediction ``x_hat`` of the data is

    z_s = alpha_s x_hat + sigma_s eps_hat,     eps_hat = (z_t - alpha_t x_hat) / sigma_t

(Song, Meng & Ermon 2021, eq. (12) with ``sigma = 0``; ``ddim_step``). The teacher steps ``t ->
t' -> t''``; the student's target is the ``x_tilde`` for which one DDIM step ``t -> t''`` lands
exactly where the teacher's two did:

    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

(their Algorithm 2, the line defining ``x_tilde``; ``distillation_target``). A test holds the
identity with the exact mixture teacher in float64.

**Consistency models** (Song et al. 2023) learn ``f(x, sigma)``: the end at ``sigma_min`` of the
probability-flow ODE's trajectory through ``x`` at ``sigma`` (in the sigma frame of
``samplers.py``). The boundary condition ``f(x, sigma_min) = x`` is built into the network,

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, ln(sigma) / 4),
    c_skip = sd² / ((sigma - sigma_min)² + sd²),
    c_out = (sigma - sigma_min) sd / sqrt(sigma² + sd²)

(EDM's scalings shifted so that ``c_skip = 1`` and ``c_out = 0`` at ``sigma_min``; the values of
the paper's code, ``get_scalings_for_boundary_condition``, with ``c_in = 1 / sqrt(sigma² +
sd²)`` and EDM's ``c_noise``). Sampling evaluates ``f`` at the noise, then alternately adds noise
back to a lower level ``tau`` and evaluates ``f`` again (their Algorithm 1).
"""

import math

import numpy as onp
from autograd.tracer import getval

from .targets import check_positive, eps_from_x0, per_sample


def ddim_step(x_hat, z, alpha, sigma, alpha_next, sigma_next):
    """One deterministic DDIM step on any Gaussian path: keep the implied noise ``eps_hat`` and
    move the coefficients, ``z' = alpha' x_hat + sigma' (z - alpha x_hat) / sigma``."""
    eps_hat = eps_from_x0(x_hat, z, alpha, sigma)
    return per_sample(alpha_next, z, "alpha_next") * x_hat \
        + per_sample(sigma_next, z, "sigma_next") * eps_hat


def teacher_two_steps(predict_x0, z, path, t, t_mid, t_next):
    """The teacher's two DDIM steps ``t -> t_mid -> t_next`` on ``path`` with its data prediction
    ``predict_x0(z, t)`` (``t`` scalar)."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    am, sm = float(path.alpha(t_mid)), float(path.sigma(t_mid))
    an, sn = float(path.alpha(t_next)), float(path.sigma(t_next))
    z_mid = ddim_step(predict_x0(z, t), z, a, s, am, sm)
    return ddim_step(predict_x0(z_mid, t_mid), z_mid, am, sm, an, sn)


def distillation_target(z, z_next, alpha, sigma, alpha_next, sigma_next):
    """Salimans & Ho (2022), Algorithm 2: the data prediction ``x_tilde`` whose single DDIM step
    from ``z`` (at ``alpha, sigma``) reaches the teacher's ``z_next`` (at ``alpha_next,
    sigma_next``): ``(z_next - (sigma_next / sigma) z) / (alpha_next - (sigma_next / sigma)
    alpha)``."""
    ratio = per_sample(sigma_next, z, "sigma_next") / per_sample(sigma, z, "sigma", positive=True)
    return (z_next - ratio * z) / (per_sample(alpha_next, z, "alpha_next")
                                   - ratio * per_sample(alpha, z, "alpha"))


# ----------------------------------------------------------------------------- consistency models

def consistency_scalings(sigma, sigma_min=0.002, sigma_data=0.5):
    """``(c_skip, c_out, c_in)`` of the consistency parametrisation at ``sigma >= sigma_min``
    (module docstring): ``c_skip(sigma_min) = 1`` and ``c_out(sigma_min) = 0`` exactly."""
    sigma = onp.asarray(getval(sigma), dtype=onp.float64)
    check_positive(sigma_min, "sigma_min", why=": the consistency function's smallest level")
    check_positive(sigma_data, "sigma_data", why=": it is the data's standard deviation")
    if not onp.all(sigma >= sigma_min):
        raise ValueError(f"`sigma` must be >= sigma_min = {sigma_min} (got {sigma.min()})")
    root = onp.sqrt(sigma**2 + sigma_data**2)
    return (sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
            (sigma - sigma_min) * sigma_data / root, 1.0 / root)


def consistency_function(net, sigma_min=0.002, sigma_data=0.5):
    """``f(params, x, sigma) = c_skip x + c_out net(params, c_in x, ln(sigma) / 4)`` from a raw
    network ``net(params, x, c_noise)``; ``sigma`` per sample ``(N,)`` or a scalar."""
    def f(params, x, sigma):
        c_skip, c_out, c_in = consistency_scalings(sigma, sigma_min, sigma_data)
        c_noise = (0.25 * onp.log(onp.asarray(getval(sigma), onp.float64))).astype(x.dtype)
        c_skip, c_out, c_in = (per_sample(c.astype(x.dtype), x) for c in (c_skip, c_out, c_in))
        return c_skip * x + c_out * net(params, c_in * x, c_noise)
    return f


def multistep_sample(f, x, sigma_max, taus, rng, sigma_min=0.002):
    """Song et al. (2023), Algorithm 1: ``x <- f(x, sigma_max)`` from noise ``x`` of std
    ``sigma_max``, then for each ``tau`` in ``taus`` (decreasing, in ``(sigma_min, sigma_max)``):
    ``x <- f(x + sqrt(tau² - sigma_min²) z, tau)``. ``f(x, sigma)`` takes a scalar ``sigma``;
    ``len(taus) + 1`` evaluations in all."""
    if not isinstance(rng, onp.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (got {type(rng).__name__})")
    if any(not sigma_min < tau < sigma_max for tau in taus) or list(taus) != sorted(taus)[::-1]:
        raise ValueError(f"`taus` must decrease within ({sigma_min}, {sigma_max}) (got {taus!r})")
    x = f(x, sigma_max)
    for tau in taus:
        x = f(x + math.sqrt(tau**2 - sigma_min**2) * rng.standard_normal(x.shape), tau)
    return x
