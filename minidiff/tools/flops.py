"""Multiply-adds of a forward pass, counted by running it.

``macs_per_image(fn, n)`` runs ``fn()`` once with the models' matrix products — convolutions,
linear layers, attention — replaced by counting wrappers that call the real ones, and returns the
multiply-adds per image in billions ("Gflops" as the DiT paper and fvcore count them). Norms,
activations and resampling are elementwise and left out, as there. A test holds the count to
``models.dit.gflops``'s formula; chapter 8 uses it to compare a pixel-space U-Net with the latent
one, whose architectures have no formula of their own.
"""

import contextlib

import numpy as onp

from ..models import dit, mmdit, text, unet, vae

PATCHED = (unet, dit, mmdit, vae, text)  # modules whose conv2d / linear / attention are counted


@contextlib.contextmanager
def _counting(total):
    saved = []

    def wrap(module, name, count):
        real = getattr(module, name)

        def counted(*args, **kwargs):
            out = real(*args, **kwargs)
            total[0] += count(args, out)
            return out
        saved.append((module, name, real))
        setattr(module, name, counted)

    def conv(args, out):  # every output element: C kh kw multiply-adds
        w = args[1]
        return onp.prod(onp.shape(out)) * onp.prod(onp.shape(w)[1:])

    def lin(args, out):
        w = args[0]["w"]
        return onp.prod(onp.shape(out)[:-1]) * onp.shape(w)[0] * onp.shape(w)[1]

    def attn(args, out):  # scores q k^T and the weighted sum of v: 2 B Lq Lk d
        q, k = args[0], args[1]
        return 2 * onp.shape(q)[0] * onp.shape(q)[1] * onp.shape(k)[1] * onp.shape(q)[2]

    try:
        for module in PATCHED:
            for name, count in (("conv2d", conv), ("linear", lin), ("attention", attn)):
                if hasattr(module, name):
                    wrap(module, name, count)
        yield
    finally:
        for module, name, real in reversed(saved):
            setattr(module, name, real)


def macs_per_image(fn, n):
    """Run ``fn()`` (a forward pass over ``n`` images) and return its multiply-adds per image,
    in billions."""
    total = [0]
    with _counting(total):
        fn()
    return float(total[0]) / n / 1e9
