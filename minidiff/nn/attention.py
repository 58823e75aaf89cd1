"""Scaled dot-product attention as an autograd primitive with a hand-written VJP.

Used by the U-Net's attention blocks (chapter 6), the DiT (chapter 9) and, in its plain form
(``softmax``), by the ideal denoiser, whose posterior weights over the training images are an
attention pattern: queries ``x_t``, keys ``alpha x0_m``, values ``x0_m``.
"""

import math

import autograd.numpy as anp
import numpy as onp
from autograd.extend import defvjp_argnums, primitive


def softmax(s, mask=None):
    """``exp(s) / sum exp(s)`` over the last axis, shifted by the row maximum first so that no
    ``exp`` overflows (plain NumPy: use it outside differentiated code, or inside a primitive).

    ``mask`` (broadcastable to ``s``, True = keep) restricts each row to its kept entries: the
    others get weight exactly 0, and a row with no kept entry is all zeros (not NaN)."""
    if mask is not None:
        s = onp.where(mask, s, -onp.inf)
    m = s.max(axis=-1, keepdims=True)
    e = onp.exp(s - onp.where(onp.isfinite(m), m, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    return e / onp.where(total > 0, total, 1.0)


@primitive
def attention(q, k, v, mask=None):
    """Scaled dot-product attention, softmax included (Vaswani et al. 2017, eq. (1)):
    ``softmax(q k^T / sqrt(d)) v`` for ``q: (B, Lq, d)``, ``k, v: (B, Lk, d)`` -> ``(B, Lq, d)``.
    Heads are folded into ``B`` by the caller. The VJP recomputes the attention matrix ``P``:

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),
        dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d).

    ``mask: (B, Lk)`` bool (True = a real token) is a key padding mask: a padded key gets weight
    0, so neither it nor its value changes the output, and a query whose keys are all padding
    outputs zeros (an empty context contributes nothing). The VJP formulas hold as written,
    since ``P`` is 0 wherever the mask is False."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    return softmax((q @ _t(k)) * scale, _key_mask(mask, k)) @ v


def _key_mask(mask, k):
    if mask is None:
        return None
    mask = onp.asarray(mask)
    if mask.dtype != bool or mask.shape != k.shape[:2]:
        raise ValueError(f"the attention `mask` must be a bool array of shape {k.shape[:2]} "
                         f"(batch, keys) (got {mask.dtype} {mask.shape})")
    return mask[:, None, :]  # (B, 1, Lk): the same keys for every query


def split_heads(z, n, length, heads):
    """``(N*length, C) -> (N*heads, length, C/heads)``: heads folded into the batch axis."""
    d = z.shape[1] // heads
    return anp.reshape(anp.transpose(anp.reshape(z, (n, length, heads, d)), (0, 2, 1, 3)),
                       (n * heads, length, d))


def merge_heads(o, n, length, heads):
    """``(N*heads, length, d) -> (N*length, heads*d)``: the inverse of ``split_heads``."""
    d = o.shape[2]
    return anp.reshape(anp.transpose(anp.reshape(o, (n, heads, length, d)), (0, 2, 1, 3)),
                       (n * length, heads * d))


def _t(a):
    """Batched transpose as a contiguous copy: NumPy's ``matmul`` on a transposed (strided)
    stack falls back to a loop far slower than BLAS (measured 100x on (32, 196, 16) stacks)."""
    return onp.ascontiguousarray(a.transpose(0, 2, 1))


def _attention_vjp(argnums, ans, args, kwargs):
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else kwargs.get("mask")
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = softmax((q @ _t(k)) * scale, _key_mask(mask, k))  # (B, Lq, Lk), recomputed

    def vjp(g):
        g = onp.ascontiguousarray(g, dtype=q.dtype)
        out = {}
        if 0 in argnums or 1 in argnums:
            dp = g @ _t(v)
            ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
            out[0] = (ds @ k) * scale
            out[1] = (_t(ds) @ q) * scale
        if 2 in argnums:
            out[2] = _t(p) @ g
        return tuple(out[i] for i in argnums)
    return vjp


defvjp_argnums(attention, _attention_vjp)
