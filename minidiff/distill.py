"""Chapter 12 — few-step sampling: solvers against evaluations, progressive distillation and
consistency models.

Every sampler of the book solves the probability-flow ODE of one network; its cost is the number
of network evaluations (NFE). Two ways to spend fewer:

**Better solvers, the same network.** ``SOLVERS`` (DDIM, which in the sigma frame of
``samplers.py`` is exactly Euler; Heun; DPM-Solver++(2M) and (3M)) on ``GRIDS`` (Karras et al.'s
``rho = 7`` grid; uniform in ``lambda = -log sigma``); ``solver_levels`` gives each the grid on
which it spends a given NFE.

**Progressive distillation** (Salimans & Ho 2022). A student learns to take in one DDIM step
what its teacher takes in two. On a path ``z_t = alpha_t x + sigma_t eps`` the deterministic
DDIM step from ``t`` to ``s`` with a prediction ``x_hat`` of the data is

    z_s = alpha_s x_hat + sigma_s eps_hat,     eps_hat = (z_t - alpha_t x_hat) / sigma_t

(Song, Meng & Ermon 2021, eq. (12) with ``sigma = 0``; ``ddim_step``). The teacher steps ``t ->
t' -> t''``; the student's target is the ``x_tilde`` for which one DDIM step ``t -> t''`` lands
exactly where the teacher's two did:

    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

(their Algorithm 2, the line defining ``x_tilde``; ``distillation_target``;
``progressive_target`` in the sigma frame). The loss is weighted by ``max(SNR, 1)``
(``truncated_snr_weight``); each round's student starts from its teacher and halves the steps.

**Consistency models** (Song et al. 2023) learn ``f(x, sigma)``: the end at ``sigma_min`` of the
probability-flow ODE's trajectory through ``x`` at ``sigma``. The boundary condition ``f(x,
sigma_min) = x`` is built into the network,

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, ln(sigma) / 4),
    c_skip = sd² / ((sigma - sigma_min)² + sd²),
    c_out = (sigma - sigma_min) sd / sqrt(sigma² + sd²)

(EDM's scalings shifted so that ``c_skip = 1`` and ``c_out = 0`` at ``sigma_min``; the values of
the paper's code, ``get_scalings_for_boundary_condition``, with ``c_in = 1 / sqrt(sigma² +
sd²)`` and EDM's ``c_noise``; ``consistency_from_denoiser`` is the form for a network that
predicts the data). *Distillation* pulls ``f(x, sigma_n)`` towards an EMA copy of ``f`` at the
teacher's one Heun step down to ``sigma_{n+1}`` (``consistency_batch``); *training* replaces the
step by the same data point and noise one level down (``consistency_training_batch``), with Song
& Dhariwal's (2023) growing grid, lognormal levels, weights and pseudo-Huber distance
(``ict_levels``, ``ict_level_probabilities``, ``pseudo_huber``). Sampling evaluates ``f`` at
the noise, then alternately adds noise back to a lower level ``tau`` and evaluates ``f`` again
(their Algorithm 1; ``multistep_sample``).

Everything is exact on 2D data (``mixture_denoiser``; ``fit_toy_progressive``,
``fit_toy_consistency``); ``distill_mnist.py`` applies it to the shipped U-Net, and
``distill_latent.py`` to chapter 8's latent model with the guidance scale as an input (a latent
consistency model, Luo et al. 2023).
"""

import math

import numpy as onp
from autograd.tracer import getval

from . import samplers
from .targets import check_positive, eps_from_x0, per_sample

# ----------------------------------------------------------------------------- solvers by NFE

SOLVERS = {"ddim": samplers.euler, "heun": samplers.heun,
           "dpm2m": samplers.dpm_solver_pp_2m, "dpm3m": samplers.dpm_solver_pp_3m}
GRIDS = {"karras": samplers.karras_sigmas, "lambda": samplers.lambda_sigmas}


def solver_levels(solver, nfe, grid, sigma_min, sigma_max):
    """The grid on which ``solver`` spends at most ``nfe`` network evaluations, and the count
    it spends: ``(sigmas, nfe_used)``. DDIM (Euler in the sigma frame: Song et al. 2021's DDIM is
    exactly Euler on ``x / alpha``) and the multistep DPM-Solvers spend one per step; Heun two,
    but one on its last step (Euler to 0), so ``s`` steps cost ``2 s - 1``."""
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {sorted(SOLVERS)} (got {solver!r})")
    if grid not in GRIDS:
        raise ValueError(f"`grid` must be one of {sorted(GRIDS)} (got {grid!r})")
    if not (isinstance(nfe, int | onp.integer) and nfe >= 2 + (solver == "heun")):
        raise ValueError(f"`nfe` must be an integer >= {2 + (solver == 'heun')} for {solver} "
                         f"(got {nfe!r})")
    steps = (nfe + 1) // 2 if solver == "heun" else nfe
    used = 2 * steps - 1 if solver == "heun" else steps
    return GRIDS[grid](int(steps), sigma_min, sigma_max), used


def solve(denoiser, solver, sigmas, x):
    """``x`` (noise of std ``sigmas[0]``) carried down ``sigmas`` by ``solver``."""
    return SOLVERS[solver](denoiser, x, sigmas)



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
    # BEGIN EXERCISE 12.1: progressive distillation's target (Salimans & Ho 2022, Algorithm 2);
    #   notebook 12, section 2
    ratio = per_sample(sigma_next, z, "sigma_next") / per_sample(sigma, z, "sigma", positive=True)
    return (z_next - ratio * z) / (per_sample(alpha_next, z, "alpha_next")
                                   - ratio * per_sample(alpha, z, "alpha"))
    # END EXERCISE


# ----------------------------------------------------------------------------- consistency models

def consistency_scalings(sigma, sigma_min=0.002, sigma_data=0.5):
    """``(c_skip, c_out, c_in)`` of the consistency parametrisation at ``sigma >= sigma_min``
    (module docstring): ``c_skip(sigma_min) = 1`` and ``c_out(sigma_min) = 0`` exactly."""
    sigma = onp.asarray(getval(sigma), dtype=onp.float64)
    check_positive(sigma_min, "sigma_min", why=": the consistency function's smallest level")
    check_positive(sigma_data, "sigma_data", why=": it is the data's standard deviation")
    if not onp.all(sigma >= sigma_min):
        raise ValueError(f"`sigma` must be >= sigma_min = {sigma_min} (got {sigma.min()})")
    # BEGIN EXERCISE 12.2: the consistency scalings with the boundary condition built in (Song et
    #   al. 2023, their code's get_scalings_for_boundary_condition); notebook 12, section 3
    root = onp.sqrt(sigma**2 + sigma_data**2)
    return (sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
            (sigma - sigma_min) * sigma_data / root, 1.0 / root)
    # END EXERCISE


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
    # BEGIN EXERCISE 12.4: multistep consistency sampling (Song et al. 2023, Algorithm 1);
    #   notebook 12, section 3
    x = f(x, sigma_max)
    for tau in taus:
        x = f(x + math.sqrt(tau**2 - sigma_min**2) * rng.standard_normal(x.shape), tau)
    return x
    # END EXERCISE


def denoiser_scalings(sigma, sigma_min=0.002, sigma_data=0.5):
    """``(c_skip, c_out)`` for a consistency function built on a *denoiser* ``D ≈ E[x0 | x]``,
    ``f = c_skip x + c_out D`` (the form of Luo et al. 2023, whose network predicts ``x0``):
    ``c_skip`` as above and ``c_out = (sigma - sigma_min) / sqrt((sigma - sigma_min)² + sd²)``,
    which tends to 1, so that far from ``sigma_min`` the function is the denoiser and a student
    can start from its teacher. ``c_skip(sigma_min) = 1`` and ``c_out(sigma_min) = 0``."""
    c_skip, _, _ = consistency_scalings(sigma, sigma_min, sigma_data)
    gap = onp.asarray(getval(sigma), dtype=onp.float64) - sigma_min
    return c_skip, gap / onp.sqrt(gap**2 + sigma_data**2)


def consistency_from_denoiser(denoise, sigma_min=0.002, sigma_data=0.5):
    """``f(params, x, sigma, *cond) = c_skip x + c_out denoise(params, x, sigma, *cond)``
    (``denoiser_scalings``); ``sigma`` per sample ``(N,)`` or a scalar."""
    def f(params, x, sigma, *cond):
        c_skip, c_out = denoiser_scalings(sigma, sigma_min, sigma_data)
        c_skip, c_out = (per_sample(c.astype(x.dtype), x) for c in (c_skip, c_out))
        return c_skip * x + c_out * denoise(params, x, sigma, *cond)
    return f


# ----------------------------------------------------------------------------- training targets
# Everything below works in the sigma frame (alpha = 1, x = x0 + sigma eps) with one noise level
# per sample: ``sigma`` is ``(N,)``. A teacher is a denoiser ``teacher(x, sigma) ≈ E[x0 | x]``.

def heun_step(denoiser, x, sigma, sigma_next):
    """One step of Heun's method on the probability-flow ODE ``dx/dsigma = (x - D) / sigma``
    from ``sigma`` to ``sigma_next > 0``, per sample: the teacher's ODE solver of consistency
    distillation (Song et al. 2023, sec. 4, with EDM's Heun solver; ``samplers.heun``'s step).
    The levels take ``x``'s dtype, so float32 images stay float32."""
    sigma, sigma_next = (onp.asarray(v, dtype=x.dtype) for v in (sigma, sigma_next))
    s = per_sample(sigma, x, "sigma", positive=True)
    s_next = per_sample(sigma_next, x, "sigma_next", positive=True)
    d = eps_from_x0(denoiser(x, sigma), x, 1.0, sigma)
    x_euler = x + (s_next - s) * d
    return x + (s_next - s) * 0.5 * (d + eps_from_x0(denoiser(x_euler, sigma_next), x_euler,
                                                     1.0, sigma_next))


def progressive_target(teacher, x, sigma, sigma_mid, sigma_next):
    """Progressive distillation's regression target in the sigma frame: the teacher's two DDIM
    steps ``sigma -> sigma_mid -> sigma_next`` (``sigma_next`` may be 0), then the ``x_tilde``
    whose one DDIM step lands there (``distillation_target`` with ``alpha = 1``). The levels take
    ``x``'s dtype."""
    sigma, sigma_mid, sigma_next = (onp.asarray(v, dtype=x.dtype)
                                    for v in (sigma, sigma_mid, sigma_next))
    x_mid = ddim_step(teacher(x, sigma), x, 1.0, sigma, 1.0, sigma_mid)
    x_next = ddim_step(teacher(x_mid, sigma_mid), x_mid, 1.0, sigma_mid, 1.0, sigma_next)
    return distillation_target(x, x_next, 1.0, sigma, 1.0, sigma_next)


def truncated_snr_weight(sigma):
    """``max(SNR, 1)`` with ``SNR = 1 / sigma²`` in the sigma frame: Salimans & Ho's (2022,
    sec. 4) "truncated SNR" weighting of the ``x0`` loss, which is the ``eps`` loss at low noise
    and does not vanish at high noise, where a few-step student does most of its work."""
    return onp.maximum(1.0 / onp.asarray(sigma, dtype=onp.float64) ** 2, 1.0)


def pseudo_huber(a, b, c):
    """``sqrt(|a - b|² + c²) - c`` per sample, over all but the first axis (Song & Dhariwal 2023,
    sec. 3.3): like ``|a - b|`` for large errors, like ``|a - b|² / 2c`` for small ones, so
    outliers pull less than under the squared error."""
    import autograd.numpy as anp

    sq = anp.sum(anp.reshape((a - b) ** 2, (a.shape[0], -1)), axis=1)
    return anp.sqrt(sq + c * c) - c


def consistency_batch(teacher, target_f, x0, levels, rng, noise=None):
    """One batch of consistency distillation (Song et al. 2023, Algorithm 2): ``n`` uniform over
    adjacent pairs of the decreasing ``levels``, ``x = x0 + levels[n] z``, the teacher's Heun
    step to ``levels[n + 1]``, and the target network's output there, ``target_f(x_hat,
    levels[n + 1])`` (no gradient flows through it). Returns ``{"x", "sigma", "target"}``."""
    levels = onp.asarray(levels, dtype=onp.float64)
    n = rng.integers(0, len(levels) - 1, size=len(x0))
    z = rng.standard_normal(x0.shape).astype(x0.dtype) if noise is None else noise
    x = x0 + per_sample(levels[n].astype(x0.dtype), x0) * z
    # BEGIN EXERCISE 12.3: the consistency distillation pair: the teacher's ODE step and the
    #   target network's output (Song et al. 2023, Algorithm 2); notebook 12, section 3
    x_hat = heun_step(teacher, x, levels[n], levels[n + 1])
    return {"x": x, "sigma": levels[n], "target": target_f(x_hat, levels[n + 1])}
    # END EXERCISE


def consistency_training_batch(x0, levels, rng, probabilities=None):
    """One batch of consistency *training* (Song et al. 2023, Algorithm 3): no teacher; the pair
    is ``x0 + levels[n] z`` and ``x0 + levels[n + 1] z`` with the same ``z``, the second standing
    in for the ODE step (it is one in expectation: ``E[x0 | x]`` is what the Heun step needs, and
    the training pair uses ``x0`` itself). ``probabilities`` weight the pairs
    (``ict_level_probabilities``; uniform by default). Returns ``{"x", "sigma", "x_next",
    "sigma_next"}``."""
    levels = onp.asarray(levels, dtype=onp.float64)
    n = rng.choice(len(levels) - 1, size=len(x0), p=probabilities)
    z = rng.standard_normal(x0.shape).astype(x0.dtype)
    return {"x": x0 + per_sample(levels[n].astype(x0.dtype), x0) * z, "sigma": levels[n],
            "x_next": x0 + per_sample(levels[n + 1].astype(x0.dtype), x0) * z,
            "sigma_next": levels[n + 1]}


def ict_levels(step, total, sigma_min=0.002, sigma_max=80.0, rho=7.0, s0=10, s1=1280):
    """The improved consistency training schedule (Song & Dhariwal 2023, sec. 3.4): the number
    of levels doubles every ``total / (log2(s1 / s0) + 1)`` steps, from ``s0`` to ``s1``,
    ``N(k) = min(s0 2^floor(k / K'), s1) + 1``, on Karras et al.'s grid (increasing order in
    the paper; returned here decreasing, as every grid in minidiff)."""
    stage = max(total // (int(math.log2(s1 // s0)) + 1), 1)
    n = min(s0 * 2 ** (step // stage), s1) + 1
    return samplers.karras_sigmas(int(n), sigma_min, sigma_max, rho)[:-1]


def ict_level_probabilities(levels, p_mean=-1.1, p_std=2.0):
    """The lognormal choice of the pair ``(levels[n], levels[n + 1])`` of improved consistency
    training (Song & Dhariwal 2023, sec. 3.5): ``p(n) ∝ erf((ln s_n - P_mean) / (sqrt 2
    P_std)) - erf((ln s_{n+1} - P_mean) / (sqrt 2 P_std))`` for decreasing ``levels``."""
    from scipy.special import erf

    e = erf((onp.log(onp.asarray(levels, onp.float64)) - p_mean) / (math.sqrt(2) * p_std))
    p = e[:-1] - e[1:]
    return p / p.sum()



# ----------------------------------------------------------------------------- on 2D data

def mixture_denoiser(mixture):
    """The exact teacher for data from a Gaussian mixture: ``D(x, sigma) = E[x0 | x]`` in the
    sigma frame with one level per point (``(N,)``) or one for all."""
    from .targets import x0_from_score

    def denoise(x, sigma):
        s = onp.broadcast_to(onp.asarray(sigma, dtype=onp.float64), (len(x),))
        out = onp.empty_like(x, dtype=onp.float64)
        for level in onp.unique(s):
            m = s == level
            out[m] = x0_from_score(mixture.noised(1.0, level).score(x[m]), x[m], 1.0, level)
        return out
    return denoise


def toy_consistency_model(sigma_min=0.002, sigma_data=1.0):
    """``f(params, x, sigma)`` for 2D points: chapter 1's MLP as the raw network ``F`` of
    ``consistency_function``, its time input ``c_noise = ln(sigma) / 4`` spread over
    ``250 (c_noise + 2)`` (the range its sinusoidal embedding was made for)."""
    from .models import mlp

    return consistency_function(lambda p, x, c: mlp.apply(p, x, 250.0 * (c + 2.0)),
                                sigma_min, sigma_data)


def fit_toy_consistency(mixture, steps=2000, levels=18, sigma_max=20.0, sigma_min=0.002,
                        mu=0.95, batch_size=256, lr=1e-3, seed=0, teacher="exact", hidden=128):
    """A consistency model of 2D data (an MLP, ``toy_consistency_model``), two ways:

    - **distillation** (Song et al. 2023, Algorithm 2) from ``teacher`` (``"exact"``: the
      ``mixture_denoiser``; or any ``D(x, sigma)``): Karras et al.'s grid of ``levels`` levels
      on ``[sigma_min, sigma_max]``, the teacher's Heun step, the squared distance, the target
      network the EMA of the student with decay ``mu``;
    - **training** without a teacher (``teacher=None``; Song & Dhariwal 2023's improvements):
      the pair shares its noise (``consistency_training_batch``), the grid grows by
      ``ict_levels``, pairs are drawn by ``ict_level_probabilities``, each weighted by ``1 /
      (sigma_n - sigma_{n+1})``, the distance is ``pseudo_huber`` with ``c = 0.00054 sqrt(d)``,
      and the target network is the student itself (no EMA: ``mu`` is ignored).

    Returns ``(f, params, losses)``."""
    import autograd.numpy as anp

    from . import train
    from .models import mlp

    x_data = mixture.sample(200_000, onp.random.default_rng(seed))
    sigma_data = float(onp.sqrt(x_data.var(0).mean()))
    f = toy_consistency_model(sigma_min, sigma_data)
    distil = teacher is not None
    teacher = mixture_denoiser(mixture) if teacher == "exact" else teacher
    grid = samplers.karras_sigmas(levels, sigma_min, sigma_max)[:-1]
    grid[-1] = sigma_min
    state = train.init_state(mlp.init(onp.random.default_rng(seed), hidden=hidden, depth=3,
                                      emb_dim=32, dtype=onp.float64), seed + 1)
    target, huber_c = {"params": state.ema}, 0.00054 * math.sqrt(x_data.shape[1])

    def batch_fn(rng):
        x0 = x_data[rng.integers(0, len(x_data), size=batch_size)]
        if distil:
            b = consistency_batch(teacher, lambda x, s: f(target["params"], x, s), x0, grid, rng)
            return {**b, "weight": onp.ones(batch_size)}
        lv = ict_levels(target["step"], steps, sigma_min, sigma_max)
        b = consistency_training_batch(x0, lv, rng, ict_level_probabilities(lv))
        return {"x": b["x"], "sigma": b["sigma"], "weight": 1.0 / (b["sigma"] - b["sigma_next"]),
                "target": f(target["params"], b["x_next"], b["sigma_next"])}

    def loss(params, batch):
        out = f(params, batch["x"], batch["sigma"])
        dist = anp.sum((out - batch["target"]) ** 2, axis=1) if distil \
            else pseudo_huber(out, batch["target"], huber_c)
        return anp.mean(batch["weight"] * dist)
    losses = []
    target["step"] = 0
    for record in train.train(loss, state, batch_fn, steps, lr=lr, warmup=100,
                              cooldown=steps // 5, ema=mu, ema_warmup=False):
        state = record["state"]
        target.update(params=state.ema if distil else state.params, step=state.step)
        losses.append(record["loss"])
    return f, state.params, onp.asarray(losses)


def fit_toy_progressive(mixture, base=16, final=1, steps=300, sigma_max=20.0, sigma_min=0.002,
                        batch_size=256, lr=1e-3, seed=0, hidden=128):
    """Progressive distillation on 2D data from the exact teacher's ``base``-step DDIM (Euler in
    the sigma frame) on Karras et al.'s grid: each round a student (EDM-preconditioned MLP,
    ``targets.edm_denoiser``; the first from scratch with twice the ``steps``, later ones from
    their teacher) learns ``progressive_target`` on every second level of its teacher's grid,
    with ``truncated_snr_weight``. Returns ``(denoise, {n: (params, levels)})`` for ``n = base /
    2, ..., final``; ``samplers.euler(lambda x, s: denoise(params, x, s), ...)`` samples one."""
    from . import train
    from .models import mlp
    from .targets import edm_denoiser

    x_data = mixture.sample(200_000, onp.random.default_rng(seed))
    denoise = edm_denoiser(lambda p, x, c: mlp.apply(p, x, 250.0 * (c + 2.0)),
                           float(onp.sqrt(x_data.var(0).mean())))
    levels = samplers.karras_sigmas(base, sigma_min, sigma_max)
    teacher, n, students = mixture_denoiser(mixture), base, {}
    params = mlp.init(onp.random.default_rng(seed), hidden=hidden, depth=3, emb_dim=32,
                      dtype=onp.float64)

    def loss(p, batch):
        import autograd.numpy as anp

        err = anp.sum((denoise(p, batch["x"], batch["sigma"]) - batch["target"]) ** 2, axis=1)
        return anp.mean(batch["weight"] * err)
    while n > final:
        n //= 2
        stride = base // n
        lv, mid = levels[::stride], levels[stride // 2::stride]

        def batch_fn(rng, lv=lv, mid=mid, teacher=teacher):
            x0 = x_data[rng.integers(0, len(x_data), size=batch_size)]
            k = rng.integers(0, len(lv) - 1, size=batch_size)
            x = x0 + lv[k, None] * rng.standard_normal(x0.shape)
            return {"x": x, "sigma": lv[k], "weight": truncated_snr_weight(lv[k]),
                    "target": progressive_target(teacher, x, lv[k], mid[k], lv[k + 1])}
        state = train.init_state(params, seed + n)
        state, _ = train.fit(loss, state, batch_fn, steps * (2 if not students else 1), lr=lr,
                             warmup=50, cooldown=steps // 5, progress=False)
        params = state.ema
        students[n] = (params, lv)
        teacher = lambda x, s, p=params: denoise(p, x, s)  # noqa: E731
    return denoise, students

