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
from autograd.extend import defvjp, defvjp_argnums, primitive
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


def logsumexp(x, axis=None, keepdims=False):
    """``log sum_i exp x_i`` along ``axis``, computed as ``m + log sum_i exp(x_i - m)`` with ``m``
    the maximum, so nothing overflows (an all ``-inf`` slice gives ``-inf``).

    The identity holds for any ``m``, so ``m`` is taken as a constant (``getval``) and autograd
    differentiates the rest: the gradient is the softmax of ``x``. Written here rather than
    imported from ``autograd.scipy.special``, whose package loads SciPy's stats and integrate:
    about 60 MB and half a second in every process, worker processes included.
    """
    m = onp.max(getval(x), axis=axis, keepdims=True)
    m = onp.where(onp.isfinite(m), m, 0.0)
    with onp.errstate(divide="ignore"):  # log 0 = -inf for an all -inf slice, as it should be
        s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axis)


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


# ----------------------------------------------------------------------------- transformer pieces
# Two fused primitives for chapter 9's DiT. Traced op by op, GELU is ten elementwise passes
# forward and more backward (and autograd's tanh gradient, ``g / cosh(x)**2``, overflows to inf for
# |x| > 44 in float32, harmlessly but loudly); a modulated layer norm is eight. Both are
# memory-bound, so the passes are the cost.

_GELU_C, _GELU_A = 0.7978845608028654, 0.044715  # sqrt(2/pi) as a Python float: no upcast


@primitive
def gelu(x):
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), as DiT uses:
    ``0.5 x (1 + tanh(u))``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``. Its VJP,

        gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) sqrt(2/pi) (1 + 3 * 0.044715 x²),

    recomputes ``tanh u`` (one pass) instead of keeping it alive. Both directions work in place
    on one or two buffers: at a DiT's (6272, 512) activations that halves the time of the
    straightforward expression (NumPy makes a new array for every operator)."""
    u = x * x
    u *= _GELU_A
    u += 1.0
    u *= x
    u *= _GELU_C  # u = sqrt(2/pi) (x + 0.044715 x^3)
    onp.tanh(u, out=u)
    u += 1.0
    u *= x
    u *= 0.5
    return u


def _gelu_vjp(ans, x):
    def vjp(g):
        g = g.astype(x.dtype, copy=False)
        x2 = x * x
        th = x2 * _GELU_A
        th += 1.0
        th *= x
        th *= _GELU_C
        onp.tanh(th, out=th)  # tanh u
        d = th * th
        onp.subtract(1.0, d, out=d)  # 1 - tanh² u
        x2 *= 3 * _GELU_A
        x2 += 1.0  # 1 + 3 * 0.044715 x²
        d *= x2
        d *= x
        d *= 0.5 * _GELU_C
        th += 1.0
        th *= 0.5
        d += th
        d *= g
        return d
    return vjp


defvjp(gelu, _gelu_vjp)


def rms_norm(x, scale, eps=1e-6):
    """RMSNorm over the last axis (Zhang & Sennrich 2019, eq. (4)):
    ``x / sqrt(mean(x²) + eps) * scale``. The result's norm is at most ``sqrt(D) max|scale|``:
    what bounds the attention logits under QK-norm (chapter 10)."""
    # BEGIN EXERCISE 10.3: RMSNorm, QK-norm's normaliser (Zhang & Sennrich 2019, eq. (4));
    #   notebook 10, section 8
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale
    # END EXERCISE


def _ln_stats(x, eps):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / onp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    return xc * rstd, rstd


@primitive
def modulated_layer_norm(x, shift, scale, eps=1e-6):
    """``LayerNorm(x) * (1 + scale) + shift`` over the last axis, no affine parameters of its own
    (Ba et al. 2016; DiT's adaptive layer norm, Peebles & Xie 2023, sec. 3.2). ``x: (N, T, D)``,
    ``shift, scale: (N, 1, D)`` broadcast over the tokens. With ``xhat = (x - mu) / sd``, the VJP:

        dshift = sum_T g,   dscale = sum_T g xhat,   dxhat = g (1 + scale),
        dx = (dxhat - mean_D(dxhat) - xhat mean_D(dxhat xhat)) / sd."""
    xhat, _ = _ln_stats(x, eps)
    # BEGIN EXERCISE 9.4: adaLN's modulation of a layer norm, shift and scale from the conditioning
    #   (Peebles & Xie 2023, sec. 3.2); notebook 09, section 3
    return xhat * (1.0 + scale) + shift
    # END EXERCISE


def _mln_vjp(argnums, ans, args, kwargs):
    x, shift, scale = args[:3]
    eps = args[3] if len(args) > 3 else kwargs.get("eps", 1e-6)
    xhat, rstd = _ln_stats(x, eps)

    def reduce_to(a, like):  # sum the broadcast axes back to ``like``'s shape
        like = onp.asarray(like)
        while a.ndim > like.ndim:
            a = a.sum(axis=0)
        axes = tuple(i for i, n in enumerate(like.shape) if n == 1 and a.shape[i] != 1)
        return a.sum(axis=axes, keepdims=True) if axes else a

    def vjp(g):
        g = g.astype(x.dtype, copy=False)
        out = []
        for argnum in argnums:
            if argnum == 0:
                dxhat = g * (1.0 + scale)
                out.append(rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                                   - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)))
            elif argnum == 1:
                out.append(reduce_to(g, shift))
            elif argnum == 2:
                out.append(reduce_to(g * xhat, scale))
            else:
                raise NotImplementedError("modulated_layer_norm is differentiable in x, shift "
                                          "and scale only")
        return tuple(out)
    return vjp


defvjp_argnums(modulated_layer_norm, _mln_vjp)
