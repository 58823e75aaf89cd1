"""Layers as ``(init, apply)`` pairs on parameter pytrees, written in autograd-safe NumPy.

Float32 stays float32 here: every constant is a Python float (NumPy treats those as "weak" and
keeps the array's dtype), and reductions divide by Python numbers. Two traps this avoids:
``autograd``'s gradient of ``np.mean`` divides by a NumPy integer, and a NumPy float64 scalar such
as ``np.sqrt(2 / np.pi)`` promotes a float32 array to float64, so a whole backward pass can
silently run in float64 (tests/test_nn.py checks the dtype of every gradient).
"""

import math

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.tracer import getval


def mean(x, axis=None):
    """``np.mean`` whose gradient keeps the input's dtype (divides by a Python float)."""
    n = x.size if axis is None else math.prod(x.shape[a] for a in onp.atleast_1d(axis))
    return np.sum(x, axis=axis) * (1.0 / n)


@primitive
def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x)) = (1 + tanh(x/2)) / 2``.

    A primitive with its own VJP, ``sigmoid' = s (1 - s)``, computed from the forward value: the
    gradient autograd would derive through ``tanh`` divides by ``cosh(x)**2``, which overflows for
    ``|x| > 89`` in float32, and the overflow-free ``exp(-logaddexp(0, -x))`` is 30x slower.
    """
    return 0.5 * (onp.tanh(0.5 * x) + 1.0)


defvjp(sigmoid, lambda s, x: lambda g: g * (s * (1.0 - s)))


def silu(x):
    """SiLU / swish, ``x * sigmoid(x)`` (Elfwing et al. 2018; Ramachandran et al. 2017)."""
    return x * sigmoid(x)


def init_linear(rng, d_in, d_out, dtype=onp.float32, zero=False):
    """``{"w": (d_in, d_out), "b": (d_out,)}``.

    Weights are uniform in ``±1/sqrt(d_in)`` (PyTorch's ``nn.Linear`` default), biases zero;
    ``zero=True`` gives an all-zero layer (used for outputs that must start at 0).
    """
    if zero:
        w = onp.zeros((d_in, d_out), dtype)
    else:
        bound = 1.0 / math.sqrt(d_in)
        w = rng.uniform(-bound, bound, size=(d_in, d_out)).astype(dtype)
    return {"w": w, "b": onp.zeros(d_out, dtype)}


def linear(params, x):
    """``x @ w + b`` over the last axis; ``x: (..., d_in) -> (..., d_out)``.

    Inputs with more than two axes are flattened to 2-D first: one GEMM instead of a batched one.
    """
    w, b = params["w"], params["b"]
    if x.ndim == 2:
        return np.dot(x, w) + b
    lead = x.shape[:-1]
    y = np.dot(np.reshape(x, (-1, x.shape[-1])), w) + b  # (prod(lead), d_out)
    return np.reshape(y, lead + (w.shape[1],))


def sinusoidal_embedding(t, dim, max_period=10000.0, dtype=onp.float32):
    """Transformer position encoding of a scalar per sample (Vaswani et al. 2017, sec. 3.5).

    ``t: (N,)`` (or a scalar) -> ``(N, dim)`` = ``[sin(t f_k), cos(t f_k)]`` with
    ``f_k = max_period ** (-k / (dim/2))``, ``k = 0 .. dim/2 - 1``. DDPM feeds the integer step
    this way (Ho et al. 2020, appendix B); order conventions (sin first or cos first) differ between
    codebases and do not matter to the network.
    """
    if dim % 2:
        raise ValueError(f"`dim` must be even (got {dim}): it holds sin and cos pairs")
    half = dim // 2
    freqs = onp.exp(-math.log(max_period) * onp.arange(half) / half).astype(dtype)  # (half,)
    t = np.reshape(np.asarray(t, dtype=dtype), (-1, 1))  # (N, 1)
    angles = t * freqs  # (N, half)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def init_fourier(rng, dim, scale=16.0, dtype=onp.float32):
    """Random Fourier features of a scalar (Tancik et al. 2020): ``{"W": (dim/2,)}``,
    ``W ~ N(0, scale²)``.

    Song et al. 2021 embed ``log sigma`` this way with scale 16 in their NCSN++ models.
    """
    if dim % 2:
        raise ValueError(f"`dim` must be even (got {dim}): it holds sin and cos pairs")
    return {"W": (scale * rng.standard_normal(dim // 2)).astype(dtype)}


def fourier_embedding(params, t):
    """``t: (N,) -> (N, dim)`` = ``[sin(2 pi t W), cos(2 pi t W)]``.

    ``W`` is a fixed random draw, not a trained weight: ``getval`` hides it from autograd, so its
    gradient is exactly zero and Adam leaves it where it started.
    """
    W = getval(params["W"])
    t = np.reshape(np.asarray(t, dtype=W.dtype), (-1, 1))  # (N, 1)
    angles = (2.0 * math.pi) * t * W  # (N, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
