"""The ideal denoiser of a finite training set: the network every denoising loss is trying to be.

Trained on a finite set ``{x0_m}``, the denoising regression ``E|eps_hat(x_t) - eps|²`` is
minimised by the exact posterior mean over that set (Tweedie, chapter 2), which has a closed form
(Karras et al. 2022, appendix B.3, eq. (57), in their ``x = y + sigma n`` form):

    E[x0 | x_t] = sum_m w_m x0_m,    w_m ∝ N(x_t; alpha x0_m, sigma² I)
    eps_hat     = (x_t - alpha E[x0 | x_t]) / sigma

(the weights are ``dsm.posterior_weights``) with ``alpha = sqrt(alpha_bar_i)``,
``sigma = sqrt(1 - alpha_bar_i)`` on the DDPM schedule. With a class label the sum runs over that
class's images only; the null label (``num_classes``) sums over all of them, so ``apply`` plugs
into the same classifier-free guidance as the U-Net.

It is a perfect score network *for the training set*, and therefore a memoriser: at low noise the
posterior collapses onto the nearest training image, and the probability-flow ODE ends on training
images, never on new digits. What it is good for is a yardstick: sampled and evaluated exactly as a
network is, it shows what a sampler, guidance or a metric does with an exact score, so a gap
between it and a trained network is the network's.

Its "parameters" are the data: ``params = init(images, labels)``; ``apply(params, x, t, y,
config) -> (N, C, H, W)``, ``t`` the DDPM step index. A call with the null label costs two
``(N, D) x (D, M)`` matrix products over all ``M`` images; float32 images and inputs keep them in
float32 (twice as fast), float64 ones (the tests) in float64.
"""

import dataclasses
import math

import numpy as onp

from .. import ddpm
from ..dsm import posterior_weights
from ..targets import eps_from_x0
from . import check_images, labels_or_null


@dataclasses.dataclass(frozen=True)
class IdealConfig:
    """The image shape (for the samplers) and the number of classes; the schedule is DDPM's
    linear one, as for the U-Net and DiT recipes."""

    in_channels: int = 1
    resolution: int = 28
    num_classes: int = 10
    schedule: str = "linear"


def init(images, labels, config=IdealConfig()):
    """``images (M, C, H, W)`` and integer ``labels (M,)`` in ``0 .. num_classes - 1`` -> the
    parameters: the images flattened to ``(M, D)`` (float32 stays float32, anything else
    becomes float64), sorted by label, and where each class's rows begin and end."""
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
    return {"x0": images[order].reshape(len(images), -1).astype(dtype),
            "bounds": bounds}


def apply(params, x, t, y=None, config=IdealConfig()):
    """The exact noise prediction ``(x_t - alpha E[x0 | x_t, y]) / sigma`` for ``x: (N, C, H, W)``
    at DDPM step ``t`` (one step for the whole batch, as the samplers call it), labels ``y``
    (``num_classes`` or None: the null label, every image). Returns ``x``'s dtype."""
    t = check_images(x, t, config)
    steps = onp.unique(onp.asarray(t))
    if len(steps) != 1 or steps[0] != int(steps[0]):
        raise ValueError(f"`t` must be one integer DDPM step for the whole batch (got {steps})")
    ab = ddpm.schedule(config.schedule).alpha_bar[int(steps[0])]
    alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)  # Python floats: float32 stays float32
    y = labels_or_null(y, x.shape[0], config.num_classes)
    xt = onp.asarray(x).reshape(x.shape[0], -1)
    x0_hat = onp.empty(xt.shape, onp.result_type(xt, params["x0"]))
    bounds = params["bounds"]
    for c in onp.unique(y):
        rows = y == c
        lo, hi = (0, bounds[-1]) if c == config.num_classes else (bounds[c], bounds[c + 1])
        if lo == hi:
            raise ValueError(f"class {c} has no images in `params`")
        x0_hat[rows] = posterior_weights(params["x0"][lo:hi], xt[rows], alpha, sigma) @ \
            params["x0"][lo:hi]
    return eps_from_x0(x0_hat, xt, alpha, sigma).reshape(x.shape).astype(x.dtype)
