"""The ideal denoiser of a finite training set: the network every denoising loss is trying to be.

Trained on a finite set ``{x0_m}``, the denoising regression ``E|eps_hat(x_t) - eps|²`` is
minimised by the exact posterior mean over that set (Tweedie, chapter 2), which has a closed form
(Karras et al. 2022, appendix B.3, eq. (57), in their ``x = y + sigma n`` form):

    E[x0 | x_t] = sum_m w_m x0_m,    w_m ∝ N(x_t; alpha x0_m, sigma² I)

with ``alpha = path.alpha(i)``, ``sigma = path.sigma(i)`` of the DDPM path at step ``i``. The
weights are a softmax over ``(alpha x_t·x0_m - ½ alpha² |x0_m|²) / sigma²`` (the ``|x_t|²`` term
is the same for every ``m``): an attention pattern with queries ``x_t``, keys and values the
training images. ``datasets.posterior_weights`` computes the same weights for any point set
(``tests/test_ideal.py`` checks the two agree). With a class label the sum runs over that class's
images only; the null label (``num_classes``) sums over all of them, so it plugs into the same
classifier-free guidance as the U-Net.

``apply`` returns the posterior mean itself, the denoiser ``D(x; sigma)`` of eq. (57): an
x0-prediction. ``images.ideal_model`` wraps it as a noise predictor (``targets.to_eps``) for the
samplers, as it does a network trained on ``x0`` or ``v``.

It is a perfect score network *for the training set*, and therefore a memoriser: at low noise the
posterior collapses onto the nearest training image, and the probability-flow ODE ends on training
images, never on new digits. What it is good for is a yardstick: sampled and evaluated exactly as a
network is, it shows what a sampler, guidance or a metric does with an exact score, so a gap
between it and a trained network is the network's.

Its "parameters" are the data and the path: ``params = init(images, labels, path)`` (``path``
any object with ``T``, ``alpha(i)`` and ``sigma(i)``, such as ``ddpm.schedule("linear").path``);
``apply(params, x, t, y, config) -> x0_hat (N, C, H, W)``, ``t`` the DDPM step index. A call
with the null label costs two ``(N, D) x (D, M)`` matrix products over all ``M`` images; float32
images and inputs keep them in float32 (twice as fast), float64 ones (the tests) in float64.
"""

import dataclasses

import numpy as onp

from ..nn.attention import softmax
from . import check_images, labels_or_null


@dataclasses.dataclass(frozen=True)
class IdealConfig:
    """The image shape (for the samplers) and the number of classes."""

    in_channels: int = 1
    resolution: int = 28
    num_classes: int = 10


def init(images, labels, path, config=IdealConfig()):
    """``images (M, C, H, W)``, integer ``labels (M,)`` in ``0 .. num_classes - 1`` and the
    discrete path the model is noised on -> the parameters: the images flattened to ``(M, D)``
    (float32 stays float32, anything else becomes float64), sorted by label, where each class's
    rows begin and end, and the path's ``alpha`` and ``sigma`` at every step ``(T,)``."""
    if not all(hasattr(path, k) for k in ("T", "alpha", "sigma")):
        raise TypeError(f"`path` must be a discrete Gaussian path with T, alpha(i) and sigma(i) "
                        f"(such as ddpm.schedule('linear').path); got {type(path).__name__}")
    images = onp.asarray(images)
    shape = (config.in_channels, config.resolution, config.resolution)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise ValueError(f"`images` must have shape (M, {', '.join(map(str, shape))}) with "
                         f"M >= 1 (got {images.shape})")
    labels = onp.asarray(labels)
    if labels.shape != (len(images),) or not onp.issubdtype(labels.dtype, onp.integer) or \
            labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"`labels` must be {len(images)} integers in 0..{config.num_classes - 1} "
                         f"(got shape {labels.shape}, dtype {labels.dtype})")
    order = onp.argsort(labels, kind="stable")
    bounds = onp.searchsorted(labels[order], onp.arange(config.num_classes + 1))
    dtype = onp.float32 if images.dtype == onp.float32 else onp.float64
    steps = onp.arange(path.T)
    return {"x0": images[order].reshape(len(images), -1).astype(dtype),
            "bounds": bounds, "alpha": onp.asarray(path.alpha(steps), dtype=onp.float64),
            "sigma": onp.asarray(path.sigma(steps), dtype=onp.float64)}


def apply(params, x, t, y=None, config=IdealConfig()):
    """The exact posterior mean ``E[x0 | x_t, y]`` (Karras et al. 2022, eq. (57)) for
    ``x: (N, C, H, W)`` at DDPM step ``t`` (one step for the whole batch, as the samplers call
    it), labels ``y`` (``num_classes`` or None: the null label, every image). Returns ``x``'s
    dtype."""
    t = check_images(x, t, config)
    steps = onp.unique(onp.asarray(t))
    T = len(params["alpha"])
    if len(steps) != 1 or steps[0] != int(steps[0]) or not 0 <= steps[0] < T:
        raise ValueError(f"`t` must be one integer DDPM step in [0, {T - 1}] for the whole batch "
                         f"(got {steps})")
    i = int(steps[0])
    # Python floats: float32 images stay float32
    alpha, sigma = float(params["alpha"][i]), float(params["sigma"][i])
    y = labels_or_null(y, x.shape[0], config.num_classes)
    xt = onp.asarray(x).reshape(x.shape[0], -1)
    x0_hat = onp.empty(xt.shape, onp.result_type(xt, params["x0"]))
    bounds = params["bounds"]
    for c in onp.unique(y):
        rows = y == c
        lo, hi = (0, bounds[-1]) if c == config.num_classes else (bounds[c], bounds[c + 1])
        if lo == hi:
            raise ValueError(f"class {c} has no images in `params`")
        x0 = params["x0"][lo:hi]  # (M_c, D)
        logits = (alpha * (xt[rows] @ x0.T) - 0.5 * alpha**2 * onp.sum(x0**2, axis=1)) / sigma**2
        x0_hat[rows] = softmax(logits) @ x0  # (N_c, M_c) @ (M_c, D)
    return x0_hat.reshape(x.shape).astype(x.dtype)
