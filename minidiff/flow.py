"""Chapter 10 — rectified flow: straight paths, the velocity target, SD3's time densities, reflow.

**The convention, once.** minidiff's linear path (``process.Linear``) puts the data at ``t = 0``
and the noise at ``t = 1``:

    x_t = (1 - t) x0 + t eps,        u = d x_t / dt = eps - x0,

and a flow model ``v(x, t)`` regresses ``u`` (flow matching, Lipman et al. 2023, sec. 4.1: the
optimal-transport path with ``sigma_min = 0``; rectified flow, Liu et al. 2023, eq. (1)). SD3
writes the same (Esser et al. 2024, sec. 2, ``z_t = a_t x_0 + b_t eps`` with ``a_t = 1 - t``,
``b_t = t``). Liu et al. and the seed article write it the other
way round, ``X_t = t X_1 + (1 - t) X_0`` with ``X_0`` the noise and ``X_1`` the data, velocity
``X_1 - X_0``: their ``t`` is our ``1 - t`` and their velocity is our ``-u``. Every formula below
is in minidiff's form; sampling integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``.

**The velocity is a score network.** On this path ``targets.convert`` turns a velocity into eps,
x0 or the score (``eps = x_t + (1 - t) u``, ``x0 = x_t - t u``), and the errors convert with it:

    |u_hat - u|² = |x0_hat - x0|² / t² = |eps_hat - eps|² / (1 - t)²        (per example)

so the flow-matching loss *is* an x0 loss weighted by ``1 / t²``, an eps loss weighted by
``1 / (1 - t)²`` (``error_factors``; the seed's "equals v-prediction up to weighting", made exact).
What SD3 changes is where in ``t`` the training effort goes: its time densities (sec. 3.1) put
more samples in the middle (logit-normal, mode) — equivalently, a weight on the loss.

**Reflow** (Liu et al. 2023, sec. 2.2): a trained flow's ODE couples each noise ``x_1`` with a
sample ``x_0``; training a new flow on those pairs (instead of independent ones) makes the
trajectories straighter, so that few Euler steps — one, in the limit — suffice.
``straightness`` measures it (their ``S``, sec. 2.2, with their time reversed).
"""

import math

import autograd.numpy as np
import numpy as onp
from scipy import special

from . import process, sde, train
from .models import mlp
from .targets import prediction_loss, x0_error_factor

PATH = process.Linear()


def error_factors(t):
    """``{"x0": 1/t², "eps": 1/(1-t)²}``: the weights ``w`` with ``|u_hat - u|² = w |kind_hat -
    kind|²`` on the linear path, from ``targets.x0_error_factor`` (the velocity's factor, divided by
    eps's for the eps frame)."""
    t = onp.asarray(t, dtype=onp.float64)
    a, s, da, ds = PATH.alpha(t), PATH.sigma(t), PATH.dalpha(t), PATH.dsigma(t)
    u = x0_error_factor("velocity", a, s, da, ds)
    return {"x0": u, "eps": u / x0_error_factor("eps", a, s)}


# ----------------------------------------------------------------------------- SD3's time densities

def logit_normal(n, rng, m=0.0, s=1.0):
    """``t = sigmoid(m + s z)``, ``z ~ N(0, 1)`` (Esser et al. 2024, eq. (19)): the logit of ``t``
    is normal, so the middle of the path is sampled most; SD3's best is ``m = 0, s = 1``."""
    return special.expit(m + s * rng.standard_normal(n))


def logit_normal_pdf(t, m=0.0, s=1.0):
    """``pi(t) = exp(-(logit t - m)² / (2 s²)) / (s sqrt(2 pi) t (1 - t))`` (their eq. (19))."""
    t = onp.asarray(t, dtype=onp.float64)
    return onp.exp(-(special.logit(t) - m) ** 2 / (2 * s * s)) / (
        s * math.sqrt(2 * math.pi) * t * (1 - t))


def _f_mode(u, scale):
    """``f(u) = 1 - u - scale (cos²(pi u / 2) - 1 + u)`` (Esser et al. 2024, eq. (20)): decreasing
    in ``u`` for ``-1 <= scale <= 2 / (pi - 2)``; ``scale = 0`` is uniform."""
    return 1.0 - u - scale * (onp.cos(math.pi * u / 2) ** 2 - 1.0 + u)


def mode_sample(n, rng, scale=1.29):
    """Mode sampling with heavy tails: ``t = f_mode(u)``, ``u ~ U(0, 1)`` (their eq. (20); SD3's
    ``mode(1.29)``). Unlike the logit-normal, its density stays positive at both ends."""
    if not -1.0 <= scale <= 2 / (math.pi - 2):
        raise ValueError(f"`scale` must lie in [-1, 2/(pi - 2)] (got {scale}) for f_mode to be "
                         "monotone")
    return _f_mode(rng.uniform(size=n), scale)


def mode_pdf(t, scale=1.29, grid=20001):
    """The density of ``mode_sample``: ``1 / |f'(u)|`` at ``u = f^-1(t)``, the inverse read off a
    fine grid (``f`` is monotone)."""
    u = onp.linspace(0.0, 1.0, grid)
    f = _f_mode(u, scale)[::-1]  # increasing
    slope = onp.abs(-1.0 - scale * (1.0 - math.pi / 2 * onp.sin(math.pi * u)))[::-1]
    return 1.0 / onp.interp(onp.asarray(t, dtype=onp.float64), f, slope)


def cosmap(n, rng):
    """CosMap: ``t = 1 - 1 / (tan(pi u / 2) + 1)``, ``u ~ U(0, 1)`` (Esser et al. 2024, eq. (21)):
    the cosine schedule's log-SNR mapped onto the linear path."""
    return 1.0 - 1.0 / (onp.tan(math.pi * rng.uniform(size=n) / 2) + 1.0)


def cosmap_pdf(t):
    """``pi(t) = 2 / (pi (1 - 2 t + 2 t²))`` (their eq. (21), the derivative of the inverse)."""
    t = onp.asarray(t, dtype=onp.float64)
    return 2.0 / (math.pi * (1.0 - 2.0 * t + 2.0 * t * t))


DENSITIES = {"uniform": (lambda n, rng: rng.uniform(size=n), lambda t: onp.ones_like(t)),
             "logit_normal": (logit_normal, logit_normal_pdf),
             "mode": (mode_sample, mode_pdf), "cosmap": (cosmap, cosmap_pdf)}


def sample_times(density, n, rng, t_min=1e-4):
    """``n`` times from one of ``DENSITIES``, kept in ``[t_min, 1 - t_min]`` (float rounding can
    reach the ends)."""
    if density not in DENSITIES:
        raise ValueError(f"`density` must be one of {sorted(DENSITIES)} (got {density!r})")
    return onp.clip(DENSITIES[density][0](n, rng), t_min, 1.0 - t_min)


# ----------------------------------------------------------------------------- training

def batches(data, batch_size, density="uniform", pairs=None, dtype=onp.float32):
    """``batch_fn(rng)`` for ``targets.prediction_loss(net, "velocity")``: data ``x0``, times from
    ``density``, ``x_t`` on the linear path and its coefficients (``process.path_batches``' keys).
    The noise is independent of ``x0`` — unless ``pairs`` (noise ``(N, ...)`` aligned with
    ``data``) gives a coupling: reflow trains on ``(x0_i, x1_i)`` drawn together."""
    data = onp.asarray(data, dtype=dtype)
    if pairs is not None and onp.shape(pairs) != data.shape:
        raise ValueError(f"`pairs` must have the shape of `data` {data.shape} (got "
                         f"{onp.shape(pairs)})")

    def batch_fn(rng):
        idx = rng.integers(0, data.shape[0], size=batch_size)
        t = sample_times(density, batch_size, rng)
        eps = onp.asarray(pairs[idx], dtype) if pairs is not None \
            else rng.standard_normal(data[idx].shape, dtype=dtype)
        x0 = data[idx]
        coef = {k: getattr(PATH, k)(t).astype(dtype) for k in ("alpha", "sigma", "dalpha",
                                                                "dsigma")}
        return {"x0": x0, "t": t.astype(dtype), "eps": eps,
                "xt": PATH.marginal(x0, t, eps).astype(dtype), **coef}
    return batch_fn


def toy_net(params, x, t):
    """The 2D velocity network: chapter 1's MLP with the time embedded as ``1000 t``."""
    return mlp.apply(params, x, 1000.0 * t)


def fit_toy(batch_fn, steps, seed=0, lr=2e-3, init=None, progress=False):
    """Train ``toy_net`` on ``batch_fn`` (``batches``) by flow matching; ``init`` starts from
    given parameters (reflow may start from the flow it straightens). Returns ``(params,
    losses)`` (the EMA parameters)."""
    params = init if init is not None else mlp.init(onp.random.default_rng(seed), hidden=128,
                                                    depth=3, emb_dim=32)
    state = train.init_state(params, seed + 1)
    state, losses = train.fit(prediction_loss(toy_net, "velocity"), state, batch_fn, steps,
                              lr=lr, warmup=100, cooldown=steps // 5, progress=progress,
                              desc="flow")
    return state.ema, losses


# ----------------------------------------------------------------------------- sampling

def time_grid(steps, shift=1.0, t_max=1.0, t_min=0.0):
    """``steps + 1`` times from ``t_max`` (1) to ``t_min`` (0), uniform, then shifted by ``t' =
    shift t / (1 + (shift - 1) t)`` (Esser et al. 2024, eq. (23): ``shift > 1`` spends more steps
    at high noise; SD3 samples with 3). The exact mixture velocity (``process.oracle``) is
    singular at both ends (``alpha = 0`` at 1, ``sigma = 0`` at 0): give it ``t_max < 1`` and
    ``t_min > 0``; a network is defined at both."""
    if not (isinstance(steps, int | onp.integer) and steps >= 1):
        raise ValueError(f"`steps` must be a positive integer (got {steps!r})")
    if not shift > 0:
        raise ValueError(f"`shift` must be positive (got {shift!r})")
    if not 0 <= t_min < t_max <= 1:
        raise ValueError(f"need 0 <= `t_min` < `t_max` <= 1 (got {t_min}, {t_max})")
    t = onp.linspace(t_max, t_min, steps + 1)
    return shift * t / (1.0 + (shift - 1.0) * t)


def sigma_grid(ts):
    """The sigma-frame grid of a time grid: ``s = sigma / alpha = t / (1 - t)`` (``Linear.
    t_from_ratio`` inverts it). ``t = 1`` is ``s = inf``: the chapter-5 samplers cannot start
    there, the flow's own can."""
    ts = onp.asarray(ts, dtype=onp.float64)
    if onp.any(ts >= 1):
        raise ValueError("a sigma grid needs every t < 1 (t = 1 is sigma = inf)")
    return ts / (1.0 - ts)


def euler(velocity, x, ts, return_path=False):
    """Euler on ``dx/dt = v(x, t)`` over ``ts`` (decreasing): ``x <- x + (t' - t) v(x, t)``. On the
    linear path this is DDIM, and the same as ``samplers.euler`` on ``sigma_grid(ts)`` (a test
    holds it): the step keeps ``x0_hat`` and ``eps_hat`` and moves ``t``."""
    out = [x]
    for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
        x = x + (t1 - t0) * velocity(x, t0)
        out.append(x)
    return onp.stack(out) if return_path else x


def heun(velocity, x, ts, return_path=False):
    """Heun (2nd order) on the flow ODE: ``sde.heun``; its last stage evaluates ``v`` at ``t =
    0``, which the flow defines (Karras et al.'s sigma-frame Heun must skip it at ``sigma = 0``)."""
    return sde.heun(velocity, x, ts, return_path)


SOLVERS = {"euler": euler, "heun": heun}


# ----------------------------------------------------------------------------- straightness, reflow

def straightness(velocity, x1, steps=100, ts=None):
    """Liu et al. 2023's straightness (sec. 2.2), ``S = int_0^1 E |(x_1 - x_0) - v(x_t, t)|² dt``
    along the flow's own trajectories from the noise ``x1`` (Euler, ``steps`` steps, the integral
    as the mean over the grid, or over ``ts``); 0 iff every trajectory is a straight line at
    constant speed. Returns ``(S, x0)`` with ``x0`` the trajectories' ends."""
    ts = time_grid(steps) if ts is None else ts
    # BEGIN EXERCISE 10.4: straightness: the velocity's mean squared deviation from the straight
    #   displacement along Euler trajectories (Liu et al. 2023, sec. 2.2); notebook 10, section 5
    x, vs = x1, []
    for k in range(len(ts) - 1):  # Euler from t = 1 down, keeping each step's velocity
        vs.append(velocity(x, ts[k]))
        x = x + (ts[k + 1] - ts[k]) * vs[-1]
    d = (x1 - x) / (ts[0] - ts[-1])  # the straight displacement per unit time
    dev = [onp.sum(onp.reshape((d - v) ** 2, (len(x1), -1)), axis=1) for v in vs]
    # END EXERCISE
    return float(onp.mean(dev)), x


def reflow_pairs(velocity, x1, steps=100, solver="heun", ts=None):
    """The coupling a flow induces: each noise ``x1`` with the sample its ODE reaches at ``t = 0``
    (Liu et al. 2023, Algorithm 1: ``(Z_0, Z_1)`` of the k-rectified flow). Returns ``x0``, aligned
    with ``x1``; train on them with ``batches(x0, ..., pairs=x1)``."""
    return SOLVERS[solver](velocity, x1, time_grid(steps) if ts is None else ts)


def one_step_error(velocity, x1, x0_exact, steps=1, **grid):
    """Mean squared distance between ``steps`` Euler steps from ``x1`` (``time_grid(steps,
    **grid)``) and the endpoint of the exact ODE from the same ``x1``."""
    x = euler(velocity, x1, time_grid(steps, **grid))
    return float(onp.mean(onp.sum(onp.reshape((x - x0_exact) ** 2, (len(x1), -1)), axis=1)))


def velocity_error(velocity, exact, x0, rng, ts=(0.1, 0.3, 0.5, 0.7, 0.9)):
    """``E |v(x_t, t) - u*(x_t, t)|²`` at each time of ``ts``, ``x_t`` on the path from data
    ``x0``, against the exact marginal velocity ``exact`` (``process.oracle(mixture, PATH,
    "velocity")``). Returns ``{t: error}``."""
    out = {}
    for t in ts:
        xt = PATH.marginal(x0, t, rng.standard_normal(x0.shape))
        out[float(t)] = float(np.mean(np.sum((velocity(xt, t) - exact(xt, t)) ** 2, axis=1)))
    return out
