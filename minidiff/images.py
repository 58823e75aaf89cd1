"""Diffusion on MNIST images: the glue every image chapter shares (6 U-Net, 9 DiT, and after).

Read top to bottom: batches, the loss, the training recipe, sampling, model files, and the
classifier that evaluates the samples. The recipe is DDPM's (Ho et al. 2020): a schedule over
1000 steps (linear unless the model file says otherwise), the network predicts the noise
(``L_simple``) or ``v``, labels are dropped to the null class with probability ``p_uncond`` so
that one network is both conditional and unconditional (Ho & Salimans 2022), and samples come
from DDIM with classifier-free guidance (``guidance.guided_eps``).

Every coefficient is read from the schedule's Gaussian path (``Schedule.path``, a
``process.DiscreteVP``): ``alpha_i = path.alpha(i)``, ``sigma_i = path.sigma(i)``.
"""

import functools
import importlib
import os
from pathlib import Path

import numpy as onp

from . import ddpm, train
from .guidance import check_interval, classifier_guided_eps, classifier_log_prob_grad, guided_eps
from .nn import checkpoint, mean
from .targets import min_snr_weight, to_eps
from .targets import target as regression_target

DEFAULT_SCHEDULE = {"name": "linear", "T": 1000}
# The shipped weights, found from the package (not the current folder), as the MNIST loader does.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "data" / "weights"
# unet_small: chapter 7's autoguidance model; noisy_classifier: its noise-conditional classifier;
# vae, clip, ldm: chapter 8's autoencoder, text encoder and latent model; pd4, pd2, cm: chapter
# 12's progressive students (4 and 2 steps), consistency model and latent consistency model
SHIPPED = {name: WEIGHTS_DIR / f"{name}_mnist.npz"
           for name in ("unet", "dit", "classifier", "noisy_classifier", "unet_small", "vae",
                        "clip", "ldm", "flow", "reflow", "mmdit", "sit", "pd4", "pd2", "cm", "lcm")}


def path_coefficients(sched, dtype=onp.float32):
    """``(alpha, sigma)``, each ``(T,)``, of the schedule's path at every step index."""
    steps = onp.arange(sched.T)
    return sched.path.alpha(steps).astype(dtype), sched.path.sigma(steps).astype(dtype)


# ----------------------------------------------------------------------------- batches and loss

def mnist_batches(sched, images, labels, batch_size, null_label=10, p_uncond=0.1,
                  paired=False):
    """``batch_fn(rng)``: images ``x0``, labels ``y`` (replaced by ``null_label`` with
    probability ``p_uncond``), a step index ``i`` per image, the noise and ``x_t``.

    ``paired=True`` (with ``p_uncond = 0.5``, the rate it implies) draws ``batch_size / 2``
    images, steps and noises and puts each in the batch twice: first half with its label, second
    half with the null label. The expected loss is that of dropping half the labels at random,
    but the conditional and unconditional predictions are regressed on the same ``x_t`` and the
    same noise. A departure from Ho & Salimans 2022 (Algorithm 1 drops each label
    independently), kept to test whether the network's low-noise ``eps_c - eps_u`` is training
    noise (it is not: ``data/weights/README.md``)."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"`p_uncond` must be a probability in [0, 1] (got {p_uncond})")
    if not (isinstance(batch_size, int | onp.integer) and batch_size >= 1):
        raise ValueError(f"`batch_size` must be a positive integer (got {batch_size!r})")
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
    ``v = alpha eps - sigma x0`` (Salimans & Ho 2022, sec. 4; ``targets.target``): in the x0
    frame its weight is ``SNR + 1`` instead of eps's ``SNR``. ``weighting="min_snr"`` weights
    each image's error by Min-SNR-gamma in the target's frame (Hang et al. 2023, eq. (9);
    ``targets.min_snr_weight``). ``sched`` defaults to the linear schedule."""
    if target not in ("eps", "v"):
        raise ValueError(f"`target` must be 'eps' or 'v' (got {target!r})")
    if weighting not in (None, "min_snr"):
        raise ValueError(f"`weighting` must be None or 'min_snr' (got {weighting!r})")
    sched = sched or ddpm.schedule("linear")
    alpha, sigma = path_coefficients(sched)  # (T,) each
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
    """The network ``apply(params, x_t, i, y, config)`` that predicts ``target`` (eps, x0 or v)
    as a noise predictor with the same signature: its output converted by ``targets.to_eps`` at
    each image's ``alpha_i``, ``sigma_i``. The samplers, guidance and the chapters' comparisons
    all speak eps; the training target is the network's own business. (A ``functools.partial``,
    so it pickles: ``sample(..., workers=2)`` sends it to processes.)"""
    if target == "eps":
        return apply
    if target not in ("x0", "v"):
        raise ValueError(f"`target` must be 'eps', 'x0' or 'v' (got {target!r})")
    return functools.partial(_converted_to_eps, apply, target, sched or ddpm.schedule("linear"))


def _converted_to_eps(apply, target, sched, params, x, i, y, config):
    idx = onp.asarray(i).astype(int)
    alpha, sigma = path_coefficients(sched, x.dtype)  # (T,) each; float32 stays float32
    return to_eps(target, apply(params, x, i, y, config), x, alpha[idx], sigma[idx])


# ----------------------------------------------------------------------------- training

def train_mnist(arch, config, state, images, labels, steps, *, batch_size=32, lr=1e-3,
                warmup=200, cooldown=0, target="eps", weighting=None, p_uncond=0.1,
                paired=False, workers=1, checkpoint_path=None, checkpoint_every=100,
                progress=True, desc="train", sched=None, run=None, seconds=None, spent=0.0,
                threads=None):
    """The image recipe of chapters 6 and 9 for a model module ``arch`` (``unet`` or ``dit``):
    ``denoising_loss`` on ``sched`` (the linear schedule by default; ``target`` eps:
    ``L_simple``, or v; ``weighting="min_snr"``: Min-SNR-5), label dropout with probability
    ``p_uncond`` (``paired``: every image with and without its label, ``mnist_batches``), Adam
    with ``warmup`` steps to ``lr`` (and, with ``cooldown``, a linear fall to zero over the last
    ``cooldown`` steps), gradient norm clipped at 1, EMA 0.999 (warmed up). ``workers > 1``
    splits each batch over that many processes (``nn.parallel.DataParallel``); in one process
    the batch is split over ``threads`` threads (``nn.threads.ThreadParallel``; default: one per
    core this process may use, ``default_threads``). ``run`` is
    recorded in the checkpoints (``train.save_state``). ``seconds`` is a time budget and
    ``steps=None`` plans the run's length from it (``train.train``). Returns
    ``(state, losses)``."""
    sched = sched or ddpm.schedule("linear")
    batch_fn = mnist_batches(sched, images, labels, batch_size, p_uncond=p_uncond,
                             paired=paired)
    loss = denoising_loss(arch.apply, config, target, weighting, sched=sched)
    kwargs = dict(lr=lr, warmup=warmup, cooldown=cooldown, clip=1.0, ema=0.999,
                  checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
                  progress=progress, desc=desc, run=run, seconds=seconds, spent=spent)
    if workers == 1:
        from .nn.threads import ThreadParallel

        with ThreadParallel(loss, threads or default_threads()) as value_and_grad:
            return train.fit(loss, state, batch_fn, steps, value_and_grad=value_and_grad,
                             **kwargs)
    from .nn.parallel import DataParallel

    factory = functools.partial(image_loss, arch.__name__, config, target, weighting, sched)
    with DataParallel(factory, state.params, workers) as value_and_grad:
        return train.fit(loss, state, batch_fn, steps, value_and_grad=value_and_grad, **kwargs)


def default_threads():
    """The cores this process may run on (``os.sched_getaffinity`` where the system has it):
    how many threads share a training batch or a sampling run in one process."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(
        os.cpu_count() or 1)
    return max(1, len(cores))


def image_loss(arch_name, config, target="eps", weighting=None, sched=None):
    """``denoising_loss`` for the model module named ``arch_name`` (e.g.
    ``"minidiff.models.unet"``): a picklable way to build the loss inside ``DataParallel``'s
    worker processes."""
    return denoising_loss(importlib.import_module(arch_name).apply, config, target, weighting,
                          sched=sched)


# ----------------------------------------------------------------------------- sampling

def sample(apply, params, config, labels, rng, steps=100, guidance=2.0, batch_size=200,
           spacing="leading", progress=None, workers=1, guidance_interval=None, sched=None,
           bad=None, classifier=None, threads=None):
    """Images for ``labels`` by deterministic DDIM over ``steps`` steps of ``sched`` (the linear
    schedule by default; ``model_schedule(meta)`` for a model file) with guidance ``w`` (at the
    steps in ``guidance_interval``, all by default: ``guidance.guided_eps``), predicted ``x0``
    clipped to the pixel range at every step (``ddpm.ddim_sample``'s ``clip_x0``); returns
    float32 ``(N, 1, 28, 28)`` in ``[-1, 1]``.

    The starting noise is drawn for all ``labels`` at once, so the images do not depend on how
    they are batched: ``workers > 1`` splits them over that many one-thread processes
    (``nn.parallel.map_in_processes``), and in one process the batches run on ``threads``
    threads (``nn.threads.map_in_threads``; default ``default_threads()``). The batches are cut
    the same way on any number of threads, and each image goes through the same operations in
    the same order, so the images are the same bit for bit (a test holds threads to it; the
    shipped U-Net's were also checked so with two workers, which cut the same batches).
    ``progress(k)`` is called after each batch of ``k`` images. Batches hold at most
    ``batch_size`` images (``numpy.array_split`` sizes, an even number of them; with workers, a
    whole number of rounds).

    Two other kinds of guidance, at the same scale ``guidance``: ``bad = (apply, params,
    config)`` of a weaker conditional model is autoguidance (``guided_eps``); ``classifier`` (a
    noise-conditional classifier's parameters, ``train_noisy_classifier``) is classifier
    guidance of the *unconditional* model (``guidance.classifier_guided_eps``)."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"`workers` must be a positive integer (got {workers!r})")
    if not (isinstance(batch_size, int | onp.integer) and batch_size >= 1):
        raise ValueError(f"`batch_size` must be a positive integer (got {batch_size!r})")
    labels = onp.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not onp.issubdtype(labels.dtype, onp.integer):
        raise ValueError(f"`labels` must be a non-empty 1-D array of integers (got "
                         f"{labels.dtype} {labels.shape})")
    from .guidance import check_scale

    guidance = check_scale(guidance)
    sched = sched or ddpm.schedule("linear")
    z = rng.standard_normal((len(labels), config.in_channels, config.resolution,
                             config.resolution)).astype(onp.float32)
    # The cut depends on `batch_size` alone, never on `threads`: BLAS may pick another kernel
    # for another number of rows (OpenBLAS 0.3.31 does for small ones), which would change the
    # last bits. An even number of batches keeps two threads equally busy.
    chunks = 2 * -(-len(labels) // (2 * batch_size))
    threads = (threads or default_threads()) if workers == 1 else 1
    if workers > 1:  # whole rounds: every worker equally busy
        chunks = workers * -(-chunks // workers)
    chunks = min(chunks, len(labels))
    pieces = list(zip(onp.array_split(labels, chunks), onp.array_split(z, chunks), strict=True))
    if bad is not None and classifier is not None:
        raise ValueError("give `bad` (autoguidance) or `classifier` (classifier guidance), not "
                         "both")
    run = functools.partial(_sample_batch, apply, params, config, sched, steps, guidance,
                            spacing, check_interval(guidance_interval), bad, classifier)
    report = None if progress is None else (lambda x: progress(len(x)))
    if workers == 1:
        from .nn.threads import map_in_threads

        out = map_in_threads(run, pieces, threads, callback=report)
    else:
        from .nn.parallel import map_in_processes

        out = map_in_processes(run, pieces, workers, callback=report)
    return onp.concatenate(out)


def _sample_batch(apply, params, config, sched, steps, guidance, spacing, interval, bad,
                  classifier, labels, z):
    if classifier is None:
        eps_fn = guided_eps(apply, params, config, labels, guidance, interval=interval, bad=bad)
    else:
        null = onp.full(len(labels), 10)  # the unconditional model: every label the null class
        eps_fn = classifier_guided_eps(
            lambda x, i: apply(params, x.astype(onp.float32), onp.full(len(x), i, onp.float32),
                               null, config),
            noisy_classifier_grad(classifier), sched.path.sigma, labels, guidance)
    x = ddpm.ddim_sample(eps_fn, sched, z, steps=steps, spacing=spacing, clip_x0=(-1.0, 1.0))
    return onp.clip(x, -1.0, 1.0).astype(onp.float32)


# ----------------------------------------------------------------------------- model files

def save_model(path, params, config, kind="unet", target="eps", schedule=None, **meta):
    """Shipped weights: the parameter tree plus the architecture, the network's prediction
    target, its noise schedule (``{"name": ..., "T": ...}``, linear over 1000 steps by default)
    and how it was made."""
    schedule = dict(schedule or DEFAULT_SCHEDULE)
    ddpm.schedule(**schedule)  # refuse an unknown schedule before writing anything
    checkpoint.save(path, params, model=kind, config=config.to_dict(), target=target,
                    schedule=schedule, **meta)


def model_schedule(meta):
    """The ``ddpm.Schedule`` a model file was trained on (files written before the schedule was
    stored were all trained on the linear one)."""
    spec = meta.get("schedule", DEFAULT_SCHEDULE)
    if not isinstance(spec, dict):
        raise ValueError(f"a model file's `schedule` must be a dict such as {DEFAULT_SCHEDULE} "
                         f"(got {spec!r})")
    return ddpm.schedule(**spec)


def load_model(path):
    """``(apply, params, config, meta)`` from weights written by ``save_model``. ``apply`` is
    always a noise predictor: a network trained on another target (``meta["target"]``; weights
    without it predict eps) comes wrapped by ``eps_network`` on the file's schedule."""
    params, meta = checkpoint.load(path)
    kind = meta.get("model")
    if kind == "unet":
        from .models import unet as arch
        config = arch.UNetConfig(**meta["config"])
    elif kind == "dit":
        from .models import dit as arch
        config = arch.DiTConfig(**meta["config"])
    else:
        raise ValueError(f"{path!s} holds a model of kind {kind!r}; expected the weights of a "
                         "'unet' or a 'dit' (written by `train unet` or `train dit`)")
    return (eps_network(arch.apply, meta.get("target", "eps"), model_schedule(meta)), params,
            config, meta)


def ideal_model(images, labels, sched=None, config=None):
    """``(apply, params, config)`` of the ideal denoiser of ``images`` (``models/ideal.py``) as
    a noise predictor on ``sched``: what ``sample`` takes, so it is sampled as a network is."""
    from .models import ideal

    sched, config = sched or ddpm.schedule("linear"), config or ideal.IdealConfig()
    params = ideal.init(images, labels, sched.path, config)
    return eps_network(ideal.apply, "x0", sched), params, config


# ----------------------------------------------------------------------------- the evaluator

def load_classifier(path, kind="classifier"):
    """The evaluator's parameters from a file written by ``train classifier`` (or, with
    ``kind="noisy_classifier"``, chapter 7's noise-conditional classifier from ``train
    noisy-classifier``); any other model file is refused by name (its parameters would not fit
    ``models/classifier.py``)."""
    command = kind.replace("_", "-")
    params, _ = checkpoint.load_kind(path, kind, f"the MNIST {command.replace('-', ' ')}",
                                     f"train {command}")
    return params


def train_classifier(images, labels, steps=1000, batch_size=128, lr=1e-3, seed=0, progress=True):
    """Train the evaluator (``models/classifier.py``) with Adam through the shared loop
    (``train.fit``); returns the EMA parameters."""
    from .models import classifier

    def batch_fn(rng):
        idx = rng.integers(0, len(images), size=batch_size)
        return {"x": images[idx], "y": labels[idx]}

    state = train.init_state(classifier.init(onp.random.default_rng(seed)), seed)
    state, _ = train.fit(classifier.loss, state, batch_fn, steps, lr=lr, warmup=50, ema=0.999,
                         progress=progress, desc="classifier")
    return state.ema


def train_noisy_classifier(images, labels, sched=None, steps=2000, batch_size=128, lr=1e-3,
                           seed=0, progress=True):
    """Chapter 7's noise-conditional classifier ``p_t(c | x_t)``: ``models/classifier.py``'s
    network with the step index as an input, trained with cross-entropy on digits noised along
    ``sched``'s path at a step drawn uniformly, as the denoiser sees them (Dhariwal & Nichol
    2021, sec. 4). Adam through ``train.fit``; returns the EMA parameters."""
    from .models import classifier

    sched = sched or ddpm.schedule("linear")
    batches = mnist_batches(sched, images, labels, batch_size, p_uncond=0.0)
    state = train.init_state(classifier.init_noisy(onp.random.default_rng(seed)), seed)
    state, _ = train.fit(classifier.noisy_loss, state, batches, steps, lr=lr, warmup=50,
                         ema=0.999, progress=progress, desc="noisy classifier")
    return state.ema


def noisy_classifier_accuracy(params, sched=None, n=2000, steps=(0, 250, 500, 750, 999)):
    """``{split: {str(step): accuracy}}`` of the noise-conditional classifier on the first ``n``
    validation and test digits noised to each step (``guidance.classifier_accuracy_by_step``).
    ``n = 2000``: a standard error of at most 1.1 points on each accuracy."""
    from .datasets import mnist
    from .guidance import classifier_accuracy_by_step

    sched = sched or ddpm.schedule("linear")
    return {split: {str(i): a for i, a in classifier_accuracy_by_step(
        params, *(v[:n] for v in mnist(split)), sched, steps, onp.random.default_rng(0)).items()}
        for split in ("validation", "test")}


def noisy_classifier_grad(params):
    """``g(x, t, labels) = grad_x log p_t(c | x)`` of the noise-conditional classifier, one row
    per image (``guidance.classifier_log_prob_grad``)."""
    from .models import classifier

    return classifier_log_prob_grad(functools.partial(classifier.noisy_log_probs, params))
