"""Chapter 12 in latent space: a latent consistency model (Luo et al. 2023) of chapter 8's model.

The teacher is chapter 8's latent U-Net (noise prediction on DDPM's linear chain, captions by
cross-attention) with classifier-free guidance at a scale ``w`` drawn per example. The student
is the same U-Net predicting v with one more input, ``w`` itself (``UNetConfig(
guidance_embedding=True)``, zero-initialised, so the student starts as its teacher): Luo et
al.'s augmented probability-flow ODE, whose solution depends on the caption *and* the guidance
scale, distilled into one network that needs no unconditional pass. Two stages, as for the
pixel students (``distill_mnist``):

1. the guided teacher's ``x0`` at a random scale is regressed onto the v-student at the levels
   of the consistency grid (Meng et al. 2023's first stage, with ``w`` as an input);
2. consistency distillation (Song et al. 2023, Algorithm 2) from there: the teacher's Heun step
   between adjacent levels of Karras et al.'s grid (Luo et al.'s "skipping-step" idea: a coarse
   grid and a good solver, here 17 Heun steps for the whole ODE), the EMA as target network.

Departures from Luo et al., each for a reason: their solver is DDIM over skips of 20 of the
1,000 steps, here Heun on the 18-level grid the pixel model uses; their student keeps the
teacher's eps target and is trained in one stage, here a v-student with a first stage (the
chain's top ``sigma / alpha`` is 157, where ``x0`` from eps divides by 0.006); their ``w`` is
ours minus one (``w = 1`` is the conditional model here).

A sample is ``multistep_sample`` in the latent space, decoded by chapter 8's autoencoder.
``python -m minidiff.tools.few_step lcm`` trains one; ``python -m minidiff.tools.lcm_eval``
scores it with chapter 8's adherence protocol.
"""

import dataclasses
import math
import time
from pathlib import Path

import numpy as onp

from . import latent
from .distill import (
    consistency_batch,
    consistency_from_denoiser,
    multistep_sample,
    truncated_snr_weight,
)
from .distill_mnist import (
    consistency_grid,
    distil_consistency,
    fit_student,
    on_chain,
    student_denoiser,
)
from .latent import _relative
from .targets import per_sample, x0_from_eps

SCHEDULE = {"name": "linear", "T": 1000}


def guided_latent_teacher(ldm, context, null, w):
    """``teacher(x, sigma)``: the latent model ``ldm = (params, config)`` as a sigma-frame
    denoiser, guided by its captions' token states ``context`` against the empty caption's
    ``null`` at one scale per caption ``w (N,)`` (no clipping: latents have no fixed range)."""
    from . import ddpm
    from .models import unet

    params, config = ldm
    eps = latent.caption_guided_eps(unet.apply, params, config, context, null, w)
    chain = ddpm.schedule(**SCHEDULE).path

    def teacher(x, sigma):
        z, t, alpha, sigma_vp = on_chain(chain, x, sigma)
        return x0_from_eps(eps(z, t), z, alpha, sigma_vp)
    return teacher


def condition(context, w):
    """The student's ``y``: the captions' token states with the guidance scale per caption."""
    return {"context": context["context"], "mask": context["mask"],
            "guidance": onp.asarray(w, onp.float32)}


def lcm_denoiser(config):
    """``denoise(params, x, sigma, y)`` of a latent student: a v-predicting U-Net on the chain,
    ``y = condition(context, w)``."""
    from . import ddpm
    from .models import unet

    return student_denoiser(unet.apply, config, ddpm.schedule(**SCHEDULE).path)


def train_lcm(ldm_path, out, *, levels=18, w_range=(1.0, 3.0), stage_steps=300, steps=600,
              batch_size=64, stage_lr=2e-4, lr=1e-4, mu=0.95, workers=2, seed=0, data=None):
    """A latent consistency model of the latent model file ``ldm_path`` into ``out`` (a latent
    model file with ``guidance_embedding``, ``target="v"`` and a ``distilled`` record). Scales
    are drawn uniformly from ``w_range``; the latents from ``q(z | x)`` of ``data`` (a
    ``CaptionedDigits``; the first 50,000 training digits) with a fresh caption each, never the
    empty one. Stage one is kept in
    ``out`` + ``.stage.npz`` and not trained again; each stage resumes from its state file.
    The distance is ``pseudo_huber`` with ``c = 0.00054 sqrt(d)``, ``d = 4 x 7 x 7``."""
    from . import ddpm, train
    from .datasets import mnist
    from .images import SHIPPED
    from .models import unet, vae
    from .nn import checkpoint
    from .text_encoder import CaptionedDigits, encode_captions, load_text_encoder

    out = Path(out)
    models = latent.load_models(ldm_path)
    _, meta = checkpoint.load_kind(ldm_path, "ldm", "a latent model", "train ldm")
    t_params, t_config = models["ldm"]
    (vae_params, scale), (text_params, text_cfg) = models["vae"], models["text"]
    config = dataclasses.replace(t_config, guidance_embedding=True)
    grid = consistency_grid(ddpm.schedule(**SCHEDULE).path, levels)
    sigma_min, sigma_max = float(grid[-1]), float(grid[0])
    data = data or CaptionedDigits(*mnist("fit"), load_text_encoder(SHIPPED["clip"])[2])
    null = encode_captions(text_params, text_cfg, [""])
    common = {"teacher": _relative(ldm_path), "levels": levels,
              "w_range": list(w_range), "batch_size": batch_size, "seed": seed}

    def draw(rng):
        idx, caps, _ = data.draw(rng, batch_size)
        mean, logvar = (onp.asarray(a, onp.float32) for a in vae.encode(vae_params,
                                                                         data.images[idx]))
        z0 = scale * vae.reparametrise(mean, logvar,
                                       rng.standard_normal(mean.shape, dtype=onp.float32))
        w = rng.uniform(*w_range, size=batch_size)
        ctx = encode_captions(text_params, text_cfg, caps)
        flat = {"context": ctx["context"], "mask": ctx["mask"], "w": w.astype(onp.float32)}
        return z0.astype(onp.float32), flat, guided_latent_teacher((t_params, t_config), ctx,
                                                                  null, w)

    t0 = time.perf_counter()
    stage = out.with_name(out.stem + ".stage.npz")
    if stage.exists():
        start = checkpoint.load(stage)[0]
    else:
        def stage_batch(rng):
            z0, flat, teacher = draw(rng)
            k = rng.integers(0, len(grid), size=batch_size)
            x = z0 + per_sample(grid[k].astype(onp.float32), z0) \
                * rng.standard_normal(z0.shape).astype(onp.float32)
            return {"x": x, "sigma": grid[k], "weight": truncated_snr_weight(grid[k]),
                    "target": teacher(x, grid[k]).astype(onp.float32), **flat}
        init = {**t_params, "guidance_emb": unet.init(onp.random.default_rng(seed), config)[
            "guidance_emb"]}
        state, _ = fit_student("regress", train.init_state(init, seed), stage_batch,
                                stage_steps, config, SCHEDULE, workers,
                                out.with_name(out.stem + ".stage_state.npz"),
                                {"stage": "latent guided student", "lr": stage_lr, **common},
                                stage_lr)
        start = state.ema
        checkpoint.save(stage, start, model="lcm_stage", seconds=time.perf_counter() - t0)
        out.with_name(out.stem + ".stage_state.npz").unlink(missing_ok=True)
    stage_seconds = float(checkpoint.load(stage)[1].get("seconds", 0.0))
    f = consistency_from_denoiser(lcm_denoiser(config), sigma_min)
    target = {"params": start}

    def cd_batch(rng):
        z0, flat, teacher = draw(rng)
        y = condition(flat, flat["w"])
        b = consistency_batch(teacher, lambda x, s: f(target["params"], x, s, y), z0, grid, rng)
        return {"x": b["x"].astype(onp.float32), "sigma": b["sigma"],
                "target": onp.asarray(b["target"], onp.float32), **flat}

    run = {"stage": "latent consistency distillation", "lr": lr, "mu": mu, **common}
    t1 = time.perf_counter()
    state, losses = distil_consistency(
        train.init_state(start, seed), config, SCHEDULE, cd_batch, target, steps, lr=lr, mu=mu,
        workers=workers, run=run, sigma_min=sigma_min,
        huber_c=0.00054 * math.sqrt(vae.LATENT_CHANNELS * 7 * 7),
        checkpoint=out.with_name(out.stem + ".state.npz"))
    checkpoint.save(out, state.params, model="ldm", config=config.to_dict(), target="v",
                    schedule=SCHEDULE, vae=meta["vae"], text_encoder=meta["text_encoder"],
                    latent_scale=scale, distilled={
                        "method": "latent consistency", "sigma_min": sigma_min,
                        "sigma_max": sigma_max, "stage_steps": stage_steps, "steps": steps,
                        "stage_lr": stage_lr, "mu": mu, "lr": lr,
                        "stage_seconds": stage_seconds,
                        "seconds": time.perf_counter() - t1,
                        "final_loss": float(onp.mean(losses[-25:])) if losses else None,
                        **common})
    return out


def sample_lcm(path, prompts, w, z, taus=(), rng=None, batch_size=500):
    """Digits for the caption strings ``prompts`` at guidance scale ``w`` from unit latent noise
    ``z (N, 4, 7, 7)``: ``multistep_sample`` with ``taus`` (``len(taus) + 1`` evaluations, one
    network call each, guidance included), decoded. ``rng`` draws the noise between steps."""
    from .nn import checkpoint
    from .text_encoder import encode_captions

    models = latent.load_models(path)
    meta = checkpoint.load(path)[1]
    if meta.get("distilled", {}).get("method") != "latent consistency":
        raise ValueError(f"{path!s} is not a latent consistency model (written by "
                         "distill_latent.train_lcm)")
    d = meta["distilled"]
    (params, config), (vae_params, scale), (text_params, text_cfg) = \
        models["ldm"], models["vae"], models["text"]
    prompts = list(prompts)
    if len(prompts) != len(z):
        raise ValueError(f"`z` must hold one latent per prompt ({len(prompts)}; got {len(z)})")
    f = consistency_from_denoiser(lcm_denoiser(config), d["sigma_min"])
    rng = rng or onp.random.default_rng(0)
    out = []
    for k in range(0, len(prompts), batch_size):
        ctx = encode_captions(text_params, text_cfg, prompts[k:k + batch_size])
        y = condition(ctx, onp.full(len(ctx["mask"]), w))
        fn = lambda x, s, y=y: f(params, x.astype(onp.float32), s, y)  # noqa: E731
        out.append(multistep_sample(fn, d["sigma_max"] * z[k:k + batch_size].astype(onp.float32),
                                    d["sigma_max"], list(taus), rng, d["sigma_min"]))
    return latent.decode(vae_params, onp.concatenate(out).astype(onp.float32) / scale)
