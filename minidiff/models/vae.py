"""Chapter 8 — a tiny KL-regularised autoencoder: the first stage of latent diffusion.

Latent diffusion (Rombach et al. 2022) splits generation in two. An autoencoder compresses the
image into a small latent grid and back; the diffusion model then learns the distribution of the
latents, a grid ``f x f`` times smaller per side. Stable Diffusion uses ``f = 8`` (512 -> 64); MNIST
is 28 pixels, which is not divisible by 8, so minidiff uses ``f = 4``: 28 x 28 x 1 -> 7 x 7 x 4
(196 numbers for 784 pixels).

The encoder outputs the mean and log-variance of a diagonal Gaussian ``q(z | x)``; a latent is
drawn by the reparametrisation ``z = mean + exp(logvar / 2) * eps`` (Kingma & Welling 2014,
sec. 2.4), so the gradient reaches the encoder through the sample. The loss is a reconstruction
error plus a small multiple of ``KL(q(z | x) || N(0, I))``, whose closed form for diagonal
Gaussians is (Kingma & Welling 2014, appendix B)

    KL = 1/2 sum_j (mean_j^2 + exp(logvar_j) - 1 - logvar_j).

Stable Diffusion's autoencoder also trains with a perceptual (LPIPS) and an adversarial loss,
which keep its reconstructions sharp at a factor-8 compression; minidiff's uses the squared
error alone, enough for 28 x 28 digits at factor 4 (PSNR and the evaluator's agreement on
reconstructions are in the model card). Rombach et al. weight the KL term by about 1e-6: just
enough to keep the latent near the origin and its posterior from collapsing to a point, far too
little to make ``z`` a standard normal; the diffusion model, not the prior, models the latents.
Their scale is then fixed by one measured number (``latent.latent_scale``), Stable Diffusion's
0.18215.

    encoder  conv 1->32 | conv 32->64 /2 | conv 64->64 /2 | conv 64->8     28 -> 14 -> 7
    decoder  conv 4->64 | up x2, conv 64->64 | up x2, conv 64->32 | conv 32->1  7 -> 14 -> 28

Every hidden convolution is followed by GroupNorm and SiLU (``nn.conv.group_norm_act``).
``params = init(rng)``; ``encode(params, x) -> (mean, logvar)``; ``decode(params, z) -> x``.
"""

import math

import autograd.numpy as np
import numpy as onp

from ..nn import mean as batch_mean
from ..nn.conv import conv2d, group_norm_act, upsample_nearest

LATENT_CHANNELS = 4
DOWNSAMPLE = 4  # 28 -> 7; Stable Diffusion's 8 does not divide 28
GROUPS = 8


def _conv(rng, c_in, c_out, dtype):
    bound = 1.0 / math.sqrt(c_in * 9)
    return {"w": rng.uniform(-bound, bound, (c_out, c_in, 3, 3)).astype(dtype),
            "b": onp.zeros(c_out, dtype)}


def _norm(c, dtype):
    return {"gamma": onp.ones(c, dtype), "beta": onp.zeros(c, dtype)}


def init(rng, width=32, dtype=onp.float32):
    """Encoder and decoder weights; ``width`` channels at 28 x 28, ``2 width`` below."""
    w1, w2 = width, 2 * width
    return {"enc": [_conv(rng, 1, w1, dtype), _conv(rng, w1, w2, dtype), _conv(rng, w2, w2, dtype),
                    _conv(rng, w2, 2 * LATENT_CHANNELS, dtype)],
            "enc_norm": [_norm(w1, dtype), _norm(w2, dtype), _norm(w2, dtype)],
            "dec": [_conv(rng, LATENT_CHANNELS, w2, dtype), _conv(rng, w2, w2, dtype),
                    _conv(rng, w2, w1, dtype), _conv(rng, w1, 1, dtype)],
            "dec_norm": [_norm(w2, dtype), _norm(w2, dtype), _norm(w1, dtype)]}


def _norm_act(p, h):
    ones = np.ones((h.shape[0], 1), dtype=h.dtype)
    return group_norm_act(h, p["gamma"] * ones, p["beta"] * ones, GROUPS)


def _check(x, channels, size, name):
    if np.ndim(x) != 4 or tuple(x.shape[1:]) != (channels, size, size):
        raise ValueError(f"`{name}` must have shape (N, {channels}, {size}, {size}) "
                         f"(got {tuple(np.shape(x))})")


def encode(params, x):
    """``x: (N, 1, 28, 28)`` in ``[-1, 1]`` -> ``(mean, logvar)``, each ``(N, 4, 7, 7)``."""
    _check(x, 1, 28, "x")
    h = x
    for k, stride in enumerate((1, 2, 2)):
        c = params["enc"][k]
        h = _norm_act(params["enc_norm"][k], conv2d(h, c["w"], c["b"], stride=stride, padding=1))
    c = params["enc"][3]
    out = conv2d(h, c["w"], c["b"], padding=1)  # (N, 8, 7, 7)
    return out[:, :LATENT_CHANNELS], out[:, LATENT_CHANNELS:]


def decode(params, z):
    """``z: (N, 4, 7, 7)`` -> images ``(N, 1, 28, 28)`` (unclipped; the pixel range is [-1, 1])."""
    _check(z, LATENT_CHANNELS, 7, "z")
    h = z
    for k, up in enumerate((False, True, True)):
        c = params["dec"][k]
        if up:
            h = upsample_nearest(h)
        h = _norm_act(params["dec_norm"][k], conv2d(h, c["w"], c["b"], padding=1))
    c = params["dec"][3]
    return conv2d(h, c["w"], c["b"], padding=1)


def reparametrise(mean, logvar, eps):
    """``z = mean + exp(logvar / 2) eps`` (Kingma & Welling 2014, eq. (10)): a sample of
    ``q(z | x)`` that is a differentiable function of the encoder's outputs."""
    # BEGIN EXERCISE 8.2: the reparametrisation trick (Kingma & Welling 2014, eq. (10));
    #   notebook 08, section 3
    return mean + np.exp(0.5 * logvar) * eps
    # END EXERCISE


def kl_divergence(mean, logvar):
    """``KL(N(mean, diag exp(logvar)) || N(0, I))`` per image, summed over latent dimensions
    (Kingma & Welling 2014, appendix B): ``(N, ...) -> (N,)``."""
    # BEGIN EXERCISE 8.3: the closed-form KL divergence of a diagonal Gaussian from N(0, I)
    #   (Kingma & Welling 2014, appendix B); notebook 08, section 3
    per_dim = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar)
    # END EXERCISE
    return np.sum(np.reshape(per_dim, (per_dim.shape[0], -1)), axis=1)


def loss(params, batch, kl_weight=1e-4):
    """The autoencoder's objective per image, averaged over the batch:

        sum_pixels (x - decode(z))^2  +  kl_weight * KL(q(z | x) || N(0, I)),

    ``z`` reparametrised with the batch's noise ``batch["eps"]`` (so the loss is a deterministic
    function of its arguments). The squared error is the negative log-likelihood of a Gaussian
    decoder up to constants; ``kl_weight`` is small for the reason in the module docstring."""
    mean, logvar = encode(params, batch["x"])
    z = reparametrise(mean, logvar, batch["eps"])
    err = np.sum(np.reshape((decode(params, z) - batch["x"]) ** 2, (z.shape[0], -1)), axis=1)
    return batch_mean(err + kl_weight * kl_divergence(mean, logvar))
