"""Chapter 4 — score SDEs: reverse-time sampling, the probability-flow ODE, exact likelihood.

Song et al. (2021) write the forward process as an SDE, ``dx = f(t) x dt + g(t) dw``; for each
Gaussian path of ``process.py`` (VP, sub-VP, VE) ``f = d log alpha/dt`` and
``g² = d sigma²/dt - 2 f sigma²`` (``GaussianPath.f``, ``.g2``). Anderson (1982) gives its reverse
in time, driven by the score alone,

    dx = [f(t) x - g(t)² grad log p_t(x)] dt + g(t) dw_bar            (Song et al. 2021, eq. (6))

and there is a deterministic **probability-flow ODE** with the same marginals at every ``t``,

    dx/dt = f(t) x - ½ g(t)² grad log p_t(x)                          (their eq. (13))

which, being an ODE, gives exact log-likelihoods through the instantaneous change of variables
``d log p_t(x_t)/dt = -div(dx/dt)`` (Chen et al. 2018; their eq. (39)).

Conventions: time runs over ``[t_eps, 1]`` (``t_eps`` small, as the SDEs are singular or
uninformative at 0); a score model is ``score(x, t) -> grad log p_t(x)`` with ``t`` a scalar.
"""

import math

import autograd
import autograd.numpy as np
import numpy as onp
from scipy.integrate import solve_ivp


def _check_grid(t_start, t_end, steps):
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"`steps` must be a positive integer (got {steps!r})")
    if not (0 <= t_end < t_start <= 1):
        raise ValueError(f"need 0 <= t_end < t_start <= 1 (got t_start={t_start}, t_end={t_end})")
    return onp.linspace(t_start, t_end, steps + 1)


# ----------------------------------------------------------------------------- reverse SDE

def reverse_drift(score, path, x, t):
    """``f(t) x - g(t)² score(x, t)``: the reverse-time SDE's drift (Song et al. 2021, eq. (6))."""
    # BEGIN EXERCISE 4.1: the reverse-time SDE's drift (Song et al. 2021, eq. (6)); notebook 04,
    #   section 2
    return path.f(t) * x - path.g2(t) * score(x, t)
    # END EXERCISE


def euler_maruyama(score, path, x, rng, steps=500, t_start=1.0, t_end=1e-3, denoise=True,
                   return_path=False):
    """Integrate the reverse SDE from ``t_start`` down to ``t_end`` with Euler–Maruyama:
    ``x <- x - drift dt + g sqrt(dt) z`` for ``dt > 0`` going backwards in time. With ``denoise``,
    the last step adds no noise (it returns the step's mean, as score_sde does)."""
    ts = _check_grid(t_start, t_end, steps)
    if not isinstance(rng, onp.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (got {type(rng).__name__})")
    path_out = [x] if return_path else None
    for k in range(steps):
        t, dt = ts[k], ts[k] - ts[k + 1]
        x = x - reverse_drift(score, path, x, t) * dt
        if not (denoise and k == steps - 1):
            x = x + math.sqrt(path.g2(t) * dt) * rng.standard_normal(x.shape)
        if return_path:
            path_out.append(x)
    return onp.stack(path_out) if return_path else x


def langevin_corrector(score, path, x, t, t_prev, rng, snr=0.16, n_steps=1):
    """The Langevin corrector of predictor-corrector sampling (Song et al. 2021, appendix G,
    Algorithms 4-5): ``x <- x + e s + sqrt(2 e) z`` with the step set by a target signal-to-noise
    ratio, ``e = 2 a (snr |z| / |s|)²`` (norms averaged over the batch, as in the paper's code),
    where ``a`` is score_sde's ``alpha_i = 1 - beta_i`` of the step from ``t`` down to
    ``t_prev``: on a path, ``1 - beta_i = alpha_bar_i / alpha_bar_{i-1} = (alpha(t) /
    alpha(t_prev))²`` with ``t > t_prev`` (``exp(-int beta)`` for VP: 0.9801 at ``t = 0.5`` over
    500 steps, where ``1 - beta(t) dt = 0.9799``; 1 for VE, whose alpha is 1)."""
    if not (0 < snr < math.inf and isinstance(n_steps, int) and n_steps >= 0):
        raise ValueError(f"`snr` must be positive and `n_steps` a non-negative integer (got "
                         f"{snr}, {n_steps!r})")
    a = float(path.alpha(t) / path.alpha(t_prev)) ** 2 if t_prev is not None else 1.0
    for _ in range(n_steps):
        s = score(x, t)
        z = rng.standard_normal(x.shape)
        n = x.shape[0]
        s_norm = onp.linalg.norm(s.reshape(n, -1), axis=1).mean()
        z_norm = onp.linalg.norm(z.reshape(n, -1), axis=1).mean()
        # BEGIN EXERCISE 4.3: the Langevin corrector's step size from a target SNR (Song et al.
        #   2021, Algorithm 5); notebook 04, section 3
        e = 2.0 * a * (snr * z_norm / s_norm) ** 2
        # END EXERCISE
        x = x + e * s + math.sqrt(2.0 * e) * z
    return x


def predictor_corrector(score, path, x, rng, steps=500, snr=0.16, n_corrector=1, t_start=1.0,
                        t_end=1e-3):
    """PC sampling (Song et al. 2021, sec. 4.2): at each time, ``n_corrector`` Langevin corrector
    steps at the current level, then one Euler–Maruyama predictor step (the last one without
    noise)."""
    ts = _check_grid(t_start, t_end, steps)
    for k in range(steps):
        x = langevin_corrector(score, path, x, ts[k], ts[k + 1], rng, snr, n_corrector)
        x = euler_maruyama(score, path, x, rng, 1, ts[k], ts[k + 1], denoise=(k == steps - 1))
    return x


# ----------------------------------------------------------------------------- PF-ODE

def pf_ode_drift(score, path):
    """``h(x, t) = f(t) x - ½ g(t)² score(x, t)`` (Song et al. 2021, eq. (13))."""
    # BEGIN EXERCISE 4.2: the probability-flow ODE's drift (Song et al. 2021, eq. (13)); notebook
    #   04, section 2
    return lambda x, t: path.f(t) * x - 0.5 * path.g2(t) * score(x, t)
    # END EXERCISE


def heun(drift, x, ts, return_path=False):
    """Fixed-step Heun (explicit trapezoid, 2nd order) for ``dx/dt = drift(x, t)`` over the grid
    ``ts`` (either direction): ``x' = x + dt (d(x, t) + d(x + dt d(x, t), t + dt)) / 2``."""
    path_out = [x] if return_path else None
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        dt = t1 - t0
        d0 = drift(x, t0)
        x_euler = x + dt * d0
        x = x + 0.5 * dt * (d0 + drift(x_euler, t1))
        if return_path:
            path_out.append(x)
    return onp.stack(path_out) if return_path else x


def solve_ode(drift, x, t0, t1, rtol=1e-5, atol=1e-5, method="RK45"):
    """Integrate ``dx/dt = drift(x, t)`` from ``t0`` to ``t1`` with ``scipy.integrate.solve_ivp``
    (adaptive Runge-Kutta; the tolerances are the caller's). Returns ``(x(t1), nfe)``."""
    shape = x.shape
    fun = lambda t, y: onp.asarray(drift(y.reshape(shape), t), dtype=onp.float64).ravel()
    sol = solve_ivp(fun, (t0, t1), onp.asarray(x, dtype=onp.float64).ravel(), method=method,
                    rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return sol.y[:, -1].reshape(shape), sol.nfev


# ----------------------------------------------------------------------------- likelihood

def exact_divergence(fn):
    """``div_x fn(x, t)`` by autograd, one backward pass per dimension (for small ``D``).
    ``fn`` must be autograd-traceable and treat rows independently; ``x: (N, D)``."""
    def div(x, t):
        return sum(autograd.elementwise_grad(lambda y, i=i: np.sum(fn(y, t)[:, i]))(x)[:, i]
                   for i in range(x.shape[1]))
    return div


def hutchinson_divergence(fn, probes):
    """The Hutchinson–Skilling estimator ``div fn ≈ mean_k v_k^T (grad_x fn) v_k`` (Hutchinson
    1989; Skilling 1989), one vector-Jacobian product per probe. ``probes: (K, N, ...)`` drawn
    once (Rademacher or Gaussian, ``E[v v^T] = I``) and kept fixed along the whole ODE solve, as
    FFJORD (Grathwohl et al. 2019) and Song et al. (2021) do: the integrand stays smooth in t."""
    def div(x, t):
        total = 0.0
        for v in probes:
            # BEGIN EXERCISE 4.4: Hutchinson's divergence estimator with vector-Jacobian products
            #   (Hutchinson 1989); notebook 04, section 4
            vjp, _ = autograd.make_vjp(lambda y: fn(y, t))(x)
            total = total + onp.sum((vjp(v) * v).reshape(x.shape[0], -1), axis=1)
            # END EXERCISE
        return total / len(probes)
    return div


def rademacher(shape, rng):
    """Random signs ±1: the Hutchinson probe with the smallest variance for a fixed matrix."""
    return rng.choice(onp.array([-1.0, 1.0]), size=shape)


def log_likelihood(drift, divergence, x, prior_logp, t_eps=1e-5, t_end=1.0, rtol=1e-5,
                   atol=1e-5):
    """``log p_{t_eps}(x)`` by the probability-flow ODE (Song et al. 2021, eq. (39)):

        log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^{T} div h(x_t, t) dt

    solving ``[x, delta]' = [h(x, t), div h(x, t)]`` forwards from ``x`` at ``t_eps``.
    ``prior_logp(x_T) -> (N,)`` is the log-density assumed at ``t_end``. Returns
    ``(logp, x_T, nfe)``. Note the density is that of ``p_{t_eps}``, the data convolved with the
    path's noise at ``t_eps``, not of the data itself: at ``t_eps = 1e-5`` the VP path's noise std
    is ``sqrt(beta_min t_eps) = 0.001``.
    """
    n, shape = x.shape[0], x.shape

    def fun(t, y):
        xt = y[:-n].reshape(shape)
        return onp.concatenate([onp.asarray(drift(xt, t)).ravel(),
                                onp.asarray(divergence(xt, t), dtype=onp.float64)])

    y0 = onp.concatenate([onp.asarray(x, dtype=onp.float64).ravel(), onp.zeros(n)])
    sol = solve_ivp(fun, (t_eps, t_end), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    x_T, delta = sol.y[:-n, -1].reshape(shape), sol.y[-n:, -1]
    return prior_logp(x_T) + delta, x_T, sol.nfev


def gaussian_logp(x, var):
    """``log N(x; 0, var I)`` per sample, summed over all non-batch axes: the usual prior."""
    d = onp.prod(x.shape[1:])
    return -0.5 * (onp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) / var
                   + d * math.log(2 * math.pi * var))


def dequantize(pixels, rng):
    """Uniform dequantisation of 8-bit pixels (Theis et al. 2016; Uria et al. 2013):
    ``x = 2 (u + U(0, 1)) / 256 - 1``, a continuous value in ``[-1, 1)`` for ``u`` in 0..255."""
    u = onp.asarray(pixels, dtype=onp.float64)
    return 2.0 * (u + rng.uniform(size=u.shape)) / 256.0 - 1.0


def bits_per_dim(log_density, dim):
    """Bits per dimension of discrete 8-bit data from a continuous log-density on ``[-1, 1]^D``.

    With uniform dequantisation, ``-log P(u) <= E_noise[-log p(x)] - D log(2/256)``: a bin of
    width ``2/256`` per pixel. The bound holds *in expectation* over the uniform noise (Jensen's
    inequality on ``log P(u) = log E[p(x)] + D log(2/256)``, Theis et al. 2016), not for each
    draw: one dequantised sample can land below it. So
    ``bpd = (-log p(x) + D log 128) / (D log 2)``, i.e. the continuous bits plus exactly 7, is
    an upper bound on the data's bits when averaged over draws: the offset that codebases
    working on ``[-1, 1]`` must add (score_sde's ``offset = 7 - inverse_scaler(-1)``), and which
    is easy to lose.
    """
    return (-onp.asarray(log_density) + dim * math.log(128.0)) / (dim * math.log(2.0))
