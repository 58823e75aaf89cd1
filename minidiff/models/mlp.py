"""A small residual MLP with a scalar conditioning input: the score network of the 2D chapters.

``apply(params, x, t)`` maps points ``x: (N, D)`` and a scalar per point ``t: (N,)`` (a time, a
noise level or ``log sigma``: whatever the chapter conditions on) to ``(N, D)``. What the output
*means* (eps, x0, v, velocity, score) is decided by the chapter's objective, not by the network.

    e = embed(t)                                   sinusoidal or random Fourier features
    h = W_x x + W_t e                              (N, hidden)
    h = h + W_k silu(h)          for k = 1..depth  residual blocks
    out = W_out silu(h)                            (N, D)

The parameter tree is the whole model: ``apply`` reads every size off the arrays, and the
embedding kind off the presence of a ``"fourier"`` entry.
"""

import autograd.numpy as np
import numpy as onp

from ..nn import fourier_embedding, init_fourier, init_linear, linear, silu, sinusoidal_embedding


def init(rng, dim=2, hidden=128, depth=3, emb_dim=32, embedding="sinusoidal", fourier_scale=16.0,
         dtype=onp.float32, zero_out=False):
    """Parameters of the MLP; ``embedding`` is ``"sinusoidal"`` or ``"fourier"``."""
    for name, value in (("dim", dim), ("hidden", hidden), ("emb_dim", emb_dim)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"`{name}` must be a positive integer (got {value!r})")
    if not (isinstance(depth, int) and depth >= 0):
        raise ValueError(f"`depth` must be a non-negative integer (got {depth!r})")
    if embedding not in ("sinusoidal", "fourier"):
        raise ValueError(f"`embedding` must be 'sinusoidal' or 'fourier' (got {embedding!r})")
    params = {
        "x_in": init_linear(rng, dim, hidden, dtype),
        "t_in": init_linear(rng, emb_dim, hidden, dtype),
        "blocks": [init_linear(rng, hidden, hidden, dtype) for _ in range(depth)],
        "out": init_linear(rng, hidden, dim, dtype, zero=zero_out),
    }
    if embedding == "fourier":
        params["fourier"] = init_fourier(rng, emb_dim, fourier_scale, dtype)
    return params


def apply(params, x, t):
    """``x: (N, D)``, ``t: (N,)`` or a scalar -> ``(N, D)``."""
    dim = params["x_in"]["w"].shape[0]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"`x` must have shape (N, {dim}) (got {tuple(x.shape)})")
    n = x.shape[0]
    t = np.asarray(t)
    if t.ndim == 0:
        t = t * np.ones(n, dtype=x.dtype)
    if t.shape != (n,):
        raise ValueError(f"`t` must be a scalar or have shape ({n},) (got {tuple(t.shape)})")
    if "fourier" in params:
        emb = fourier_embedding(params["fourier"], t)
    else:
        emb = sinusoidal_embedding(t, params["t_in"]["w"].shape[0], dtype=x.dtype)
    h = linear(params["x_in"], x) + linear(params["t_in"], emb)  # (N, hidden)
    for block in params["blocks"]:
        h = h + linear(block, silu(h))
    return linear(params["out"], silu(h))  # (N, D)
