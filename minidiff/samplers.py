"""Samplers over a grid of noise levels, for a denoiser ``D(x, sigma) ≈ E[x0 | x]``.

In the frame of Karras et al. (2022) — ``x = x0 + sigma eps``, time equal to ``sigma`` — the
probability-flow ODE is simply ``dx/dsigma = (x - D(x, sigma)) / sigma`` (their eq. (3) with
``s(t) = 1``, ``sigma(t) = t``); every model of the book can be put in this frame (a VP model at
time ``t`` sees ``x / alpha`` with ``sigma = sigma(t) / alpha(t)``). The samplers here:

- ``euler``: first order, one evaluation per step.
- ``heun``: second order (Karras et al. 2022, Algorithm 2), with optional stochastic "churn".
- ``euler_ancestral``: Euler to a lower level, then fresh noise back up (k-diffusion's form of
  DDPM's ancestral step).
- ``dpm_solver_pp_2m``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second order, multistep,
  exact in the linear part by working in ``log sigma``.
- ``dpm_solver_pp_3m``: the third-order multistep member of the family, in k-diffusion's form.

Grids: ``karras_sigmas`` (Karras et al. 2022, eq. (5)) and ``lambda_sigmas`` (uniform in
``log sigma``, DPM-Solver's).

``denoiser(x, sigma)`` takes a scalar ``sigma``; a grid ends with 0.
"""

import math

import numpy as onp

from .targets import convert, eps_from_x0


def denoiser_from_path(predict, kind, path):
    """Put a model trained on a path ``x_t = alpha x0 + sigma eps`` into the sigma frame.

    ``predict(x_t, t) -> prediction of kind``. In the sigma frame the state is ``x = x_t / alpha``
    at noise level ``sigma / alpha``, so ``D(x, s)`` evaluates the model at the time ``t`` with
    ``sigma(t) / alpha(t) = s`` (``path.t_from_ratio``), on ``x_t = alpha(t) x``, and converts
    its output to ``x0`` (``targets.convert``). A model on DDPM's discrete chain
    (``process.DiscreteVP``) is evaluated at the fractional step ``t_from_ratio`` gives, as
    diffusers and k-diffusion do: so every sampler here drives a discrete-time model on any grid,
    Karras et al.'s included."""
    def denoiser(x, s):
        t = float(path.t_from_ratio(s))
        a, sg = float(path.alpha(t)), float(path.sigma(t))
        xt = a * x
        derivs = {"dalpha": float(path.dalpha(t)), "dsigma": float(path.dsigma(t))} \
            if kind == "velocity" else {}
        return convert(predict(xt, t), kind, "x0", xt, a, sg, **derivs)
    return denoiser


def karras_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The EDM grid (Karras et al. 2022, eq. (5)):
    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, then
    a final 0. ``rho = 7`` spends more steps at low noise."""
    if not (isinstance(n, int | onp.integer) and n >= 2):
        raise ValueError(f"`n` must be an integer >= 2 (got {n!r})")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < `sigma_min` < `sigma_max` (got {sigma_min}, {sigma_max})")
    if not 0 < rho < math.inf:
        raise ValueError(f"`rho` must be positive (got {rho})")
    # BEGIN EXERCISE 5.2: the EDM noise-level grid (Karras et al. 2022, eq. (5)); notebook 05,
    #   section 3
    ramp = onp.linspace(0, 1, n)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return onp.append(inv**rho, 0.0)
    # END EXERCISE


def lambda_sigmas(n, sigma_min, sigma_max):
    """``n`` levels uniform in ``lambda = -log sigma`` from ``sigma_max`` down to ``sigma_min``,
    then a final 0: DPM-Solver's "logSNR" grid (Lu et al. 2022, sec. 3.3: uniform in half the
    log-SNR), the grid its step sizes ``h`` are measured on. Against Karras et al.'s ``rho = 7``
    it spends fewer levels near ``sigma_min`` and more at high noise."""
    if not (isinstance(n, int | onp.integer) and n >= 2):
        raise ValueError(f"`n` must be an integer >= 2 (got {n!r})")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < `sigma_min` < `sigma_max` (got {sigma_min}, {sigma_max})")
    return onp.append(onp.exp(onp.linspace(math.log(sigma_max), math.log(sigma_min), n)), 0.0)


def _check(sigmas):
    sigmas = onp.asarray(sigmas, dtype=onp.float64)
    if sigmas.ndim != 1 or sigmas.size < 2 or onp.any(onp.diff(sigmas) >= 0) or sigmas[-1] < 0:
        raise ValueError("`sigmas` must be a strictly decreasing 1-D grid of at least two "
                         "non-negative noise levels (usually ending in 0)")
    return sigmas


def _d(denoiser, x, sigma):
    """The ODE's slope ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, eq. (3)
    with ``s = 1``): the noise the denoiser implies, ``targets.eps_from_x0`` with alpha = 1."""
    return eps_from_x0(denoiser(x, sigma), x, 1.0, sigma)


def euler(denoiser, x, sigmas):
    """Euler's method on ``dx/dsigma``: ``x <- x + (sigma_next - sigma) d``."""
    sigmas = _check(sigmas)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + (s_next - s) * _d(denoiser, x, s)
    return x


def heun(denoiser, x, sigmas, rng=None, churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Karras et al. (2022), Algorithm 2. Each step: optionally raise the noise level from
    ``sigma`` to ``sigma_hat = sigma (1 + gamma)`` by adding fresh noise (``gamma =
    min(churn / N, sqrt 2 - 1)`` inside ``[s_tmin, s_tmax]``), take an Euler step to
    ``sigma_next``, and correct it with the slope there (the trapezoid rule) unless
    ``sigma_next = 0``. ``churn = 0`` is the deterministic 2nd-order ODE solver."""
    sigmas = _check(sigmas)
    n = len(sigmas) - 1
    if not (0 <= churn < math.inf and 0 <= s_noise < math.inf):  # also refuses NaN
        raise ValueError(f"`churn` and `s_noise` must be non-negative (got {churn}, {s_noise})")
    if churn > 0 and rng is None:
        raise ValueError("`rng` is needed when churn > 0")
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        gamma = min(churn / n, math.sqrt(2) - 1) if (churn > 0 and s_tmin <= s <= s_tmax) else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * rng.standard_normal(x.shape)
        d = _d(denoiser, x, s_hat)
        # BEGIN EXERCISE 5.3: Heun's second-order step (Karras et al. 2022, Algorithm 2); notebook
        #   05, section 3
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            x_next = x + (s_next - s_hat) * 0.5 * (d + _d(denoiser, x_next, s_next))
        # END EXERCISE
        x = x_next
    return x


def ancestral_levels(s, s_next, eta=1.0):
    """``(sigma_down, sigma_up)`` of an ancestral step from ``s`` to ``s_next``:
    ``sigma_up = min(s_next, eta sqrt(s_next² (s² - s_next²) / s²))`` and ``sigma_down =
    sqrt(s_next² - sigma_up²)``, so that noise of std ``sigma_up`` added at ``sigma_down`` lands
    on ``s_next``. With ``eta = 1``, ``sigma_up²`` is DDPM's posterior variance ``beta~_t``
    (Ho et al. 2020, eq. (7)) in the sigma frame, ``beta~_t / alpha_bar_{t-1}`` with
    ``s = sigma_t / alpha_t`` and ``s_next = sigma_{t-1} / alpha_{t-1}``
    (tests/test_samplers.py)."""
    up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    return math.sqrt(s_next**2 - up**2), up


def euler_ancestral(denoiser, x, sigmas, rng, eta=1.0):
    """Ancestral sampling with Euler steps: go down deterministically to ``sigma_down``, then add
    noise of std ``sigma_up`` so the level is ``sigma_next`` again (``ancestral_levels``; with
    ``eta = 1`` DDPM's posterior variance in the sigma frame; k-diffusion's
    ``sample_euler_ancestral``)."""
    sigmas = _check(sigmas)
    if not 0.0 <= eta <= 1.0:  # also refuses NaN
        raise ValueError(f"`eta` must lie in [0, 1] (got {eta}): 0 is the ODE, 1 DDPM's noise")
    if not isinstance(rng, onp.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (got {type(rng).__name__})")
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        down, up = ancestral_levels(s, s_next, eta)
        x = x + (down - s) * _d(denoiser, x, s)
        if up > 0:
            x = x + up * rng.standard_normal(x.shape)
    return x


def dpm_solver_pp_2m(denoiser, x, sigmas):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the sigma frame. With ``lambda = -log
    sigma`` and ``h = lambda_next - lambda``, the linear part is solved exactly,
    ``x <- (sigma_next / sigma) x - expm1(-h) D_hat``, where ``D_hat`` extrapolates the last two
    denoiser outputs, ``(1 + 1/(2r)) D - 1/(2r) D_prev`` with ``r = h_prev / h`` (the first step
    and the step to ``sigma = 0`` use ``D`` alone)."""
    sigmas = _check(sigmas)
    previous = None
    for k, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoiser(x, s)
        if s_next == 0:
            x = denoised
        else:
            # BEGIN EXERCISE 5.4: the DPM-Solver++(2M) update (Lu et al. 2022, Algorithm 2); the
            #   docstring of samplers.py
            h = math.log(s / s_next)
            d_hat = denoised
            if previous is not None:
                r = math.log(sigmas[k - 1] / s) / h
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (s_next / s) * x - math.expm1(-h) * d_hat
            # END EXERCISE
        previous = denoised
    return x


def dpm_solver_pp_3m(denoiser, x, sigmas):
    """DPM-Solver++(3M), deterministic: the third-order multistep exponential integrator. With
    ``lambda = -log sigma``, ``h = lambda_next - lambda``, the exact step is ``x_next = e^-h x +
    int_0^h e^-(h - u) D(lambda + u) du``; expanding ``D`` to second order in ``u`` gives

        x <- (sigma_next / sigma) x - expm1(-h) D + phi_2 (h D') - phi_3 (h² D'')

    with ``phi_2 = expm1(-h) / h + 1`` and ``phi_3 = phi_2 / h - 1/2`` (Lu et al. 2022, sec. 3,
    the same Taylor expansion as their single-step third-order solver). ``h D'`` and ``h² D''``
    are estimated from the last three denoiser outputs by divided differences over ``lambda``:
    ``first`` estimates ``h D'``, ``second`` estimates ``h² D'' / 2``, so the last term is
    ``2 phi_3 second``. (k-diffusion's ``sample_dpmpp_3m_sde``, whose variable names this follows,
    multiplies ``second`` by ``phi_3`` once: measured here, that makes the method second order as
    the steps shrink, log-log slope -1.9 at 32-128 steps, against -3.1 with the factor 2;
    ``tests/test_samplers.py``.) The first step is first order (one output), the second uses one
    difference, and the step to ``sigma = 0`` returns ``D``."""
    sigmas = _check(sigmas)
    d1_prev = d2_prev = h1 = h2 = None
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = denoiser(x, s)
        h = None
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)  # lambda_next - lambda
            phi_2 = math.expm1(-h) / h + 1.0
            x = (s_next / s) * x - math.expm1(-h) * denoised
            if h2 is not None:
                r0, r1 = h1 / h, h2 / h
                first0 = (denoised - d1_prev) / r0
                first1 = (d1_prev - d2_prev) / r1
                first = first0 + (first0 - first1) * r0 / (r0 + r1)
                second = (first0 - first1) / (r0 + r1)
                x = x + phi_2 * first - 2.0 * (phi_2 / h - 0.5) * second
            elif h1 is not None:
                x = x + phi_2 * (denoised - d1_prev) / (h1 / h)
        d1_prev, d2_prev = denoised, d1_prev
        h1, h2 = h, h1
    return x
