"""Convolution, resampling, group normalisation and attention as autograd primitives.

Tracing these op by op through autograd is far too slow for images, and writing their
vector-Jacobian products by hand is the lesson: each primitive below states its forward, its VJP,
and is checked by ``autograd.test_util.check_grads`` in float64 (tests/test_conv.py).

Speed notes (measured on a 2-core CPU while building chapter 6's U-Net):

- ``conv2d`` is one im2col copy (``kh * kw`` strided slices, channels-last inside) and one GEMM.
  Its input gradient is a transposed convolution (the same kernel on the dilated, padded
  gradient), not a scatter-add; its weight gradient rebuilds the im2col matrix rather than
  keeping it alive from the forward pass: about 9% slower, but the peak memory of a U-Net step
  drops by a third.
- ``group_norm_act`` fuses GroupNorm, the per-channel scale/shift of AdaGN and SiLU in one
  primitive with folded coefficients ``a = gamma (1 + scale)``, ``b = beta (1 + scale) + shift``.
- Every VJP casts its incoming gradient to the forward dtype, so a float32 network stays float32
  even if something upstream produced float64.
"""

import math

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- conv2d

def _im2col(x, kh, kw, stride, padding=(0, 0)):
    """``x: (N, C, H, W)`` -> ``(N * Ho * Wo, kh * kw * C)``, channels last, padding included.

    One copy into a zero-padded channels-last buffer, then ``kh * kw`` strided slice copies into
    the column buffer: numpy's generic copy of a 6-D ``sliding_window_view`` was 8x slower."""
    n, c, h, w = x.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    if ph or pw:
        xh = onp.zeros((n, hp, wp, c), dtype=x.dtype)
        xh[:, ph:ph + h, pw:pw + w, :] = x.transpose(0, 2, 3, 1)
    else:
        xh = onp.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, C)
    if kh == kw == 1 and stride == 1:
        return xh.reshape(n * ho * wo, c), (n, ho, wo)
    cols = onp.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xh[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
    return cols.reshape(n * ho * wo, kh * kw * c), (n, ho, wo)


def _w_matrix(w):
    """``w: (O, C, kh, kw)`` -> ``(kh * kw * C, O)`` matching ``_im2col``'s column order."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _conv_forward(x, w, stride, padding):
    kh, kw = w.shape[2:]
    cols, (n, ho, wo) = _im2col(x, kh, kw, stride, padding)
    out = cols @ _w_matrix(w)  # (N*Ho*Wo, O): the one GEMM
    return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)  # (N, O, Ho, Wo), a view


def _conv_input_grad(g, w, x_shape, stride, padding):
    """The adjoint of ``_conv_forward`` in ``x``: a transposed convolution. Dilate ``g`` by the
    stride, pad by ``k - 1`` (plus any rows the forward never reached), and correlate with the
    kernel flipped in space and transposed in channels; then crop the forward padding."""
    n, c, h, wd = x_shape
    kh, kw = w.shape[2:]
    ph, pw = padding
    hp, wp = h + 2 * ph, wd + 2 * pw
    o, ho, wo = g.shape[1:]
    if stride > 1:
        gd = onp.zeros((n, o, (ho - 1) * stride + 1, (wo - 1) * stride + 1), g.dtype)
        gd[:, :, ::stride, ::stride] = g
    else:
        gd = g
    extra_h = hp - (gd.shape[2] + kh - 1)  # rows of the padded input no window reached
    extra_w = wp - (gd.shape[3] + kw - 1)
    gd = onp.pad(gd, ((0, 0), (0, 0), (kh - 1, kh - 1 + extra_h), (kw - 1, kw - 1 + extra_w)))
    w_t = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, kh, kw)
    dx = _conv_forward(gd, w_t, 1, (0, 0))  # (N, C, Hp, Wp)
    return dx[:, :, ph:ph + h, pw:pw + wd]


def _conv_weight_grad(g, x, w_shape, stride, padding):
    """``dW = cols^T g``: the im2col matrix is rebuilt here (see the module notes)."""
    o, c, kh, kw = w_shape
    cols, _ = _im2col(x, kh, kw, stride, padding)
    g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)  # (N*Ho*Wo, O)
    dw = cols.T @ g2  # (kh*kw*C, O)
    return dw.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)


@primitive
def _conv2d(x, w, stride, padding):
    return _conv_forward(x, w, stride, padding)


defvjp(_conv2d,
       lambda ans, x, w, stride, padding: lambda g: _conv_input_grad(
           g.astype(x.dtype, copy=False), w, x.shape, stride, padding),
       lambda ans, x, w, stride, padding: lambda g: _conv_weight_grad(
           g.astype(w.dtype, copy=False), x, w.shape, stride, padding))


def conv2d(x, w, b=None, stride=1, padding=0):
    """2D cross-correlation (what deep-learning libraries call convolution).

    ``x: (N, C, H, W)``, ``w: (O, C, kh, kw)``, ``b: (O,)`` -> ``(N, O, Ho, Wo)`` with
    ``Ho = (H + 2 p - kh) // stride + 1``. ``stride`` is 1 or 2 (any positive integer works).
    """
    if onp.ndim(x) != 4 or onp.ndim(w) != 4:
        raise ValueError(f"conv2d expects x (N, C, H, W) and w (O, C, kh, kw) "
                         f"(got {onp.shape(x)} and {onp.shape(w)})")
    if onp.shape(x)[1] != onp.shape(w)[1]:
        raise ValueError(f"conv2d: x has {onp.shape(x)[1]} channels but w expects "
                         f"{onp.shape(w)[1]}")
    out = _conv2d(x, w, int(stride), _pair(padding))
    if b is not None:
        out = out + b[:, None, None]
    return out


@primitive
def _conv_transpose2d(x, w, stride, out_hw):
    n = x.shape[0]
    return _conv_input_grad(x, w, (n, w.shape[1]) + out_hw, stride, (0, 0))


defvjp(_conv_transpose2d,
       lambda ans, x, w, stride, out_hw: lambda g: _conv_forward(
           g.astype(x.dtype, copy=False), w, stride, (0, 0)),
       lambda ans, x, w, stride, out_hw: lambda g: _conv_weight_grad(
           x, g.astype(w.dtype, copy=False), w.shape, stride, (0, 0)))


def conv_transpose2d(x, w, b=None, stride=2):
    """Transposed convolution (the adjoint of ``conv2d`` without padding): ``x: (N, O, H, W)``,
    ``w: (O, C, k, k)`` -> ``(N, C, (H - 1) stride + k, ...)``. A learned up-sampling."""
    k = onp.shape(w)[2]
    h, wd = onp.shape(x)[2:]
    out = _conv_transpose2d(x, w, int(stride), ((h - 1) * stride + k, (wd - 1) * stride + k))
    if b is not None:
        out = out + b[:, None, None]
    return out


# ----------------------------------------------------------------------------- resampling

@primitive
def upsample_nearest(x):
    """Nearest-neighbour up-sampling by 2: ``(N, C, H, W) -> (N, C, 2H, 2W)``."""
    n, c, h, w = x.shape
    return onp.broadcast_to(x[:, :, :, None, :, None], (n, c, h, 2, w, 2)).reshape(n, c, 2 * h,
                                                                                    2 * w)


defvjp(upsample_nearest, lambda ans, x: lambda g: g.reshape(
    x.shape[0], x.shape[1], x.shape[2], 2, x.shape[3], 2).sum(axis=(3, 5)).astype(x.dtype))


@primitive
def avg_pool2(x):
    """2 x 2 average pooling: ``(N, C, H, W) -> (N, C, H/2, W/2)``; ``H`` and ``W`` even."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


defvjp(avg_pool2, lambda ans, x: lambda g: (0.25 * upsample_nearest(g)).astype(x.dtype))


# ----------------------------------------------------------------------------- group norm

def _gn_stats(x, groups, eps):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)  # (N, G, C/G * H * W)
    mean = xg.mean(axis=2, keepdims=True)
    var = xg.var(axis=2, keepdims=True)
    inv = 1.0 / onp.sqrt(var + eps)
    xhat = ((xg - mean) * inv).reshape(x.shape)
    return xhat, inv


def _expand(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - 2))  # (N, C) -> (N, C, 1, 1)


@primitive
def group_norm_act(x, a, b, groups, eps=1e-5, act=True):
    """``act(GroupNorm(x) * a + b)`` with per-sample, per-channel ``a, b: (N, C)``.

    GroupNorm (Wu & He 2018) normalises each group of ``C / groups`` channels over the channels
    and the spatial positions. With ``a = gamma (1 + scale)`` and ``b = beta (1 + scale) + shift``
    this is AdaGN (Dhariwal & Nichol 2021, sec. 3.2), ``GroupNorm(h)(1 + scale) + shift`` after
    GroupNorm's own affine; ``act`` applies SiLU. ``x: (N, C, ...)``.
    """
    xhat, _ = _gn_stats(x, groups, eps)
    z = xhat * _expand(a, x) + _expand(b, x)
    return z * (0.5 * (onp.tanh(0.5 * z) + 1.0)) if act else z


def _gn_act_vjp(argnums, ans, args, kwargs):
    """One VJP for all of ``x, a, b`` (``defvjp_argnums``): the statistics and ``SiLU'(z)`` are
    computed once per backward pass, whichever inputs need gradients."""
    x, a, b, groups = args[:4]
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    act = args[5] if len(args) > 5 else kwargs.get("act", True)
    xhat, inv = _gn_stats(x, groups, eps)
    ae = _expand(a, x)
    axes = tuple(range(2, x.ndim))

    def vjp(g):
        g = g.astype(x.dtype, copy=False)
        if act:
            z = xhat * ae + _expand(b, x)
            sig = 0.5 * (onp.tanh(0.5 * z) + 1.0)
            g = g * (sig * (1.0 + z * (1.0 - sig)))  # SiLU'(z) = s (1 + z (1 - s))
        out = []
        for argnum in argnums:
            if argnum == 0:  # the GroupNorm backward, per group
                dxhat = (g * ae).reshape(x.shape[0], groups, -1)
                xh = xhat.reshape(dxhat.shape)
                dx = inv * (dxhat - dxhat.mean(axis=2, keepdims=True)
                            - xh * (dxhat * xh).mean(axis=2, keepdims=True))
                out.append(dx.reshape(x.shape))
            elif argnum == 1:
                out.append((g * xhat).sum(axis=axes))
            elif argnum == 2:
                out.append(g.sum(axis=axes))
            else:
                raise NotImplementedError("group_norm_act is differentiable in x, a and b only")
        return tuple(out)
    return vjp


defvjp_argnums(group_norm_act, _gn_act_vjp)


# ----------------------------------------------------------------------------- attention

def _softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = onp.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


@primitive
def attention(q, k, v):
    """Scaled dot-product attention, softmax included (Vaswani et al. 2017, eq. (1)):
    ``softmax(q k^T / sqrt(d)) v`` for ``q: (B, Lq, d)``, ``k, v: (B, Lk, d)`` -> ``(B, Lq, d)``.
    Heads are folded into ``B`` by the caller. The VJP recomputes the attention matrix ``P``:

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),
        dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    return _softmax((q @ _t(k)) * scale) @ v


def _t(a):
    """Batched transpose as a contiguous copy: NumPy's ``matmul`` on a transposed (strided)
    stack falls back to a loop far slower than BLAS (measured 100x on (32, 196, 16) stacks)."""
    return onp.ascontiguousarray(a.transpose(0, 2, 1))


def _attention_vjp(argnums, ans, args, kwargs):
    q, k, v = args
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = _softmax((q @ _t(k)) * scale)  # (B, Lq, Lk), recomputed

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
