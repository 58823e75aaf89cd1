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
    distillation (Song et al. 2023, sec. 4, with EDM's Heun solver; ``samplers.heun``'s step)."""
    s = per_sample(sigma, x, "sigma", positive=True)
    s_next = per_sample(sigma_next, x, "sigma_next", positive=True)
    d = eps_from_x0(denoiser(x, sigma), x, 1.0, sigma)
    x_euler = x + (s_next - s) * d
    return x + (s_next - s) * 0.5 * (d + eps_from_x0(denoiser(x_euler, sigma_next), x_euler,
                                                     1.0, sigma_next))


def progressive_target(teacher, x, sigma, sigma_mid, sigma_next):
    """Progressive distillation's regression target in the sigma frame: the teacher's two DDIM
    steps ``sigma -> sigma_mid -> sigma_next`` (``sigma_next`` may be 0), then the ``x_tilde``
    whose one DDIM step lands there (``distillation_target`` with ``alpha = 1``)."""
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
    x_hat = heun_step(teacher, x, levels[n], levels[n + 1])
    return {"x": x, "sigma": levels[n], "target": target_f(x_hat, levels[n + 1])}


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
                        mu=0.95, batch_size=256, lr=1e-3, seed=0, teacher=None, hidden=128):
    """Consistency distillation on 2D data (Song et al. 2023, Algorithm 2) from ``teacher``
    (the exact ``mixture_denoiser`` by default): Karras et al.'s grid of ``levels`` levels on
    ``[sigma_min, sigma_max]``, the teacher's Heun step, the squared distance, the target network
    the EMA of the student with decay ``mu``. Returns ``(f, params, losses)``."""
    from . import train
    from .models import mlp

    x_data = mixture.sample(200_000, onp.random.default_rng(seed))
    sigma_data = float(onp.sqrt(x_data.var(0).mean()))
    f = toy_consistency_model(sigma_min, sigma_data)
    teacher = teacher or mixture_denoiser(mixture)
    grid = samplers.karras_sigmas(levels, sigma_min, sigma_max)[:-1]
    grid[-1] = sigma_min
    state = train.init_state(mlp.init(onp.random.default_rng(seed), hidden=hidden, depth=3,
                                      emb_dim=32, dtype=onp.float64), seed + 1)
    target = {"params": state.ema}

    def batch_fn(rng):
        x0 = x_data[rng.integers(0, len(x_data), size=batch_size)]
        return consistency_batch(teacher, lambda x, s: f(target["params"], x, s), x0, grid, rng)

    def loss(params, batch):
        import autograd.numpy as anp

        return anp.mean(anp.sum((f(params, batch["x"], batch["sigma"]) - batch["target"]) ** 2,
                                axis=1))
    losses = []
    for record in train.train(loss, state, batch_fn, steps, lr=lr, warmup=100,
                              cooldown=steps // 5, ema=mu, ema_warmup=False):
        target["params"] = record["state"].ema
        losses.append(record["loss"])
        state = record["state"]
    return f, state.params, onp.asarray(losses)


# ----------------------------------------------------------------------------- on MNIST
# The teacher is the shipped chapter 6 U-Net (noise prediction on DDPM's linear chain) with
# classifier-free guidance folded in; every student is a U-Net of the same shape predicting v
# (Salimans & Ho 2022, sec. 4: at high noise ``x0`` from ``eps`` divides by ``alpha ≈ 0.006``,
# from ``v`` it does not), conditioned on the label, evaluated in the sigma frame at the chain's
# fractional step (``samplers.denoiser_from_path``'s rule).

def on_chain(chain, x, sigma):
    """``(z, t, alpha, sigma_vp)``: the sigma-frame state ``x`` at level ``sigma`` (per sample or
    scalar) as the chain's network sees it, ``z = alpha x`` at fractional step ``t``."""
    s = onp.broadcast_to(onp.asarray(getval(sigma), dtype=onp.float64), (len(x),))
    alpha = 1.0 / onp.sqrt(1.0 + s * s)
    t = onp.asarray(chain.t_from_ratio(s), dtype=onp.float32)
    alpha, sigma_vp = alpha.astype(x.dtype), (s * alpha).astype(x.dtype)
    return per_sample(alpha, x) * x, t, alpha, sigma_vp


def student_denoiser(apply, config, chain, kind="v"):
    """``denoise(params, x, sigma, labels)``: the network ``apply(params, z, t, labels, config)``
    predicting ``kind`` on ``chain``, as a sigma-frame denoiser (differentiable in ``params``)."""
    from .targets import convert

    def denoise(params, x, sigma, labels):
        z, t, alpha, sigma_vp = on_chain(chain, x, sigma)
        return convert(apply(params, z, t, labels, config), kind, "x0", z, alpha, sigma_vp)
    return denoise


def guided_teacher(model, labels, guidance=2.0):
    """``teacher(x, sigma)``: the shipped noise-prediction model ``(apply, params, config,
    sched)`` with classifier-free guidance ``w`` for ``labels``, as a sigma-frame denoiser
    clipped to the pixel range (the DDIM pipeline's ``x0`` clip; chapter 5)."""
    from .guidance import guided_eps
    from .targets import x0_from_eps

    apply, params, config, sched = model
    eps = guided_eps(apply, params, config, labels, guidance)

    def teacher(x, sigma):
        z, t, alpha, sigma_vp = on_chain(sched.path, x, sigma)
        return onp.clip(x0_from_eps(eps(z, t), z, alpha, sigma_vp), -1.0, 1.0)
    return teacher


def frozen_student(model, labels):
    """``teacher(x, sigma)`` from a student ``(denoise, params)``: the next round's teacher."""
    denoise, params = model
    return lambda x, sigma: onp.clip(denoise(params, x, sigma, labels), -1.0, 1.0)


def student_loss(mode, config_dict, schedule, sigma_min=None, huber_c=None):
    """The loss of a student batch (picklable, for ``train.fit_parallel``): ``mode``
    ``"regress"`` (``weight |D(x, sigma) - target|²``: progressive distillation and its
    first stage) or ``"consistency"`` (``pseudo_huber(f(x, sigma), target)``)."""
    import autograd.numpy as anp

    from .ddpm import schedule as make_schedule
    from .models import unet

    config = unet.UNetConfig(**config_dict)
    denoise = student_denoiser(unet.apply, config, make_schedule(**schedule).path)
    if mode == "regress":
        def loss(params, batch):
            err = anp.mean((denoise(params, batch["x"], batch["sigma"], batch["y"])
                            - batch["target"]) ** 2, axis=(1, 2, 3))
            return anp.mean(err * batch["weight"])
        return loss
    if mode != "consistency":
        raise ValueError(f"`mode` must be 'regress' or 'consistency' (got {mode!r})")
    f = consistency_from_denoiser(denoise, sigma_min)

    def loss(params, batch):
        return anp.mean(pseudo_huber(f(params, batch["x"], batch["sigma"], batch["y"]),
                                     batch["target"], huber_c))
    return loss


def teacher_model(path):
    """``(apply, params, config, sched)`` of a shipped noise-prediction U-Net file."""
    from .images import load_model, model_schedule

    apply, params, config, meta = load_model(path)
    return apply, params, config, model_schedule(meta)


def _fit_student(mode, state, batch_fn, steps, config, schedule, workers, checkpoint, run,
                 lr, ema=0.999, **loss_kw):
    import functools

    from . import train

    state, resumed = train.resume_or_init(checkpoint, run, lambda: state)
    if resumed:
        print(f"resuming {checkpoint} at step {state.step}", flush=True)
    factory = functools.partial(student_loss, mode, config.to_dict(), schedule, **loss_kw)
    return train.fit_parallel(factory, state, batch_fn, steps, workers, lr=lr, warmup=20,
                              clip=1.0, ema=ema, checkpoint_path=checkpoint,
                              checkpoint_every=50, run=run, desc=run["stage"])


def _save_student(path, params, config, schedule, **distilled):
    from .images import save_model

    save_model(path, params, config, kind="unet", target="v", schedule=schedule,
               distilled=distilled)


def train_progressive(teacher_path, out_dir, *, base=16, final=2, grid="karras",
                      stage_steps=150, round_steps=150, batch_size=64, lr=2e-4, guidance=2.0,
                      workers=2, seed=0):
    """Guided progressive distillation of a noise-prediction U-Net file (Meng et al. 2023's two
    stages, Salimans & Ho 2022's rounds), writing ``out_dir/pd_{n}.npz`` for each student of
    ``n`` steps:

    1. ``pd_{base}``: a v-predicting student, started from the teacher's weights, regresses
       the guided teacher's clipped ``x0`` at the ``base`` levels of ``grid``
       (``truncated_snr_weight``): guidance folded into one network, one evaluation per step
       instead of two.
    2. Each round halves the steps: the student (started from its teacher) learns
       ``progressive_target`` of two of its teacher's DDIM steps, on every second level.

    A finished student's file is not trained again (the next round loads it); a round in progress
    resumes from ``out_dir/pd_state.npz``. Images are the first 50,000 training digits."""
    import time
    from pathlib import Path

    from .datasets import mnist
    from .images import load_model
    from .models import unet

    if base % final or (base // final) & (base // final - 1):
        raise ValueError(f"`base / final` must be a power of two (got {base} / {final})")
    teacher = teacher_model(teacher_path)
    _, t_params, config, sched = teacher
    schedule = load_model(teacher_path)[3].get("schedule", {"name": "linear", "T": 1000})
    chain = sched.path
    levels = GRIDS[grid](base, float(chain.ratios[0]), float(chain.ratios[-1]))
    data_x, data_y = mnist("fit")
    denoise = student_denoiser(unet.apply, config, chain)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "pd_state.npz"
    common = dict(grid=grid, base=base, guidance=guidance, teacher=str(teacher_path),
                  batch_size=batch_size, lr=lr, seed=seed)

    def draw(rng):
        idx = rng.integers(0, len(data_x), size=batch_size)
        return data_x[idx], data_y[idx]

    params, n = t_params, base
    while n >= final:
        path = out_dir / f"pd_{n}.npz"
        if path.exists():
            params = load_model(path)[1]
            n //= 2
            continue
        stride = base // n
        lv = levels[::stride]
        if n == base:
            def batch_fn(rng, lv=lv):
                x0, y = draw(rng)
                k = rng.integers(0, len(lv) - 1, size=len(x0))
                x = x0 + per_sample(lv[k].astype(onp.float32), x0) \
                    * rng.standard_normal(x0.shape).astype(onp.float32)
                return {"x": x, "sigma": lv[k], "y": y, "weight": truncated_snr_weight(lv[k]),
                        "target": guided_teacher(teacher, y, guidance)(x, lv[k])}
            stage, steps = f"guided {n}-step student", stage_steps
        else:
            frozen = params

            def batch_fn(rng, lv=lv, mid=levels[stride // 2::stride], frozen=frozen):
                x0, y = draw(rng)
                k = rng.integers(0, len(lv) - 1, size=len(x0))
                x = x0 + per_sample(lv[k].astype(onp.float32), x0) \
                    * rng.standard_normal(x0.shape).astype(onp.float32)
                target = progressive_target(frozen_student((denoise, frozen), y), x, lv[k],
                                            mid[k], lv[k + 1])
                return {"x": x, "sigma": lv[k], "y": y, "weight": truncated_snr_weight(lv[k]),
                        "target": target.astype(onp.float32)}
            stage, steps = f"round to {n} steps", round_steps
        from .train import init_state

        t0 = time.perf_counter()
        state, losses = _fit_student("regress", init_state(params, seed + n), batch_fn, steps,
                                     config, schedule, workers, ckpt,
                                     {"stage": stage, "steps_student": n, **common}, lr)
        params = state.ema
        _save_student(path, params, config, schedule, method="progressive", steps=n,
                      levels=lv.tolist(), train_steps=steps, seconds=time.perf_counter() - t0,
                      final_loss=float(onp.mean(losses[-20:])) if len(losses) else None,
                      **common)
        ckpt.unlink(missing_ok=True)
        print(f"{path}: {steps} steps, {time.perf_counter() - t0:.0f} s", flush=True)
        n //= 2
    return out_dir


def train_consistency(teacher_path, start_path, out, *, levels=18, steps=400, batch_size=64,
                      lr=1e-4, mu=0.95, guidance=2.0, workers=2, seed=0):
    """Guided consistency distillation (Song et al. 2023, Algorithm 2) of a noise-prediction
    U-Net file into ``out``: the student ``f = c_skip x + c_out D`` (``consistency_from_denoiser``
    on a v-predicting U-Net, started from ``start_path``, a guided student such as
    ``pd_{base}.npz``); the teacher's one Heun step between adjacent levels of Karras et al.'s
    grid with ``levels`` levels from the chain's largest ``sigma / alpha`` to its smallest (which
    is ``sigma_min``, where ``f(x) = x``); the target network is the EMA of the student with
    decay ``mu`` (the training state's EMA, without warm-up); the distance is ``pseudo_huber``
    with ``c = 0.00054 sqrt(d)`` (Song & Dhariwal 2023). Resumes from ``out`` + ``.state.npz``."""
    import time
    from pathlib import Path

    from .datasets import mnist
    from .images import load_model
    from .models import unet
    from .train import init_state

    teacher = teacher_model(teacher_path)
    _, _, config, sched = teacher
    schedule = load_model(teacher_path)[3].get("schedule", {"name": "linear", "T": 1000})
    chain = sched.path
    sigma_min, sigma_max = float(chain.ratios[0]), float(chain.ratios[-1])
    grid = samplers.karras_sigmas(levels, sigma_min, sigma_max)[:-1]
    grid[-1] = sigma_min  # exactly, not its rho-th power of a root: the boundary sits there
    data_x, data_y = mnist("fit")
    f = consistency_from_denoiser(student_denoiser(unet.apply, config, chain), sigma_min)
    huber_c = 0.00054 * math.sqrt(28 * 28)
    out = Path(out)
    run = {"stage": "consistency distillation", "teacher": str(teacher_path),
           "start": str(start_path), "levels": levels, "batch_size": batch_size, "lr": lr,
           "mu": mu, "guidance": guidance, "seed": seed}
    state = init_state(load_model(start_path)[1], seed)
    target = {"params": state.ema}  # the EMA the next batch's targets come from

    def batch_fn(rng):
        idx = rng.integers(0, len(data_x), size=batch_size)
        x0, y = data_x[idx], data_y[idx]
        b = consistency_batch(guided_teacher(teacher, y, guidance),
                              lambda x, s: f(target["params"], x, s, y), x0, grid, rng)
        return {**b, "x": b["x"].astype(onp.float32), "y": y,
                "target": onp.asarray(b["target"], onp.float32)}

    import functools

    from . import train

    ckpt = out.with_name(out.stem + ".state.npz")
    state, resumed = train.resume_or_init(ckpt, run, lambda: state)
    target["params"] = state.ema
    factory = functools.partial(student_loss, "consistency", config.to_dict(), schedule,
                                sigma_min=sigma_min, huber_c=huber_c)
    t0, losses = time.perf_counter(), []
    with _parallel(factory, state.params, workers) as value_and_grad:
        for record in train.train(None if workers > 1 else factory(), state, batch_fn, steps,
                                  lr=lr, warmup=20, clip=1.0, ema=mu, ema_warmup=False,
                                  checkpoint_path=ckpt, checkpoint_every=50, run=run,
                                  value_and_grad=value_and_grad):
            target["params"] = record["state"].ema
            losses.append(record["loss"])
            if record["step"] % 25 == 0:
                print(f"step {record['step']}: loss {onp.mean(losses[-25:]):.4f}", flush=True)
            state = record["state"]
    _save_student(out, state.params, config, schedule, method="consistency",
                  sigma_min=sigma_min, sigma_max=sigma_max, levels_grid=levels, train_steps=steps,
                  seconds=time.perf_counter() - t0, **{k: v for k, v in run.items()
                                                      if k != "stage"})
    return out


def _parallel(factory, params, workers):
    import contextlib

    if workers == 1:
        return contextlib.nullcontext(None)
    from .nn.parallel import DataParallel

    return DataParallel(factory, params, workers)


def load_student(path):
    """``(denoise, params, meta)`` of a student file: ``denoise(params, x, sigma, labels)``."""
    from .images import load_model, model_schedule
    from .models import unet
    _, params, config, meta = load_model(path)
    if "distilled" not in meta or meta.get("target") != "v":
        raise ValueError(f"{path!s} is not a distilled student (written by "
                         "distill.train_progressive or distill.train_consistency)")
    return student_denoiser(unet.apply, config, model_schedule(meta).path), params, meta


def sample_student(path, labels, z, taus=(), rng=None):
    """Images for ``labels`` from unit noise ``z (N, 1, 28, 28)``: a progressive student by
    DDIM over its own levels, a consistency model by ``multistep_sample`` with ``taus``
    (``len(taus) + 1`` evaluations; ``rng`` draws the noise added between them)."""
    denoise, params, meta = load_student(path)
    d = meta["distilled"]
    labels = onp.asarray(labels)
    if d["method"] == "progressive":
        levels = onp.asarray(d["levels"])
        x = levels[0] * z.astype(onp.float32)
        for s, s_next in zip(levels[:-1], levels[1:], strict=True):
            x_hat = onp.clip(denoise(params, x, s, labels), -1.0, 1.0)
            x = ddim_step(x_hat, x, 1.0, s, 1.0, s_next).astype(onp.float32)
        return onp.clip(x, -1.0, 1.0)
    f = consistency_from_denoiser(denoise, d["sigma_min"])
    clipped = lambda x, s: onp.clip(f(params, x.astype(onp.float32), s, labels), -1.0, 1.0)  # noqa: E731
    x = multistep_sample(clipped, d["sigma_max"] * z, d["sigma_max"], list(taus),
                         rng or onp.random.default_rng(0), d["sigma_min"])
    return x.astype(onp.float32)
