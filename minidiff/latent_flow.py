"""Chapter 10 — SD3 and FLUX in miniature: rectified-flow transformers on chapter 8's latents.

Chapter 8's pieces stay as they were — the frozen autoencoder (7 x 7 x 4 latents), the frozen text
encoder and its captions — and two things change, as they changed from Stable Diffusion 1.x to SD3:

- the **objective**: rectified flow on the linear path (``flow.py``), the network predicting the
  velocity ``eps - z0`` at a time ``t`` drawn from SD3's logit-normal density (or uniform);
- the **network**: a transformer over the 49 latent tokens (patch 1), one of
  ``"dit"``   chapter 9's DiT with PixArt-alpha's cross-attention to the caption (chapter 8),
  ``"mmdit"`` SD3's double-stream blocks (``models/mmdit.py``),
  ``"flux"``  FLUX's hybrid: double-stream blocks, then parallel single-stream ones,
  with the same width, depth and so the same multiply-adds per token in every block.

Guidance is chapter 7's classifier-free rule on the velocity (``latent.caption_guided_eps``: the
rule is linear in the prediction); sampling integrates the flow ODE from ``t = 1`` to ``0``
(``flow.euler`` / ``flow.heun``) and decodes. The network reads the time as ``1000 t``.
"""
# line budget: 260 -- the glue of chapter 10's three architectures: batches, loss, training
# (plain and on a reflow coupling), the commands that record them, sampling and the pairs of reflow.

import functools
import time

import numpy as onp

from . import flow, interpolants, train
from .latent import _relative, caption_guided_eps, decode, encode_all, frozen_networks, load_vae
from .models import dit, mmdit, vae
from .targets import target
from .text_encoder import CaptionedDigits, encode_captions, load_text_encoder

ARCHS = ("dit", "mmdit", "flux")


def config(arch, width=96, depth=4, qk_norm=False):
    """The architecture ``arch`` on 7 x 7 x 4 latents, patch 1 (49 tokens), ``depth`` blocks of
    ``width``: ``"flux"`` splits them half double-stream, half single-stream."""
    if arch == "dit":
        if qk_norm:
            raise ValueError("QK-norm is a switch of the MMDiT blocks (`arch` mmdit or flux)")
        return dit.DiTConfig(in_channels=vae.LATENT_CHANNELS, resolution=7, patch=1, width=width,
                             depth=depth, heads=4, num_classes=None, context_dim=64)
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {ARCHS} (got {arch!r})")
    double = depth if arch == "mmdit" else depth // 2
    return mmdit.MMDiTConfig(in_channels=vae.LATENT_CHANNELS, resolution=7, patch=1, width=width,
                             double_blocks=double, single_blocks=depth - double, heads=4,
                             context_dim=64, pooled_dim=64, qk_norm=qk_norm)


def config_from(meta):
    cls = dit.DiTConfig if meta["arch"] == "dit" else mmdit.MMDiTConfig
    return cls(**meta["config"])


def apply(params, x, t, caption, cfg, probe=None):
    """The network of either family at times ``t`` in [0, 1] (read as ``1000 t``); ``caption``:
    ``encode_captions(..., pooled=True)`` (the DiT reads only the token states)."""
    if isinstance(cfg, dit.DiTConfig):
        return dit.apply(params, x, 1000.0 * t, {k: caption[k] for k in ("context", "mask")}, cfg)
    return mmdit.apply(params, x, 1000.0 * t, caption, cfg, probe)


def init(cfg, rng):
    return (dit.init if isinstance(cfg, dit.DiTConfig) else mmdit.init)(rng, cfg)


# ----------------------------------------------------------------------------- training

def flow_batches(latents, data, text_params, text_cfg, scale, batch_size, density="logit_normal",
                 p_uncond=0.1, pairs=None, formulation=interpolants.RECTIFIED_FLOW):
    """``batch_fn(rng)`` of ``flow_loss``: scaled latents ``z0`` drawn from ``q(z | x)``
    (``latents`` = ``(mean, logvar)`` of ``data``'s digits) with fresh captions, the empty one with
    probability ``p_uncond`` (chapter 8's rule), ``t`` from ``density``, noise, ``x_t``.
    ``pairs = (z0, z1, captions)``: reflow's coupling instead — the generated latents, the noise
    each came from and the caption it was generated for, drawn together. ``formulation``
    (chapter 11) sets the path and the times; the batch carries the path's coefficients."""
    def batch_fn(rng):
        if pairs is None:
            mean, logvar = latents
            idx, caps, _ = data.draw(rng, batch_size)
            caps = ["" if d else c for c, d in zip(caps, rng.uniform(size=batch_size) < p_uncond,
                                                  strict=True)]
            z0 = scale * vae.reparametrise(mean[idx], logvar[idx], rng.standard_normal(
                mean[idx].shape, dtype=onp.float32))
            eps = rng.standard_normal(z0.shape, dtype=onp.float32)
        else:
            idx = rng.integers(0, len(pairs[0]), size=batch_size)
            z0, eps, caps = pairs[0][idx], pairs[1][idx], [pairs[2][i] for i in idx]
        t = formulation.times(batch_size, rng, density).astype(onp.float32)
        xt = formulation.process.marginal(z0, t, eps).astype(onp.float32)
        return {"xt": xt, "t": t, "x0": z0, "eps": eps, **formulation.coefficients(t, onp.float32),
                **encode_captions(text_params, text_cfg, caps, pooled=True)}
    return batch_fn


def flow_loss(cfg, params, batch, kind="velocity"):
    """Flow matching: the mean of ``|v(x_t, t) - u|²`` with ``u = alpha' z0 + sigma' eps`` (``eps -
    z0`` on the linear path; Lipman et al. 2023, sec. 4.1), the path's coefficients read from the
    batch; chapter 11's other ``kind``s regress their own ``targets.target``, unweighted (SiT's
    noise and velocity losses)."""
    from .nn import mean

    coef = (batch[k] for k in ("alpha", "sigma", "dalpha", "dsigma"))
    truth = target(kind, batch["x0"], batch["eps"], *coef)
    caption = {k: batch[k] for k in ("context", "mask", "pooled")}
    return mean((apply(params, batch["xt"], batch["t"], caption, cfg) - truth) ** 2)


def _loss_factory(cfg, kind="velocity"):
    return functools.partial(flow_loss, cfg, kind=kind)


def train_flow(state, cfg, batch_fn, steps, lr=1e-3, warmup=200, cooldown=0, workers=1,
               progress=True, checkpoint_path=None, run=None, kind="velocity"):
    """Train ``cfg``'s network to predict ``kind`` on ``batch_fn`` (``flow_batches``); returns
    ``(state, losses)``."""
    kwargs = dict(lr=lr, warmup=warmup, cooldown=cooldown, clip=1.0, ema=0.999,
                  checkpoint_path=checkpoint_path, checkpoint_every=100, progress=progress,
                  desc="flow model", run=run)
    return train.fit_parallel(functools.partial(_loss_factory, cfg, kind), state, batch_fn,
                              steps, workers, **kwargs)


# ----------------------------------------------------------------------------- sampling

def guided_fields(models, prompts, guidance):
    """``(v(x, t), s(x, t))``: the caption-guided velocity and score for ``prompts``
    (``latent.caption_guided_eps`` at the network's time ``1000 t``, whatever the network
    predicts: the guidance rule is affine in the prediction, so it commutes with the conversion
    of ``interpolants.fields``)."""
    (params, cfg), (text_params, text_cfg) = models["flow"], models["text"]
    form = models.get("formulation", interpolants.RECTIFIED_FLOW)
    ctx = encode_captions(text_params, text_cfg, prompts, pooled=True)
    null = encode_captions(text_params, text_cfg, [""], pooled=True)
    fn = caption_guided_eps(lambda p, x, tt, c, k: apply(p, x, tt / 1000.0, c, k), params, cfg,
                            ctx, null, guidance)
    return interpolants.fields(lambda x, t: fn(x, 1000.0 * float(t)), form.kind, form.process)


def guided_velocity(models, prompts, guidance):
    """``v(x, t)``: the caption-guided velocity for ``prompts`` (``guided_fields``)."""
    return guided_fields(models, prompts, guidance)[0]


def sample(models, prompts, rng, steps=20, guidance=2.0, solver="euler", shift=1.0,
           batch_size=250, return_latents=False, noise=None):
    """Digits for ``prompts``: the flow ODE from noise (or the given ``noise``) at ``t = 1`` to
    the path's end (``Formulation.t_min``) by ``solver`` on ``flow.time_grid(steps, shift)``,
    guided, then decoded; ``solver`` may also name one of chapter 11's diffusion coefficients
    (``interpolants.DIFFUSIONS``): the SDE with that ``w_t`` by Euler–Maruyama. ``models`` =
    ``load_models(...)``. Returns ``(N, 1, 28, 28)`` (and the latents)."""
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of strings (got {prompts!r})")
    if solver not in {**flow.SOLVERS, **interpolants.DIFFUSIONS}:
        raise ValueError(f"`solver` must be one of {sorted(flow.SOLVERS)} or a diffusion "
                         f"{sorted(interpolants.DIFFUSIONS)} (got {solver!r})")
    z = rng.standard_normal((len(prompts), vae.LATENT_CHANNELS, 7, 7)).astype(onp.float32) \
        if noise is None else onp.asarray(noise, onp.float32)
    form = models.get("formulation", interpolants.RECTIFIED_FLOW)
    if not interpolants.admissible(form, solver):
        raise ValueError(f"`solver` {solver!r} cannot start at t = 1 on the {form.path!r} path "
                         "(its g² is infinite there): use the ODE or another diffusion")
    ts = flow.time_grid(steps, shift, t_min=form.t_min)

    def run(k):
        velocity, score = guided_fields(models, prompts[k:k + batch_size], guidance)
        if solver in flow.SOLVERS:
            return flow.SOLVERS[solver](velocity, z[k:k + batch_size], ts)
        return interpolants.sample_sde(velocity, score, form.process, solver,
                                       z[k:k + batch_size], ts, rng)
    out = [run(k) for k in range(0, len(prompts), batch_size)]
    latents = onp.concatenate(out).astype(onp.float32)
    images = decode(models["vae"][0], latents / models["vae"][1])
    return (images, latents) if return_latents else images


def load_models(path, vae_path=None, text_path=None):
    """``{"flow": (params, config), "vae": (params, scale), "text": (params, config)}`` of a file
    written by ``train flow``; ``meta`` is the file's record."""
    from .nn import checkpoint

    params, meta = checkpoint.load_kind(path, "flow", "a latent flow model", "train flow")
    form = interpolants.Formulation(meta.get("interpolant", "linear"), meta.get("kind", "velocity"),
                                    bool(meta.get("discrete", False)))
    return {"flow": (params, config_from(meta)), "meta": meta, "formulation": form,
            **frozen_networks(meta, vae_path, text_path)}


def sample_command(out, weights, prompts, n, steps, guidance, seed):
    """``python -m minidiff sample --prompt ... --weights FLOW_FILE``: chapter 8's command
    (``latent.sample_command``) with this chapter's sampler (Euler, ``steps`` steps)."""
    from .latent import sample_command as write

    draw = functools.partial(sample, load_models(weights), steps=steps, guidance=guidance)
    return write(out, weights, prompts, n, steps, guidance, seed, draw)


# ----------------------------------------------------------------------------- reflow's pairs

def make_pairs(models, data, n, rng, steps=20, guidance=2.0, solver="heun"):
    """Reflow's coupling on latents: ``n`` captions of ``data``'s digits, noise ``z1`` and the
    latent ``z0`` the guided ODE takes it to. Returns ``(z0, z1, captions)``. The student
    learns the guided flow (guidance baked in, as InstaFlow's reflow does; Liu et al. 2024), so
    it samples with guidance 1."""
    _, caps, _ = data.draw(rng, n)
    z1 = rng.standard_normal((n, vae.LATENT_CHANNELS, 7, 7)).astype(onp.float32)
    _, z0 = sample(models, caps, rng, steps, guidance, solver, return_latents=True, noise=z1)
    return z0, z1, caps


# ----------------------------------------------------------------------------- the command

def train_flow_command(out, arch, steps, batch_size, lr, seed, extra, workers, vae_file,
                       text_file, density="logit_normal", qk_norm=False, width=96, depth=4,
                       reflow_from=None, pairs=4000, pair_steps=10, pair_guidance=2.0,
                       formulation=interpolants.RECTIFIED_FLOW):
    """``python -m minidiff train flow``: ``arch`` on the first 50,000 training digits' latents
    (resumable), or with ``reflow_from`` (a flow model file) a reflow student: it starts from that
    model's weights and trains on ``pairs`` couplings its guided ODE makes (cached beside
    ``out``). ``formulation``: chapter 11's path, target and time (recorded in the file)."""
    from .datasets import mnist
    from .nn import checkpoint

    vae_params, scale = load_vae(vae_file)
    text_params, text_cfg, thresholds = load_text_encoder(text_file)
    data = CaptionedDigits(*mnist("fit"), thresholds)
    run = {"model": "flow", "arch": arch, "batch_size": batch_size, "lr": lr, "seed": seed,
           "density": density, "vae": _relative(vae_file), "text_encoder": _relative(text_file)}
    if formulation != interpolants.RECTIFIED_FLOW:
        if reflow_from is not None:
            raise ValueError("reflow trains the velocity on the linear path: no --path, "
                             "--target or --discrete-time with --reflow-from")
        run.update(interpolant=formulation.path, kind=formulation.kind,
                   discrete=formulation.discrete)
    if reflow_from is None:
        cfg = config(arch, width, depth, qk_norm)
        start = lambda: init(cfg, onp.random.default_rng(seed))  # noqa: E731
        batch_fn = flow_batches(encode_all(vae_params, data.images), data, text_params, text_cfg,
                                scale, batch_size, density, formulation=formulation)
    else:
        teacher = load_models(reflow_from, vae_file, text_file)
        cfg, run["reflow_from"] = teacher["flow"][1], _relative(reflow_from)
        run["arch"] = teacher["meta"]["arch"]
        cache = out.with_name(out.stem + ".pairs.npz")
        if cache.exists():
            with onp.load(cache, allow_pickle=False) as f:
                coupling = (f["z0"], f["z1"], [str(c) for c in f["captions"]])
        else:
            t0 = time.perf_counter()
            coupling = make_pairs(teacher, data, pairs, onp.random.default_rng(seed + 1),
                                  pair_steps, pair_guidance)
            onp.savez(cache, z0=coupling[0], z1=coupling[1], captions=onp.array(coupling[2]),
                      seconds=time.perf_counter() - t0)
        start = lambda: teacher["flow"][0]  # noqa: E731
        batch_fn = flow_batches(None, None, text_params, text_cfg, scale, batch_size, density,
                                pairs=coupling)
        run.update(pairs=pairs, pair_steps=pair_steps, pair_guidance=pair_guidance)
    ckpt = out.with_name(out.stem + ".train.npz")
    state, resumed = train.resume_or_init(ckpt, run, lambda: train.init_state(start(), seed))
    if resumed:
        print(f"resuming from {ckpt} at step {state.step}")
    t0 = time.perf_counter()
    state, losses = train_flow(state, cfg, batch_fn, steps, lr, cooldown=steps // 5,
                               workers=workers, checkpoint_path=ckpt, run=run,
                               kind=formulation.kind)
    seconds = time.perf_counter() - t0
    checkpoint.save(out, state.ema, **run, config=cfg.to_dict(), latent_scale=scale, steps=steps,
                    workers=workers, images_seen=steps * batch_size,
                    final_loss=float(losses[-100:].mean()) if len(losses) else None,
                    train_seconds=round(seconds, 1),
                    trained_on="fit (the first 50,000 training digits)", **extra)
    return f"{steps} steps, {seconds / 60:.1f} min"


# ----------------------------------------------------------------------------- QK-norm's purpose

def max_attention_logit(params, cfg, batch):
    """The largest ``|q . k| / sqrt(d)`` over every attention of an MMDiT on ``batch``."""
    probe = []
    caption = {k: batch[k] for k in ("context", "mask", "pooled")}
    apply(params, batch["xt"], batch["t"], caption, cfg, probe)
    return max(float(onp.abs(lg[onp.isfinite(lg)]).max())
               for lg in (mmdit.attention_logits(r)[0] for r in probe))


def logit_growth(cfg, batch_fn, steps, lr, seed=0, every=10, warmup=20):
    """Train ``cfg`` at the peak rate ``lr`` (no gradient clipping) and record, every ``every``
    steps, the loss and the largest attention logit on a fixed batch: ``{"step", "loss",
    "max_logit"}`` lists, and ``"diverged"`` (the step at which the loss stopped being finite, or
    None)."""
    state = train.init_state(init(cfg, onp.random.default_rng(seed)), seed)
    probe_batch = batch_fn(onp.random.default_rng(seed + 1000))
    out = {"step": [], "loss": [], "max_logit": [], "diverged": None}
    try:
        for rec in train.train(functools.partial(flow_loss, cfg), state, batch_fn, steps, lr=lr,
                               warmup=warmup, ema=0.0):
            if rec["step"] % every == 0 or rec["step"] == 1:
                out["step"].append(rec["step"])
                out["loss"].append(rec["loss"])
                out["max_logit"].append(max_attention_logit(rec["state"].params, cfg,
                                                            probe_batch))
    except FloatingPointError:
        out["diverged"] = (out["step"][-1] if out["step"] else 0) + 1
    return out
