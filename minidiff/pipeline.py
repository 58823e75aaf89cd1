"""Diffusion on MNIST images: the glue between the U-Net (or DiT), DDPM and the training loop.

Used by the command line (``python -m minidiff train|sample|evaluate``), the chapter 6 notebook
and the demo. The recipe is DDPM's (Ho et al. 2020): the linear schedule over 1000 steps, the
network predicts the noise (``L_simple``), labels are dropped to the null class with probability
``p_uncond`` so that one network is both conditional and unconditional (Ho & Salimans 2022), and
samples come from DDIM with classifier-free guidance, ``eps_u + w (eps_c - eps_u)``.
"""

import functools
import importlib
import json
import time

import numpy as onp

from . import ddpm, metrics, train
from .nn import checkpoint, mean
from .targets import min_snr_weight, to_eps
from .targets import target as regression_target


def mnist_batches(sched, images, labels, batch_size, null_label=10, p_uncond=0.1,
                  paired=False):
    """``batch_fn(rng)``: images ``x0``, labels ``y`` (replaced by ``null_label`` with
    probability ``p_uncond``), a step index ``i`` per image, the noise and ``x_t``.

    ``paired=True`` (with ``p_uncond = 0.5``, the rate it implies) draws ``batch_size / 2``
    images, steps and noises and puts each in the batch twice: first half with its label, second
    half with the null label. The expected loss is that of dropping half the labels at random,
    but the conditional and unconditional predictions are regressed on the same ``x_t`` and the
    same noise, so the noise largely cancels from what the network learns of their difference
    (the quantity guidance amplifies). A departure from Ho & Salimans 2022 (Algorithm 1 drops
    each label independently), made here to test whether the network's low-noise
    ``eps_c - eps_u`` is training noise (README, chapter 6: it is not)."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"`p_uncond` must be a probability in [0, 1] (got {p_uncond})")
    if paired and (p_uncond != 0.5 or batch_size % 2):
        raise ValueError("paired label dropout puts every image in the batch twice, once with the "
                         "null label: it needs `p_uncond` = 0.5 and an even `batch_size` (got "
                         f"p_uncond={p_uncond}, batch_size={batch_size})")
    images = onp.asarray(images, dtype=onp.float32)

    def draw(rng, n, drop):
        idx = rng.integers(0, images.shape[0], size=n)
        y = labels[idx] if drop is None else onp.where(rng.uniform(size=n) < drop, null_label,
                                                        labels[idx])
        i = rng.integers(0, sched.T, size=n)
        eps = rng.standard_normal(images[idx].shape, dtype=onp.float32)
        xt = ddpm.q_sample(sched, images[idx], i, eps).astype(onp.float32)
        return {"xt": xt, "i": i, "y": y, "eps": eps, "x0": images[idx]}

    def batch_fn(rng):
        if not paired:
            return draw(rng, batch_size, p_uncond)
        b = draw(rng, batch_size // 2, None)
        twice = {k: onp.concatenate([v, v]) for k, v in b.items()}
        twice["y"] = onp.concatenate([b["y"], onp.full_like(b["y"], null_label)])
        return twice
    return batch_fn


def denoising_loss(apply, config, target="eps", weighting=None, gamma=5.0, sched=None):
    """The regression loss of a class-conditional network ``apply(params, x_t, i, y, config)``
    that predicts ``target`` (``"eps"`` or ``"v"``), averaged over pixels and the batch.

    ``"eps"`` is ``L_simple`` (Ho et al. 2020, eq. (14)). ``"v"`` regresses
    ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans & Ho 2022, sec. 4;
    ``targets.target``): in the x0 frame its weight is ``SNR + 1`` instead of eps's ``SNR``, and
    at high noise the network outputs about ``-x0`` instead of recovering ``x0`` from the tiny
    difference ``(x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)``. ``weighting="min_snr"``
    weights each image's error by Min-SNR-gamma in the target's frame (Hang et al. 2023, eq. (9);
    ``targets.min_snr_weight``). ``sched`` defaults to the linear schedule."""
    if target not in ("eps", "v"):
        raise ValueError(f"`target` must be 'eps' or 'v' (got {target!r})")
    if weighting not in (None, "min_snr"):
        raise ValueError(f"`weighting` must be None or 'min_snr' (got {weighting!r})")
    sched = sched or ddpm.schedule("linear")
    alpha = onp.sqrt(sched.alpha_bar).astype(onp.float32)  # (T,)
    sigma = onp.sqrt(1.0 - sched.alpha_bar).astype(onp.float32)
    weights = None
    if weighting == "min_snr":
        weights = min_snr_weight(target, alpha.astype(float), sigma.astype(float),
                                 gamma).astype(onp.float32)  # (T,)

    def loss(params, batch):
        pred = apply(params, batch["xt"], batch["i"].astype(onp.float32), batch["y"], config)
        truth = batch["eps"] if target == "eps" else regression_target(
            target, batch["x0"], batch["eps"], alpha[batch["i"]], sigma[batch["i"]])
        if weights is None:
            return mean((pred - truth) ** 2)
        per_image = mean((pred - truth) ** 2, axis=(1, 2, 3))  # (N,)
        return mean(per_image * weights[batch["i"]])
    return loss


def eps_network(apply, target, sched=None):
    """The network ``apply(params, x_t, i, y, config)`` that predicts ``target`` as a noise
    predictor with the same signature: its output converted by ``targets.to_eps`` at each image's
    ``alpha = sqrt(alpha_bar_i)``, ``sigma = sqrt(1 - alpha_bar_i)``. The samplers, guidance and
    the chapters' comparisons all speak eps; the training target is the network's own business.
    (A ``functools.partial``, so it pickles: ``sample(..., workers=2)`` sends it to processes.)"""
    if target == "eps":
        return apply
    if target != "v":
        raise ValueError(f"`target` must be 'eps' or 'v' (got {target!r})")
    return functools.partial(_converted_to_eps, apply, target, sched or ddpm.schedule("linear"))


def _converted_to_eps(apply, target, sched, params, x, i, y, config):
    idx = onp.asarray(i).astype(int)
    a = onp.sqrt(sched.alpha_bar[idx]).astype(x.dtype)  # float32 stays float32
    s = onp.sqrt(1.0 - sched.alpha_bar[idx]).astype(x.dtype)
    return to_eps(target, apply(params, x, i, y, config), x, a, s)


def train_mnist(arch, config, state, images, labels, steps, *, batch_size=32, lr=1e-3,
                warmup=200, cooldown=0, target="eps", weighting=None, p_uncond=0.1,
                paired=False, workers=1, checkpoint_path=None, checkpoint_every=100,
                progress=True, desc="train"):
    """The image recipe of chapters 6 and 9 for a model module ``arch`` (``unet`` or ``dit``):
    ``denoising_loss`` on the linear schedule (``target`` eps: ``L_simple``, or v;
    ``weighting="min_snr"``: Min-SNR-5), label dropout with probability ``p_uncond`` (``paired``:
    every image with and without its label, ``mnist_batches``), Adam
    with ``warmup`` steps to ``lr`` (and, with ``cooldown``, a linear fall to zero over the last
    ``cooldown`` steps), gradient norm clipped at 1, EMA 0.999 (warmed up). ``workers > 1``
    splits each batch over that many processes (``parallel.DataParallel``). Returns
    ``(state, losses)``."""
    batch_fn = mnist_batches(ddpm.schedule("linear"), images, labels, batch_size,
                             p_uncond=p_uncond, paired=paired)
    loss = denoising_loss(arch.apply, config, target, weighting)
    kwargs = dict(lr=lr, warmup=warmup, cooldown=cooldown, clip=1.0, ema=0.999,
                  checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                  progress=progress, desc=desc)
    if workers == 1:
        return train.fit(loss, state, batch_fn, steps, **kwargs)
    from .parallel import DataParallel

    factory = functools.partial(image_loss, arch.__name__, config, target, weighting)
    with DataParallel(factory, state.params, workers) as value_and_grad:
        return train.fit(loss, state, batch_fn, steps, value_and_grad=value_and_grad, **kwargs)


def image_loss(arch_name, config, target="eps", weighting=None):
    """``denoising_loss`` for the model module named ``arch_name`` (e.g.
    ``"minidiff.models.unet"``): a picklable way to build the loss inside ``DataParallel``'s
    worker processes."""
    return denoising_loss(importlib.import_module(arch_name).apply, config, target, weighting)


def guided_eps(apply, params, config, labels, guidance=2.0, null_label=10, interval=None):
    """``eps_fn(x, i)`` for the samplers: classifier-free guidance (Ho & Salimans 2022, eq. (6)),
    ``eps_u + w (eps_c - eps_u)``; ``w = 1`` is the plain conditional model, ``w = 0`` the
    unconditional one. Both halves run as one batch of ``2N``.

    ``interval = (lo, hi)`` guides only at steps ``lo <= i < hi`` and uses the conditional model
    (``w = 1``) at the others: a guidance interval (Kynkäänniemi et al. 2024, who find
    guidance harmful at the highest noise levels of ImageNet models and unnecessary at the
    lowest). ``None`` guides at every step."""
    labels = onp.asarray(labels)
    interval = _check_interval(interval)

    def eps_fn(x, i):
        x = x.astype(onp.float32)
        n = x.shape[0]
        if guidance == 1.0 or (interval is not None and not interval[0] <= i < interval[1]):
            return apply(params, x, onp.full(n, i, onp.float32), labels, config)
        both = apply(params, onp.concatenate([x, x]), onp.full(2 * n, i, onp.float32),
                     onp.concatenate([labels, onp.full(n, null_label)]), config)
        eps_c, eps_u = both[:n], both[n:]
        return eps_u + guidance * (eps_c - eps_u)
    return eps_fn


def _check_interval(interval):
    if interval is None:
        return None
    pair = isinstance(interval, (tuple, list)) and len(interval) == 2
    if not (pair and all(isinstance(v, (int, onp.integer)) for v in interval)
            and 0 <= interval[0] <= interval[1]):
        raise ValueError(f"the guidance interval must be two step indices (lo, hi) with "
                         f"0 <= lo <= hi (got {interval!r})")
    return int(interval[0]), int(interval[1])


def sample(apply, params, config, labels, rng, steps=100, guidance=2.0, batch_size=200,
           spacing="leading", progress=None, workers=1, guidance_interval=None):
    """Images for ``labels`` by deterministic DDIM over ``steps`` steps with guidance ``w``
    (at the steps in ``guidance_interval``, all by default: ``guided_eps``), predicted ``x0``
    clipped to the pixel range at every step (``ddpm.ddim_sample``'s ``clip_x0``); returns
    float32 ``(N, 1, 28, 28)`` in ``[-1, 1]``.

    The starting noise is drawn for all ``labels`` at once, so the images do not depend on how
    they are batched: ``workers > 1`` splits them over that many one-thread processes
    (``parallel.map_in_processes``; about 1.8x the throughput of one two-thread process on 2
    cores) and gives the same images up to float32 rounding. ``progress(k)`` is called after
    each batch of ``k`` images. Batches hold at most ``batch_size`` images (``numpy.array_split``
    sizes; with workers, a whole number of rounds)."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"`workers` must be a positive integer (got {workers!r})")
    labels = onp.asarray(labels)
    z = rng.standard_normal((len(labels), config.in_channels, config.resolution,
                             config.resolution)).astype(onp.float32)
    chunks = max(1, -(-len(labels) // batch_size))
    if workers > 1:
        chunks = workers * -(-chunks // workers)  # whole rounds: every worker equally busy
    pieces = list(zip(onp.array_split(labels, chunks), onp.array_split(z, chunks), strict=True))
    run = functools.partial(_sample_batch, apply, params, config, steps, guidance, spacing,
                            _check_interval(guidance_interval))
    report = None if progress is None else (lambda x: progress(len(x)))
    if workers == 1:
        out = []
        for y, noise in pieces:
            out.append(run(y, noise))
            if report is not None:
                report(out[-1])
    else:
        from .parallel import map_in_processes

        out = map_in_processes(run, pieces, workers, callback=report)
    return onp.concatenate(out)


def _sample_batch(apply, params, config, steps, guidance, spacing, interval, labels, z):
    x = ddpm.ddim_sample(guided_eps(apply, params, config, labels, guidance, interval=interval),
                         ddpm.schedule("linear"), z, steps=steps, spacing=spacing,
                         clip_x0=(-1.0, 1.0))
    return onp.clip(x, -1.0, 1.0).astype(onp.float32)


def to_uint8(x):
    """``[-1, 1]`` floats to 0..255 pixels (the inverse of the MNIST loader's scaling)."""
    return onp.clip(onp.round((onp.asarray(x) + 1.0) * 127.5), 0, 255).astype(onp.uint8)


def save_samples(path, images, labels):
    """Write samples as ``.npz`` with ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64
    ``(N,)``, atomically: any tool can read them (``numpy.load``, no pickle)."""
    images = onp.asarray(images)
    if images.dtype != onp.uint8 or images.ndim != 3:
        raise ValueError(f"`images` must be uint8 (N, H, W) (got {images.dtype} {images.shape})")
    labels = onp.asarray(labels, dtype=onp.int64)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"`labels` must have shape ({images.shape[0]},) (got {labels.shape})")
    checkpoint.atomic_write(path, lambda f: onp.savez_compressed(f, images=images, labels=labels))


def load_samples(path):
    """Read ``save_samples``' format back: ``(images uint8 (N, H, W), labels int64 (N,))``."""
    try:
        with open(path, "rb") as fh, onp.load(fh, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except KeyError as err:
        raise ValueError(f"{path!r} must hold `images` and `labels` arrays (missing {err})") \
            from None
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read samples from {path!r}: {err}") from None
    if images.dtype != onp.uint8 or images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{path!r}: expected uint8 images (N, H, W) and N labels "
                         f"(got {images.dtype} {images.shape}, labels {labels.shape})")
    return images, labels.astype(onp.int64)


def save_model(path, params, config, kind="unet", target="eps", **meta):
    """Shipped weights: the parameter tree plus the architecture, the network's prediction
    target and how it was made."""
    checkpoint.save(path, params, model=kind, config=config.to_dict(), target=target, **meta)


def load_model(path):
    """``(apply, params, config, meta)`` from weights written by ``save_model``. ``apply`` is
    always a noise predictor: a network trained on another target (``meta["target"]``; weights
    without it predict eps) comes wrapped by ``eps_network``."""
    params, meta = checkpoint.load(path)
    kind = meta.get("model")
    if kind == "unet":
        from .models import unet as arch
        config = arch.UNetConfig(**meta["config"])
    elif kind == "dit":
        from .models import dit as arch
        config = arch.DiTConfig(**meta["config"])
    else:
        raise ValueError(f"{path!r} holds an unknown model kind {kind!r}")
    return eps_network(arch.apply, meta.get("target", "eps")), params, config, meta


# ----------------------------------------------------------------------------- DiT scaling sweep

# (patch, width): 3.5 to 58 forward Mflops per image. (2, 128), 194 Mflops, costs as much to
# train as the other five together on 2 cores; add it with ``--shapes`` when there is time.
SWEEP_SHAPES = ((7, 64), (7, 128), (4, 64), (4, 128), (2, 64))
# beside (4, 64) with adaLN-zero and L_simple: the conditioning ablation and Min-SNR-5 weighting
ABLATION_SHAPES = ((4, 64, "cross_attention"), (4, 64, "in_context"),
                   (4, 64, "adaln_zero", "min_snr"))


def dit_sweep(images, labels, classifier_params, shapes=SWEEP_SHAPES + ABLATION_SHAPES, *,
              steps=1500, batch_size=32, lr=1e-3, seed=0, depth=4, heads=4, n_eval=200,
              eval_steps=50, guidance=2.0, progress=True):
    """The DiT paper's scaling experiment in miniature (Peebles & Xie 2023, figs. 2 and 8): train
    one DiT per ``(patch, width[, conditioning[, weighting]])`` (conditioning: the paper's fig. 5
    ablation, adaLN-zero if not given; weighting: ``train_mnist``'s) for the same ``steps``,
    sample ``n_eval`` images (equal per class; DDIM, ``eval_steps`` steps, guidance
    ``guidance``) from each EMA, and score them.

    Returns one row per model: its shape, parameter count, forward Gflops (``dit.gflops``),
    training seconds, final loss, FD-MNIST, the real-vs-real baseline at ``n_eval`` and the class
    agreement. Every model sees the same seed, batches and evaluation noise."""
    from . import nn
    from .models import dit

    rows = []
    eval_labels = onp.repeat(onp.arange(10), n_eval // 10)
    for shape in shapes:
        patch, width, conditioning, weighting = (tuple(shape) + ("adaln_zero", None)[
            len(shape) - 2:])
        cfg = dit.DiTConfig(patch=patch, width=width, depth=depth, heads=heads,
                            conditioning=conditioning)
        params = dit.init(onp.random.default_rng(seed), cfg)
        t0 = time.perf_counter()
        state, losses = train_mnist(dit, cfg, train.init_state(params, seed), images, labels,
                                    steps, batch_size=batch_size, lr=lr, weighting=weighting,
                                    progress=progress,
                                    desc=f"DiT {patch}x{width} {conditioning}")
        seconds = time.perf_counter() - t0
        x = sample(dit.apply, state.ema, cfg, eval_labels, onp.random.default_rng(seed),
                   steps=eval_steps, guidance=guidance)
        r = metrics.evaluate_samples(x, eval_labels, classifier_params,
                                     onp.random.default_rng(seed))
        rows.append({"patch": patch, "width": width, "depth": depth, "heads": heads,
                     "conditioning": conditioning, "weighting": weighting or "none",
                     "tokens": cfg.tokens, "params": nn.tree_size(params),
                     "gflops": dit.gflops(cfg), "train_seconds": round(seconds, 1),
                     "final_loss": float(onp.mean(losses[-100:])), "fd": r["fd"],
                     "fd_real": r["fd_real"], "agreement": r["agreement"]})
    return rows


def save_sweep(path, rows, **meta):
    """The sweep's table as JSON (``{"meta": ..., "rows": [...]}``), written atomically."""
    text = json.dumps({"meta": meta, "rows": rows}, indent=1)
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def load_sweep(path):
    """``(rows, meta)`` from ``save_sweep``'s file."""
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path!r} is not a DiT sweep table (no `rows`)")
    return data["rows"], data.get("meta", {})
