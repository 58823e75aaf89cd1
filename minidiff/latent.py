"""Chapter 8 — latent diffusion with text: Stable Diffusion 1.x built by hand, in miniature.

Stable Diffusion (Rombach et al. 2022) is three networks trained apart and used together:

1. an autoencoder (``models/vae.py``) that maps a 28 x 28 digit to a 7 x 7 x 4 latent and back,
   trained first and then frozen;
2. a text encoder (``models/text.py``) trained like CLIP (Radford et al. 2021) on caption/digit
   pairs (``captions.py``, ``text_encoder.py``), then frozen: its token states are the caption's
   meaning;
3. a denoiser of the *latents* — the chapter-6 U-Net with a transformer block of self-attention,
   cross-attention to the caption's tokens, and an MLP at each resolution
   (``UNetConfig(context_dim=...)``) — trained with DDPM's ``L_simple`` on the scaled latents,
   with the caption replaced by the empty one 10% of the time so that one network serves
   classifier-free guidance (chapter 7).

Sampling runs DDIM with guidance in the latent space and decodes the result. Read top to bottom:
the autoencoder's training and latent scale, the latent model's batches and loss, sampling from
a prompt, the measures of whether the model listened, and a look at its cross-attention.
"""
# line budget: 285 -- the glue of two networks (autoencoder, latent model): training, the commands
# that train and record them, sampling, the adherence measures and the attention probe.

import functools
import time
from pathlib import Path

import numpy as onp

from . import ddpm, train
from .guidance import check_scale, guide
from .models import text, vae
from .text_encoder import CaptionedDigits, encode_captions, load_text_encoder

# ----------------------------------------------------------------------------- the autoencoder


def vae_batches(images, batch_size):
    """``batch_fn(rng)``: digits ``x`` and the reparametrisation noise ``eps`` for ``vae.loss``."""
    images = onp.asarray(images, dtype=onp.float32)

    def batch_fn(rng):
        idx = rng.integers(0, len(images), size=batch_size)
        eps = rng.standard_normal((batch_size, vae.LATENT_CHANNELS, 7, 7), dtype=onp.float32)
        return {"x": images[idx], "eps": eps}
    return batch_fn


def train_vae(images, steps=1000, batch_size=128, lr=2e-3, kl_weight=1e-4, seed=0,
              progress=True):
    """Train ``models/vae.py`` with Adam through the shared loop; returns ``(ema_params,
    losses)``."""
    state = train.init_state(vae.init(onp.random.default_rng(seed)), seed)
    loss = functools.partial(vae.loss, kl_weight=kl_weight)
    state, losses = train.fit(loss, state, vae_batches(images, batch_size), steps, lr=lr,
                              warmup=50, cooldown=steps // 5, clip=1.0, ema=0.999,
                              progress=progress, desc="vae")
    return state.ema, losses


def encode(params, images, batch_size=500, sample_rng=None):
    """Latent means of ``images`` (or, with ``sample_rng``, draws from ``q(z | x)``), in batches:
    ``(N, 1, 28, 28) -> (N, 4, 7, 7)`` float32."""
    out = []
    for i in range(0, len(images), batch_size):
        mean, logvar = vae.encode(params, images[i:i + batch_size])
        if sample_rng is not None:
            mean = vae.reparametrise(mean, logvar, sample_rng.standard_normal(mean.shape))
        out.append(onp.asarray(mean, dtype=onp.float32))
    return onp.concatenate(out)


def decode(params, z, batch_size=500):
    """Images of latents ``z``, clipped to the pixel range ``[-1, 1]``."""
    return onp.concatenate([onp.clip(vae.decode(params, z[i:i + batch_size]), -1.0, 1.0)
                            for i in range(0, len(z), batch_size)]).astype(onp.float32)


def latent_scale(params, images, rng):
    """``1 / std`` of latents drawn from ``q(z | x)`` over ``images``: the factor that gives the
    diffusion model unit-variance data, as Stable Diffusion's 0.18215 does for its autoencoder
    (Rombach et al. 2022, sec. 4.3.2 and appendix D.1, on how the latents' scale sets the
    signal-to-noise ratio; their code's ``scale_by_std`` takes one number, ``1 / std`` of the
    first batch's latents, for all components, as here over ``images``)."""
    z = encode(params, images, sample_rng=rng)
    return float(1.0 / z.std())


def psnr(x, y, peak_to_peak=2.0):
    """Peak signal-to-noise ratio in dB per image, for pixels in ``[-1, 1]`` (peak-to-peak 2):
    ``10 log10(2^2 / mean((x - y)^2))``; ``(N, ...) -> (N,)``."""
    mse = ((onp.asarray(x, float) - onp.asarray(y, float)) ** 2).reshape(len(x), -1).mean(axis=1)
    return 10.0 * onp.log10(peak_to_peak ** 2 / onp.maximum(mse, 1e-12))


def reconstruction_report(params, classifier_params, split, n=2000):
    """PSNR (mean, dB) and the evaluator's agreement with the label on encode-decode
    reconstructions (latent means) of the first ``n`` digits of ``split``."""
    from .datasets import mnist
    from .models import classifier

    x, y = (v[:n] for v in mnist(split))
    recon = decode(params, encode(params, x))
    return {"psnr_db": float(psnr(recon, x).mean()),
            "agreement": float(onp.mean(classifier.predict(classifier_params, recon) == y)),
            "n": int(n)}


# ----------------------------------------------------------------------------- the commands

def train_vae_command(out, steps, batch_size, lr, seed, extra):
    """``python -m minidiff train vae``: fit on the first 50,000 training digits, measure on the
    validation and test digits, write the weights with the latent scale."""
    from .datasets import mnist
    from .images import SHIPPED, load_classifier
    from .nn import checkpoint

    x, _ = mnist("fit")
    t0 = time.perf_counter()
    params, losses = train_vae(x, steps, batch_size, lr, seed=seed)
    seconds = time.perf_counter() - t0
    clf = load_classifier(SHIPPED["classifier"])
    scale = latent_scale(params, x[:5000], onp.random.default_rng(seed))
    rep = {s: reconstruction_report(params, clf, s) for s in ("validation", "test")}
    checkpoint.save(out, params, model="vae", seed=seed, steps=steps, batch_size=batch_size,
                    lr=lr, kl_weight=1e-4, latent_scale=scale, reconstruction=rep,
                    final_loss=float(losses[-100:].mean()), train_seconds=round(seconds, 1),
                    trained_on="fit (the first 50,000 training digits)", **extra)
    return (f"latent scale {scale:.4f}; validation PSNR {rep['validation']['psnr_db']:.2f} dB, "
            f"agreement {100 * rep['validation']['agreement']:.1f}%; test PSNR "
            f"{rep['test']['psnr_db']:.2f} dB, agreement {100 * rep['test']['agreement']:.1f}%")


# ----------------------------------------------------------------------------- the latent model

def load_vae(path):
    """``(params, latent_scale)`` of a file written by ``train vae``."""
    from .nn import checkpoint

    params, meta = checkpoint.load_kind(path, "vae", "the autoencoder", "train vae")
    return params, float(meta["latent_scale"])


def ldm_config():
    """The latent denoiser: chapter 6's U-Net on ``7 x 7 x 4`` latents, two levels (7, 4),
    Stable Diffusion's transformer block at both and in the middle, no class embedding."""
    from .models import unet

    return unet.UNetConfig(in_channels=vae.LATENT_CHANNELS, resolution=7, channels=(64, 64),
                           attention_levels=(0, 1), head_channels=32, context_dim=64,
                           num_classes=None)


def ldm_batches(sched, latents, data, text_params, text_cfg, scale, batch_size, p_uncond=0.1):
    """``batch_fn(rng)`` of ``ldm_loss``: scaled latents drawn from ``q(z | x)`` (``latents`` =
    ``(mean, logvar)`` of every digit of ``data``), a fresh caption per digit — the empty caption
    with probability ``p_uncond``, the null condition of classifier-free guidance, as Stable
    Diffusion drops 10% of its captions — its token states, a step and the noised latent."""
    mean, logvar = latents

    def batch_fn(rng):
        idx, caps, _ = data.draw(rng, batch_size)
        drop = rng.uniform(size=batch_size) < p_uncond
        caps = ["" if d else c for c, d in zip(caps, drop, strict=True)]
        z0 = scale * vae.reparametrise(mean[idx], logvar[idx],
                                       rng.standard_normal(mean[idx].shape, dtype=onp.float32))
        i = rng.integers(0, sched.T, size=batch_size)
        eps = rng.standard_normal(z0.shape, dtype=onp.float32)
        ctx = encode_captions(text_params, text_cfg, caps)
        return {"xt": ddpm.q_sample(sched, z0, i, eps).astype(onp.float32), "i": i, "eps": eps,
                "context": ctx["context"], "mask": ctx["mask"]}
    return batch_fn


def ldm_loss(config, params, batch):
    """``L_simple`` (Ho et al. 2020, eq. (14)) on latents, the caption as the condition."""
    from .models import unet
    from .nn import mean

    pred = unet.apply(params, batch["xt"], batch["i"].astype(onp.float32),
                      {"context": batch["context"], "mask": batch["mask"]}, config)
    return mean((pred - batch["eps"]) ** 2)


def _ldm_loss_factory(config):
    return functools.partial(ldm_loss, config)


def encode_all(vae_params, images, batch_size=500):
    """``(mean, logvar)`` of ``q(z | x)`` for every image, float32."""
    parts = [vae.encode(vae_params, images[i:i + batch_size])
             for i in range(0, len(images), batch_size)]
    return tuple(onp.concatenate([onp.asarray(p[k], onp.float32) for p in parts]) for k in (0, 1))


def train_ldm(state, vae_params, scale, text_params, text_cfg, data, steps, batch_size=128,
              lr=1e-3, warmup=200, cooldown=0, p_uncond=0.1, workers=1, progress=True,
              checkpoint_path=None, run=None):
    """The latent model on ``data`` (``CaptionedDigits``); returns ``(state, losses)``."""
    sched = ddpm.schedule("linear")
    batch_fn = ldm_batches(sched, encode_all(vae_params, data.images), data, text_params,
                           text_cfg, scale, batch_size, p_uncond)
    cfg = ldm_config()
    kwargs = dict(lr=lr, warmup=warmup, cooldown=cooldown, clip=1.0, ema=0.999,
                  checkpoint_path=checkpoint_path, checkpoint_every=100, progress=progress,
                  desc="latent model", run=run)
    return train.fit_parallel(functools.partial(_ldm_loss_factory, cfg), state, batch_fn, steps,
                              workers, **kwargs)


# ----------------------------------------------------------------------------- sampling

def caption_guided_eps(apply, params, config, context, null_context, guidance):
    """``eps_fn(x, i)``: classifier-free guidance with captions, ``eps_u + w (eps_c - eps_u)``
    (``guidance.guide``), the empty caption's token states as the unconditional branch; both
    halves as one batch of ``2N``. ``context`` and ``null_context``: ``encode_captions``
    outputs for ``N`` and for 1 caption (a ``"pooled"`` entry rides along). The rule is linear in
    the prediction, so it guides a flow velocity the same way (chapter 10). ``guidance`` may be
    one scale per caption ``(N,)`` and the step one per image (chapter 12's distillation)."""
    n = context["context"].shape[0]
    if onp.ndim(guidance) == 0:
        guidance = check_scale(guidance)
    elif onp.shape(guidance) != (n,) or not onp.all(onp.isfinite(guidance)):
        raise ValueError(f"`guidance` must be a finite number or one per caption, shape "
                         f"({n},) (got shape {onp.shape(guidance)})")
    else:
        guidance = onp.asarray(guidance, onp.float64).reshape(n, 1, 1, 1)
    null = {k: onp.repeat(v, n, axis=0) for k, v in null_context.items()}
    s = max(context["context"].shape[1], null["context"].shape[1])

    def pad(c):  # both contexts to the same length; the extra positions are masked
        extra = s - c["context"].shape[1]
        return (onp.pad(c["context"], ((0, 0), (0, extra), (0, 0))),
                onp.pad(c["mask"], ((0, 0), (0, extra))))
    both = dict(zip(("context", "mask"), (onp.concatenate(pair) for pair in
                                          zip(pad(context), pad(null), strict=True)),
                    strict=True))
    both.update({k: onp.concatenate([context[k], null[k]]) for k in context if k not in both})

    def eps_fn(x, i):
        t = onp.broadcast_to(onp.asarray(i, onp.float32), (n,))
        if onp.ndim(guidance) == 0 and guidance == 1.0:
            return apply(params, x, t, context, config)
        out = apply(params, onp.concatenate([x, x]), onp.concatenate([t, t]), both, config)
        return guide(out[:n], out[n:], onp.asarray(guidance, out.dtype))
    return eps_fn


def sample(models, prompts, rng, steps=50, guidance=3.0, batch_size=100, return_latents=False):
    """Digits for the caption strings ``prompts``: DDIM over ``steps`` steps in the latent space
    with caption guidance ``w``, divided by the latent scale and decoded. ``models`` =
    ``{"ldm": (params, config), "vae": (params, scale), "text": (params, config)}``
    (``load_models``). Returns ``(N, 1, 28, 28)`` in ``[-1, 1]`` (and the final latents)."""
    from .models import unet

    (params, cfg), (vae_params, scale), (text_params, text_cfg) = \
        models["ldm"], models["vae"], models["text"]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of strings (got {prompts!r})")
    sched = ddpm.schedule("linear")
    z = rng.standard_normal((len(prompts), vae.LATENT_CHANNELS, 7, 7)).astype(onp.float32)
    null = encode_captions(text_params, text_cfg, [""])
    out = []
    for k in range(0, len(prompts), batch_size):
        ctx = encode_captions(text_params, text_cfg, prompts[k:k + batch_size])
        eps_fn = caption_guided_eps(unet.apply, params, cfg, ctx, null, guidance)
        out.append(ddpm.ddim_sample(eps_fn, sched, z[k:k + batch_size], steps=steps))
    latents = onp.concatenate(out).astype(onp.float32)
    images = decode(vae_params, latents / scale)
    return (images, latents) if return_latents else images


def load_models(ldm_path, vae_path=None, text_path=None):
    """The three networks of a latent model file: ``{"ldm": (params, config), "vae": (params,
    scale), "text": (params, config)}``; the autoencoder and text encoder default to the files
    the latent model was trained with (recorded in it)."""
    from .models import unet
    from .nn import checkpoint

    params, meta = checkpoint.load_kind(ldm_path, "ldm", "a latent model", "train ldm")
    return {"ldm": (params, unet.UNetConfig(**meta["config"])),
            **frozen_networks(meta, vae_path, text_path)}


def frozen_networks(meta, vae_path=None, text_path=None):
    """``{"vae": (params, scale), "text": (params, config)}``: the two frozen networks a latent
    model file records (``meta["vae"]``, ``meta["text_encoder"]``), unless paths are given."""
    from .images import WEIGHTS_DIR

    def recorded(name):  # as recorded (relative to the repository), else the shipped file
        path = Path(meta[name])
        for candidate in (path, WEIGHTS_DIR.parent.parent / path):
            if candidate.exists():
                return candidate
        return WEIGHTS_DIR / path.name
    vae_path, text_path = vae_path or recorded("vae"), text_path or recorded("text_encoder")
    text_params, text_cfg, _ = load_text_encoder(text_path)
    return {"vae": load_vae(vae_path), "text": (text_params, text_cfg)}


def _relative(path):
    """A file's path relative to the repository when it lies inside it (model files record the
    frozen networks they were trained with), else as given."""
    from .images import WEIGHTS_DIR

    root = WEIGHTS_DIR.parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def train_ldm_command(out, steps, batch_size, lr, seed, extra, workers, vae, text_encoder):
    """``python -m minidiff train ldm``: the latent model on the first 50,000 training digits,
    with the autoencoder ``vae`` and the text encoder ``text_encoder`` (files) frozen."""
    from .datasets import mnist
    from .models import unet
    from .nn import checkpoint

    vae_file, text_file = vae, text_encoder
    vae_params, scale = load_vae(vae_file)
    text_params, text_cfg, thresholds = load_text_encoder(text_file)
    data = CaptionedDigits(*mnist("fit"), thresholds)
    cfg = ldm_config()
    ckpt = out.with_name(out.stem + ".train.npz")
    run = {"model": "ldm", "batch_size": batch_size, "lr": lr, "seed": seed,
           "vae": _relative(vae_file), "text_encoder": _relative(text_file)}
    state, resumed = train.resume_or_init(ckpt, run, lambda: train.init_state(
        unet.init(onp.random.default_rng(seed), cfg), seed))
    if resumed:
        print(f"resuming from {ckpt} at step {state.step}")
    t0 = time.perf_counter()
    state, losses = train_ldm(state, vae_params, scale, text_params, text_cfg, data, steps,
                              batch_size, lr, cooldown=steps // 5, workers=workers,
                              checkpoint_path=ckpt, run=run)
    seconds = time.perf_counter() - t0
    checkpoint.save(out, state.ema, model="ldm", config=cfg.to_dict(), target="eps",
                    schedule={"name": "linear", "T": 1000}, vae=_relative(vae_file),
                    text_encoder=_relative(text_file), latent_scale=scale, seed=seed, steps=steps,
                    batch_size=batch_size, lr=lr, p_uncond=0.1, workers=workers,
                    images_seen=steps * batch_size, final_loss=float(losses[-100:].mean()),
                    train_seconds=round(seconds, 1),
                    trained_on="fit (the first 50,000 training digits)", **extra)
    return f"{steps} steps, final loss {float(losses[-100:].mean()):.4f}"


# ----------------------------------------------------------------------------- did it listen?

def adherence(images, prompts, thresholds, classifier_params):
    """How far samples do what their prompts ask: ``{"agreement", "n_named", "attributes":
    {name: {"hit", "n"}}}``. ``agreement``: the evaluator's class is the digit the prompt names
    (over prompts that name one); for each attribute, ``hit`` is the fraction of the samples
    whose prompt asks for a bin of it that land in that bin, measured with the requested class's
    tertile thresholds (``captions.bins``). A model that ignores the attribute words but draws
    realistic digits of the right class lands in a named bin about a third of the time."""
    from .captions import ATTRIBUTES, bins, parse
    from .models import classifier

    asked = [parse(p) for p in prompts]
    named = onp.array([label is not None for label, _ in asked])
    labels = onp.array([0 if label is None else label for label, _ in asked])
    predicted = classifier.predict(classifier_params, images)
    measured = bins(images, labels, thresholds)
    out = {"agreement": float(onp.mean(predicted[named] == labels[named])) if named.any()
           else None, "n_named": int(named.sum()), "attributes": {}}
    for a in ATTRIBUTES:
        rows = [k for k, (_, want) in enumerate(asked) if a in want and named[k]]
        hits = [measured[a][k] == asked[k][1][a] for k in rows]
        out["attributes"][a] = {"hit": float(onp.mean(hits)) if rows else None, "n": len(rows)}
    return out


def class_only(prompts):
    """Each prompt reduced to its digit (``"a bold seven leaning right"`` -> ``"a seven"``,
    through the same template): the floor of ``adherence``, the model asked for the class alone."""
    from .captions import NUMBERS, parse

    out = []
    for p in prompts:
        label = parse(p)[0]
        out.append("" if label is None else ("an " if label == 8 else "a ") + NUMBERS[label])
    return out


def evaluation_prompts(thresholds, per_class=100, seed=0, split="validation"):
    """``per_class`` digits of each class from ``split`` (the first ones), one caption each
    (seeded): ``(prompts, digits, labels)``. The held-out prompts of the adherence table."""
    from .captions import describe
    from .datasets import mnist

    x, y = mnist(split)
    idx = onp.concatenate([onp.flatnonzero(y == c)[:per_class] for c in range(10)])
    data = CaptionedDigits(x[idx], y[idx], thresholds)
    rng = onp.random.default_rng(seed)
    prompts = [describe(int(data.labels[k]), {a: data.bins[a][k] for a in data.attributes}, rng,
                        data.p_mention)[0] for k in range(len(idx))]
    return prompts, data.images, data.labels


# ----------------------------------------------------------------------------- looking inside

def cross_attention_maps(models, prompt, rng, steps=50, guidance=3.0, level=0):
    """Sample one digit for ``prompt`` and record, at every DDIM step, the cross-attention
    weights of the transformer blocks at the 7 x 7 resolution (``level`` 0, the first of them
    in the encoder): ``(image, words, maps)`` with ``maps: (steps, 7, 7, len(words))`` — for each
    latent position, the weight on each of the caption's tokens (``<bos>``, the words,
    ``<eos>``), averaged over heads, for the guided (captioned) half of the batch.

    The weights are recomputed from the layer's own inputs by a wrapper around
    ``unet.cross_attention`` while the sampler runs; the network is unchanged."""
    from .models import unet
    from .nn.attention import softmax

    text_params, text_cfg = models["text"]
    params, cfg = models["ldm"]
    words = ["<bos>"] + text.split_words(prompt) + ["<eos>"]
    recorded, real = [], unet.cross_attention

    def listening(p, tokens, context, mask, heads):
        out = real(p, tokens, context, mask, heads)
        if tokens.shape[1] == 49:  # the 7 x 7 level
            n, length, c = tokens.shape
            q = onp.asarray(tokens[0]) @ p["q"]["w"] + p["q"]["b"]  # the captioned image
            k = onp.split(onp.asarray(context[0]) @ p["kv"]["w"] + p["kv"]["b"], 2, axis=1)[0]
            d = c // heads
            w = [softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / onp.sqrt(d),
                         mask[0][None]) for h in range(heads)]
            recorded.append(onp.mean(w, axis=0)[:, :len(words)])  # (49, words)
        return out
    unet.cross_attention = listening
    try:
        image = sample(models, [prompt], rng, steps=steps, guidance=guidance, batch_size=1)
    finally:
        unet.cross_attention = real
    per_step = len(recorded) // steps  # blocks at 7 x 7 per network call
    maps = onp.stack(recorded[level::per_step]).reshape(steps, 7, 7, len(words))
    return image, words, maps


def sample_command(out, weights, prompts, n, steps, guidance, seed, draw=None):
    """``python -m minidiff sample --prompt ...``: ``n`` digits per prompt into ``out`` (.npz,
    labels = the digit each prompt names, -1 for none) and a grid beside it (.png). ``draw(prompts,
    rng)`` replaces this chapter's sampler (chapter 10 passes its flow's)."""
    from . import datasets, plot
    from .captions import parse

    if draw is None:
        models = load_models(weights)
        draw = functools.partial(sample, models, steps=steps, guidance=guidance)
    every = [p for p in prompts for _ in range(n)]
    x = draw(every, onp.random.default_rng(seed))
    labels = onp.array([-1 if parse(p)[0] is None else parse(p)[0] for p in every])
    datasets.save_samples(out, datasets.to_uint8(x[:, 0]), labels)
    grid = Path(out).with_suffix(".png")
    plot.save(plot.prompt_rows(x, prompts, n), grid)
    return grid
