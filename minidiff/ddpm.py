"""Chapter 3 — DDPM: from a noise schedule to a sampler (Ho et al. 2020).

**Time-index convention.** The paper counts steps ``t = 1 .. T``; minidiff stores every per-step
array with the array index ``i = t - 1 = 0 .. T-1``. So ``betas[i]`` is the paper's ``beta_{i+1}``,
``alpha_bar[i] = prod_{j <= i} (1 - betas[j])`` is ``alpha_bar_{i+1}``, and the network is given
``i``. The clean data ``x_0`` has no index; where a formula needs ``alpha_bar_0 = 1`` (the step
into the data), ``alpha_bar_prev[0] = 1`` provides it. diffusers uses the same 0-based indices.

1. Schedules: ``beta`` linear (Ho et al. 2020), linear in ``sqrt(beta)`` ("scaled linear", latent
   diffusion), cosine (Nichol & Dhariwal 2021); ``alpha_bar`` and the SNR.
2. The forward chain ``q(x_t | x_{t-1})`` and its one-shot marginal ``q(x_t | x_0)``; the
   posterior ``q(x_{t-1} | x_t, x_0)``.
3. The objective: ``L_simple`` (noise prediction) and the full variational bound.
4. Samplers: ancestral sampling with ``sigma_t² = beta_t`` or ``beta~_t``, and DDIM (Song, Meng &
   Ermon 2021) with ``eta`` in [0, 1] over a sub-sequence of steps.
"""

import dataclasses
import math

import autograd.numpy as np
import numpy as onp

from .nn import mean
from .process import DiscreteVP, check_step
from .targets import eps_from_x0, per_sample, x0_from_eps

# ----------------------------------------------------------------------------- 1. schedules


def linear_betas(T=1000, beta_start=1e-4, beta_end=0.02):
    """``beta`` linear from 1e-4 to 0.02 over 1000 steps (Ho et al. 2020, sec. 4)."""
    return onp.linspace(beta_start, beta_end, T, dtype=onp.float64)


def scaled_linear_betas(T=1000, beta_start=0.00085, beta_end=0.012):
    """``sqrt(beta)`` linear (the "scaled linear" schedule of latent / Stable Diffusion,
    Rombach et al. 2022; their 0.00085 .. 0.012 over 1000 steps)."""
    return onp.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=onp.float64) ** 2


def cosine_betas(T=1000, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal (2021, eq. (17)): ``alpha_bar(t) = f(t) / f(0)``,
    ``f(t) = cos²((t/T + s) / (1 + s) * pi/2)``, and ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}``
    clipped at ``max_beta = 0.999`` "to prevent singularities at the end of the diffusion
    process near t = T" (their sec. 3.2). The clip changes only the last few steps."""
    # BEGIN EXERCISE 3.1: the cosine schedule (Nichol & Dhariwal 2021, eq. (17)) with its beta clip;
    #   notebook 03, section 1
    f = lambda t: onp.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    t = onp.arange(T + 1, dtype=onp.float64)
    alpha_bar = f(t) / f(0.0)
    return onp.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)
    # END EXERCISE


SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Everything derived from ``betas: (T,)`` (array index ``i`` = paper step ``i + 1``)."""

    betas: onp.ndarray

    def __post_init__(self):
        b = onp.asarray(self.betas, dtype=onp.float64)
        if b.ndim != 1 or b.size == 0 or not onp.all((b > 0) & (b < 1)):
            raise ValueError("`betas` must be a non-empty 1-D array with values in (0, 1)")
        object.__setattr__(self, "betas", b)

    @property
    def T(self):
        return self.betas.size

    @property
    def alphas(self):
        return 1.0 - self.betas

    @property
    def alpha_bar(self):
        """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` (Ho et al. 2020, notation of eq. (4))."""
        return onp.cumprod(self.alphas)

    @property
    def alpha_bar_prev(self):
        """``alpha_bar_{t-1}``, with ``alpha_bar_0 = 1`` at index 0 (the step into the data)."""
        return onp.concatenate([[1.0], self.alpha_bar[:-1]])

    @property
    def snr(self):
        """``alpha_bar / (1 - alpha_bar)`` (Kingma et al. 2021, eq. (2) with alpha² = alpha_bar)."""
        return self.alpha_bar / (1.0 - self.alpha_bar)

    @property
    def beta_tilde(self):
        """Posterior variance ``beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``
        (Ho et al. 2020, eq. (7)); zero at the first step."""
        return (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * self.betas

    @property
    def path(self):
        """The chain's marginals as a Gaussian path: ``alpha = sqrt(alpha_bar)``, ``sigma =
        sqrt(1 - alpha_bar)`` (``process.DiscreteVP``)."""
        return DiscreteVP(self.alpha_bar)


def schedule(name="linear", T=1000, **kwargs):
    """A ``Schedule`` by name: ``"linear"``, ``"scaled_linear"`` or ``"cosine"``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: expected one of {sorted(SCHEDULES)}")
    return Schedule(SCHEDULES[name](T, **kwargs))


def _step(sched, i):
    return check_step(i, sched.T)


# ----------------------------------------------------------------------------- 2. forward chain

def q_step(sched, x_prev, i, eps):
    """One forward step ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps``
    (Ho et al. 2020, eq. (2)); ``x_prev`` is ``x_0`` when ``i = 0``."""
    b = per_sample(sched.betas[_step(sched, i)], x_prev, "beta")
    return np.sqrt(1.0 - b) * x_prev + np.sqrt(b) * eps


def q_sample(sched, x0, i, eps):
    """All steps at once: ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``
    (Ho et al. 2020, eq. (4)); ``i`` a scalar or ``(N,)``."""
    return sched.path.marginal(x0, _step(sched, i), eps)


def q_posterior(sched, x0, xt, i):
    """``q(x_{t-1} | x_t, x_0) = N(mu~, beta~_t I)`` (Ho et al. 2020, eqs. (6)-(7)):
    ``mu~ = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t``.
    Returns ``(mean, variance)``; the variance is per sample, shaped to broadcast."""
    i = _step(sched, i)
    # BEGIN EXERCISE 3.2: the forward posterior q(x_{t-1} | x_t, x0) (Ho et al. 2020, eqs. (6)-(7));
    #   notebook 03, section 3
    ab, ab_prev, b = sched.alpha_bar[i], sched.alpha_bar_prev[i], sched.betas[i]
    c0 = per_sample(onp.sqrt(ab_prev) * b / (1 - ab), xt, "coefficient")
    ct = per_sample(onp.sqrt(1 - b) * (1 - ab_prev) / (1 - ab), xt, "coefficient")
    return c0 * x0 + ct * xt, per_sample(sched.beta_tilde[i], xt, "beta_tilde")
    # END EXERCISE


def p_mean(sched, xt, i, eps_hat):
    """The reverse mean with a noise prediction (Ho et al. 2020, eq. (11)):
    ``mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t)``. It equals the
    posterior mean ``mu~(x0_hat, x_t)`` at ``x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) /
    sqrt(alpha_bar_t)`` (tests/test_ddpm.py checks the identity)."""
    i = _step(sched, i)
    # BEGIN EXERCISE 3.3: the reverse mean from a noise prediction (Ho et al. 2020, eq. (11));
    #   notebook 03, section 3
    b = per_sample(sched.betas[i], xt, "beta")
    ab = per_sample(sched.alpha_bar[i], xt, "alpha_bar")
    return (xt - b / np.sqrt(1.0 - ab) * eps_hat) / np.sqrt(1.0 - b)
    # END EXERCISE


# ----------------------------------------------------------------------------- 3. objectives

def l_simple(eps_model):
    """``L_simple = E_{t, x0, eps} |eps - eps_theta(x_t, t)|²`` (Ho et al. 2020, eq. (14)),
    summed over dimensions, averaged over the batch. ``eps_model(params, x_t, i)``; returns
    ``loss(params, batch)`` with ``batch = {"x0", "i" (int, (N,)), "eps"}`` and the schedule
    already applied: ``batch["xt"]`` is formed by ``ddpm_batches``."""
    def loss(params, batch):
        resid = eps_model(params, batch["xt"], batch["i"]) - batch["eps"]
        return mean(np.sum(np.reshape(resid**2, (resid.shape[0], -1)), axis=1))
    return loss


def ddpm_batches(sched, data, batch_size, dtype=onp.float32):
    """``batch_fn(rng)``: data points, a uniform step index ``i`` per point, the noise, and
    ``x_t = q_sample(x0, i, eps)``."""
    data = onp.asarray(data, dtype=dtype)

    def batch_fn(rng):
        x0 = data[rng.integers(0, data.shape[0], size=batch_size)]
        i = rng.integers(0, sched.T, size=batch_size)
        eps = rng.standard_normal(x0.shape, dtype=dtype)
        xt = q_sample(sched, x0, i, eps).astype(dtype)
        return {"x0": x0, "i": i, "eps": eps, "xt": xt}
    return batch_fn


def _gaussian_kl(mean1, var1, mean2, var2):
    """``KL(N(mean1, var1 I) || N(mean2, var2 I))`` summed over the last axis; variances
    broadcast as ``(N, 1)``."""
    d = mean1.shape[-1]
    return 0.5 * (d * (var1 / var2 - 1.0 + onp.log(var2 / var1))[:, 0]
                  + onp.sum((mean1 - mean2) ** 2, axis=-1) / var2[:, 0])


def vlb(eps_fn, sched, x0, rng, variance="beta_tilde"):
    """The variational bound ``-log p(x0) <= L_T + sum_{t=2}^T L_{t-1} + L_0`` in nats, per point
    (Ho et al. 2020, eq. (5)), for flat data ``x0: (N, D)``; ``eps_fn(x_t, i)``.

    ``L_T = KL(q(x_T|x_0) || N(0, I))``; ``L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t))``
    with one draw of ``x_t`` per term; ``L_0 = -log N(x_0; mu(x_1, 1), beta_1 I)``. minidiff
    departs from the paper at ``L_0``: Ho et al. use a discretised decoder for 8-bit images; for
    continuous 2D data a Gaussian decoder with variance ``beta_1`` is the natural choice (with
    ``beta~_1 = 0`` it would be degenerate). Returns ``(total, terms)``, ``terms: (N, T+1)`` as
    ``[L_0, L_1, ..., L_{T-1}, L_T]``.
    """
    x0 = onp.asarray(x0, dtype=onp.float64)
    n, d = x0.shape
    var_p = _reverse_variance(sched, variance)
    ab_T = sched.alpha_bar[-1]
    ones = onp.ones((n, 1))
    terms = [None] * (sched.T + 1)
    terms[sched.T] = _gaussian_kl(onp.sqrt(ab_T) * x0, (1 - ab_T) * ones, 0 * x0, ones)
    for i in range(sched.T):
        xt = q_sample(sched, x0, i, rng.standard_normal(x0.shape))
        mu = p_mean(sched, xt, i, onp.asarray(eps_fn(xt, i), dtype=onp.float64))
        if i == 0:  # L_0: Gaussian decoder N(mu(x_1, 1), beta_1 I)
            b = sched.betas[0]
            terms[0] = 0.5 * (onp.sum((x0 - mu) ** 2, axis=1) / b + d * math.log(2 * math.pi * b))
        else:
            mu_q, var_q = q_posterior(sched, x0, xt, i)
            terms[i] = _gaussian_kl(mu_q, var_q * ones, mu, var_p[i] * ones)
    terms = onp.stack(terms, axis=1)
    return terms.sum(axis=1), terms


# ----------------------------------------------------------------------------- 4. samplers

def _reverse_variance(sched, variance):
    """``sigma_t²`` of the reverse kernel: ``beta_t`` or ``beta~_t``. Ho et al. (2020, sec. 3.2):
    the first is optimal for ``x0 ~ N(0, I)``, the second for ``x0`` one fixed point, and both
    worked equally well; only for data of unit variance are they the upper and lower bounds on
    the reverse process entropy (Sohl-Dickstein et al. 2015), not bounds for any data."""
    if variance == "beta":
        return sched.betas
    if variance == "beta_tilde":
        return sched.beta_tilde
    raise ValueError(f"`variance` must be 'beta' or 'beta_tilde' (got {variance!r})")


def ancestral_sample(eps_fn, sched, x, rng, variance="beta", return_path=False):
    """Ho et al. (2020, Algorithm 2): from ``x = x_T ~ N(0, I)``, for ``t = T .. 1``,
    ``x_{t-1} = mu(x_t, t) + sigma_t z`` with ``z ~ N(0, I)`` for ``t > 1`` and ``z = 0`` at the
    last step. ``eps_fn(x_t, i)`` with the 0-based index ``i = t - 1``. Returns ``x_0`` (or the
    path ``(T + 1, N, ...)``)."""
    var = _reverse_variance(sched, variance)
    if not isinstance(rng, onp.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (got {type(rng).__name__}): "
                        "ancestral sampling adds noise at every step")
    path = [x] if return_path else None
    for i in reversed(range(sched.T)):
        # BEGIN EXERCISE 3.4: one step of ancestral sampling (Ho et al. 2020, Algorithm 2); notebook
        #   03, section 5
        mu = p_mean(sched, x, i, eps_fn(x, i))
        x = mu + math.sqrt(var[i]) * rng.standard_normal(x.shape) if i > 0 else mu
        # END EXERCISE
        if return_path:
            path.append(x)
    return onp.stack(path) if return_path else x


def ddim_timesteps(T, steps, spacing="leading"):
    """``steps`` increasing array indices out of ``0 .. T-1``, by the named spacing (the names of
    Lin et al. 2024, table 2):

    - ``"leading"``: ``0, k, 2k, ...`` with ``k = T // steps`` (the DDIM code's "uniform" skip,
      and diffusers' default); it never visits the last index, so sampling starts at ``T - k``.
    - ``"trailing"``: ``T-1, T-1-k', ...`` counted back from the last index, ``k' = T / steps``;
      starts from pure noise, as Lin et al. recommend.
    - ``"linspace"``: ``round(linspace(0, T - 1, steps))``: both ends included.
    """
    if not (isinstance(steps, int | onp.integer) and 1 <= steps <= T):
        raise ValueError(f"`steps` must be an integer in [1, {T}] (got {steps!r})")
    if spacing == "leading":
        return onp.arange(steps) * (T // steps)
    if spacing == "trailing":
        return onp.sort(onp.round(onp.arange(T, 0, -T / steps)).astype(int) - 1)
    if spacing == "linspace":
        return onp.round(onp.linspace(0, T - 1, steps)).astype(int)
    raise ValueError(f"`spacing` must be 'leading', 'trailing' or 'linspace' (got {spacing!r})")


def ddim_sample(eps_fn, sched, x, rng=None, steps=50, eta=0.0, spacing="leading",
                clip_x0=None, return_path=False):
    """DDIM (Song, Meng & Ermon 2021, eq. (12)) over a sub-sequence ``tau`` of steps: from
    ``x = x_{tau_S}``, for each ``i = tau_k`` with predecessor ``j = tau_{k-1}`` (the data at the
    end, ``alpha_bar = 1``):

        x0_hat = (x - sqrt(1 - alpha_bar_i) eps) / sqrt(alpha_bar_i)
        x      = sqrt(alpha_bar_j) x0_hat + sqrt(1 - alpha_bar_j - s²) eps + s z
        s      = eta sqrt((1 - alpha_bar_j) / (1 - alpha_bar_i)) sqrt(1 - alpha_bar_i / alpha_bar_j)

    (their eq. (16)). ``eta = 0`` is deterministic (the probability-flow ODE's discretisation);
    ``eta = 1`` with every step is DDPM with ``sigma_t² = beta~_t``. ``rng`` is needed when
    ``eta > 0``. Returns the final ``x`` or the path ``(steps + 1, N, ...)``.

    ``clip_x0 = (lo, hi)`` clips ``x0_hat`` to the data range and re-derives ``eps`` from the
    clipped value, as Ho et al.'s and ADM's image samplers do (``clip_denoised=True``): not part
    of the paper's equations, but it keeps an imperfect network's early, wild ``x0`` guesses
    inside the data range. Off by default (2D data have no range).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must lie in [0, 1] (got {eta})")
    if eta > 0 and rng is None:
        raise ValueError("`rng` is needed when eta > 0 (the update adds noise)")
    if clip_x0 is not None and not (len(clip_x0) == 2 and clip_x0[0] < clip_x0[1]):
        raise ValueError(f"`clip_x0` must be a range (lo, hi) with lo < hi (got {clip_x0!r})")
    tau = ddim_timesteps(sched.T, steps, spacing)
    path, trace = sched.path, ([x] if return_path else None)
    for k in reversed(range(len(tau))):
        i = int(tau[k])
        a_i, s_i = float(path.alpha(i)), float(path.sigma(i))
        # the step's destination j = tau[k-1]; past the first step, the data: alpha 1, sigma 0
        a_j, s_j = (float(path.alpha(int(tau[k - 1]))), float(path.sigma(int(tau[k - 1])))) \
            if k > 0 else (1.0, 0.0)
        eps = eps_fn(x, i)
        x0_hat = x0_from_eps(eps, x, a_i, s_i)
        if clip_x0 is not None:
            x0_hat = onp.clip(x0_hat, *clip_x0)
            eps = eps_from_x0(x0_hat, x, a_i, s_i)
        # eq. (16) with alpha_bar = alpha²: s = eta (s_j / s_i) sqrt(1 - alpha_i² / alpha_j²)
        s = eta * s_j / s_i * math.sqrt(max(1.0 - (a_i / a_j) ** 2, 0.0))
        x = a_j * x0_hat + math.sqrt(max(s_j * s_j - s * s, 0.0)) * eps
        if s > 0:
            x = x + s * rng.standard_normal(x.shape)
        if return_path:
            trace.append(x)
    return onp.stack(trace) if return_path else x


def ddim_invert(eps_fn, sched, x0, steps=50, spacing="leading"):
    """Run the deterministic DDIM update forwards, data to noise ("DDIM inversion"): the same
    update as ``ddim_sample`` with ``eta = 0`` and the roles of ``i`` and ``j`` swapped. The noise
    prediction for the move ``j -> i`` is taken at the current point with the destination's index,
    ``eps(x_j, i)``: the one-step lag that makes inversion exact only as the step count grows."""
    tau = ddim_timesteps(sched.T, steps, spacing)
    path, x = sched.path, x0
    for k in range(len(tau)):
        i = int(tau[k])
        a_j, s_j = (float(path.alpha(int(tau[k - 1]))), float(path.sigma(int(tau[k - 1])))) \
            if k > 0 else (1.0, 0.0)
        eps = eps_fn(x, i)
        x0_hat = x0_from_eps(eps, x, a_j, s_j) if k > 0 else x
        x = float(path.alpha(i)) * x0_hat + float(path.sigma(i)) * eps
    return x
