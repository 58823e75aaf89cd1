"""Convolution, resampling and group normalisation as autograd primitives (attention:
``nn/attention.py``).

Tracing these op by op through autograd is far too slow for images, and writing their
vector-Jacobian products by hand is the lesson: each primitive below states its forward, its VJP,
and is checked by ``autograd.test_util.check_grads`` in float64 (tests/test_conv.py).

**The convolution, first as the lesson** (``conv2d_reference``): unfold every receptive field
of the input into one row of a matrix (im2col), and the convolution is one matrix product with
the kernel flattened to ``(O, C kh kw)`` (Chellapilla, Puri & Simard 2006). Its gradients are
two more products: the weight gradient is ``cols^T G``, and the input gradient ``col2im(G W)``
adds each column of ``G W`` back onto the window it came from: a *transposed convolution*.

**Then as the network runs it** (``conv2d``): the same arithmetic laid out for a CPU in
``nn/conv_fast.py`` (no im2col copy at stride 1, channels-last rows, blocked GEMMs; its
docstring has the measurements). The two agree to float64 rounding (tests/test_conv.py).

``group_norm_act`` fuses GroupNorm, the per-channel scale/shift of AdaGN and SiLU in one
primitive, works channels-last (per-channel sums by ``einsum`` over contiguous rows, then per
group), a few samples at a time so its dozen elementwise passes stay in cache, and hands the
next convolution channels-last data. Every VJP casts its incoming gradient to the forward dtype,
so a float32 network stays float32 even if something upstream produced float64.
"""

import numpy as onp
from autograd.extend import defvjp, defvjp_argnums, primitive

from . import conv_fast


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- the reference

def im2col(x, kh, kw, stride=1, padding=(0, 0)):
    """Every ``kh x kw`` receptive field of ``x: (N, C, H, W)`` (zero-padded) as one row:
    ``(N * Ho * Wo, C * kh * kw)``, rows in output-pixel order, columns in ``w``'s
    ``(C, kh, kw)`` order. Returns ``(cols, (Ho, Wo))``."""
    n, c, h, w = x.shape
    ph, pw = padding
    xp = onp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    cols = onp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    # BEGIN EXERCISE 6.1: im2col: every receptive field as one row (Chellapilla et al. 2006);
    #   notebook 06, section 1
    for i in range(kh):  # tap (i, j) of every window is a strided slice of the padded input
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
    # END EXERCISE
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * kh * kw), (ho, wo)


def conv2d_reference(x, w, b=None, stride=1, padding=0):
    """``conv2d`` as im2col and one GEMM: ``out = cols @ W^T (+ b)``, ``W: (O, C kh kw)``.
    Same arguments and result as ``conv2d``; written to be read, not to be fast."""
    return _conv2d_ref(x, w, b, int(stride), _pair(padding))


@primitive
def _conv2d_ref(x, w, b, stride, padding):
    n, o = x.shape[0], w.shape[0]
    cols, (ho, wo) = im2col(x, w.shape[2], w.shape[3], stride, padding)
    # BEGIN EXERCISE 6.2: the convolution as one GEMM on the im2col matrix; notebook 06, section 1
    out = cols @ w.reshape(o, -1).T  # (N Ho Wo, O): the one GEMM
    if b is not None:
        out = out + b
    # END EXERCISE
    return out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2)  # (N, O, Ho, Wo)


def _reference_input_grad(g, w, x_shape, stride, padding):
    """``dL/dx`` for ``g: (N, O, Ho, Wo)``, the adjoint of the forward pass: each output pixel's
    gradient spreads back over the window it was read from, ``dcols = G W`` (one GEMM), and
    ``col2im`` adds every column back at its window's place (the adjoint of ``im2col``'s
    slices). That is a *transposed convolution*: equally, the stride-dilated ``g`` correlated
    with the kernel flipped in space and transposed in channels, which is how the fast path
    computes it (``conv_fast.input_grad``)."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    ph, pw = padding
    ho, wo = g.shape[2:]
    g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)  # (N Ho Wo, O)
    # BEGIN EXERCISE 6.3: the convolution's input gradient: dcols = G W, then col2im (a
    #   transposed convolution); notebook 06, section 1
    dcols = (g2 @ w.reshape(o, -1)).reshape(n, ho, wo, c, kh, kw)
    dxp = onp.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=g.dtype)  # the padded input's grad
    for i in range(kh):
        for j in range(kw):  # every tap's column back onto the pixels it read
            dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += \
                dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, ph:ph + h, pw:pw + wd]
    # END EXERCISE


def _reference_vjp(argnums, ans, args, kwargs):
    x, w, _, stride, padding = args

    def vjp(g):
        g = onp.asarray(g, dtype=x.dtype)
        g2 = g.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])  # (N Ho Wo, O)
        grads = {0: lambda: _reference_input_grad(g, w, x.shape, stride, padding),
                 1: lambda: (im2col(x, w.shape[2], w.shape[3], stride, padding)[0].T
                             @ g2).T.reshape(w.shape),  # dW = cols^T G
                 2: lambda: g2.sum(axis=0)}  # db: every output pixel
        return tuple(grads[i]() for i in argnums)
    return vjp


defvjp_argnums(_conv2d_ref, _reference_vjp)


# ----------------------------------------------------------------------------- the fast path

@primitive
def _conv2d(x, w, b, stride, padding):
    return conv_fast.forward(x, w, stride, padding, b)


def _conv2d_vjp(argnums, ans, args, kwargs):
    """One VJP for ``x, w, b``: at stride 1 the output gradient is laid out on the padded grid
    once and shared by the input, weight and bias gradients."""
    x, w, b, stride, padding = args

    def vjp(g):
        g = g.astype(x.dtype, copy=False)
        gf = None
        if stride == 1:
            gf = conv_fast.grad_rows(g, conv_fast.shifted_layout(x.shape, w.shape, padding))
        out = []
        for i in argnums:
            if i == 0:
                out.append(conv_fast.input_grad(g, w, x.shape, stride, padding, gf))
            elif i == 1:
                out.append(conv_fast.weight_grad(g, x, w.shape, stride, padding, gf))
            else:  # the bias: a sum over every output pixel (cropped rows of gf are zero)
                out.append(gf.sum(axis=0) if gf is not None else g.sum(axis=(0, 2, 3)))
        return tuple(out)
    return vjp


defvjp_argnums(_conv2d, _conv2d_vjp)


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
    if b is not None and onp.shape(b) != onp.shape(w)[:1]:
        raise ValueError(f"conv2d: b must have shape ({onp.shape(w)[0]},), one bias per output "
                         f"channel (got {onp.shape(b)})")
    return _conv2d(x, w, b, int(stride), _pair(padding))


@primitive
def _conv_transpose2d(x, w, stride, out_hw):
    n = x.shape[0]
    return conv_fast.input_grad(x, w, (n, w.shape[1]) + out_hw, stride, (0, 0))


defvjp(_conv_transpose2d,
       lambda ans, x, w, stride, out_hw: lambda g: conv_fast.forward(
           g.astype(x.dtype, copy=False), w, stride, (0, 0)),
       lambda ans, x, w, stride, out_hw: lambda g: conv_fast.weight_grad(
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

_CHUNK_BYTES = 1 << 21


def _sample_chunks(x):
    """Slices of whole samples of about 2 MB each. GroupNorm is a dozen elementwise passes over
    its input; run one chunk at a time they stay in cache instead of streaming the whole
    activation through memory a dozen times (measured at (64, 96, 28, 28): 10.6 ms forward,
    23.5 ms backward, against 19.0 and 44.1 ms unchunked)."""
    per_sample = max(1, x[0].size * x.itemsize)
    k = max(1, _CHUNK_BYTES // per_sample)
    return [slice(s, s + k) for s in range(0, x.shape[0], k)]


def _channels_last(x):
    """A contiguous channels-last copy ``(k, S, C)`` of ``x: (k, C, ...)``: cheap when ``x``
    already lives channels-last in memory (every conv output here does)."""
    return onp.array(onp.moveaxis(x, 1, -1), order="C").reshape(x.shape[0], -1, x.shape[1])


def _group_mean(per_channel, groups, m):
    """Per-channel sums ``(k, C)`` -> the mean over each group, repeated per channel ``(k, 1, C)``.
    ``m`` is the number of elements in a group."""
    k, c = per_channel.shape
    g = per_channel.reshape(k, groups, c // groups).sum(axis=2) * (1.0 / m)
    return onp.repeat(g, c // groups, axis=1)[:, None, :]


def _gn_chunk(x, groups, eps):
    """``x: (k, C, ...)`` -> ``xhat: (k, S, C)`` (channels last) and the inverse standard deviation
    per channel ``inv: (k, 1, C)``. Two passes (mean, then squared deviations), not
    ``E[x^2] - E[x]^2``, which loses float32 precision when the mean is large. Sums run per
    channel over the contiguous rows (``einsum``) and are then added up per group: numpy's
    reduction over the non-adjacent axes of a ``(k, S, G, C/G)`` view was 10-20x slower."""
    xhat = _channels_last(x)
    m = xhat.shape[1] * (xhat.shape[2] // groups)  # elements per group
    xhat -= _group_mean(onp.einsum("ksc->kc", xhat), groups, m)
    var = _group_mean(onp.einsum("ksc,ksc->kc", xhat, xhat), groups, m)
    inv = 1.0 / onp.sqrt(var + eps)
    xhat *= inv
    return xhat, inv


def _silu_gate(z):
    """``sigmoid(z)`` as ``(tanh(z / 2) + 1) / 2``: no overflow for large ``|z|``."""
    s = onp.multiply(z, 0.5)
    onp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s


def _from_channels_last(out, x):
    """``out: (N, S, C)`` back to ``x``'s logical shape ``(N, C, ...)``, as a view: the data
    stay channels-last in memory, which is what the next convolution wants."""
    return onp.moveaxis(out.reshape((x.shape[0],) + x.shape[2:] + (x.shape[1],)), -1, 1)


@primitive
def group_norm_act(x, a, b, groups, eps=1e-5, act=True):
    """``act(GroupNorm(x) * a + b)`` with per-sample, per-channel ``a, b: (N, C)``.

    GroupNorm (Wu & He 2018) normalises each group of ``C / groups`` channels over the channels
    and the spatial positions. With ``a = gamma (1 + scale)`` and ``b = beta (1 + scale) + shift``
    this is AdaGN (Dhariwal & Nichol 2021, sec. 3.2), ``GroupNorm(h)(1 + scale) + shift`` after
    GroupNorm's own affine; ``act`` applies SiLU. ``x: (N, C, ...)``; the result has ``x``'s
    shape and lives channels-last in memory.
    """
    n, c = x.shape[:2]
    out = onp.empty((n, x[0, 0].size, c), dtype=x.dtype)
    for sl in _sample_chunks(x):
        z, _ = _gn_chunk(x[sl], groups, eps)  # (k, S, C)
        z *= a[sl, None, :]
        z += b[sl, None, :]
        if act:
            onp.multiply(z, _silu_gate(z), out=out[sl])
        else:
            out[sl] = z
    return _from_channels_last(out, x)


def _gn_act_vjp(argnums, ans, args, kwargs):
    """One VJP for all of ``x, a, b`` (``defvjp_argnums``), chunk by chunk of samples like the
    forward pass; the statistics are recomputed from ``x`` rather than stored. With
    ``z = xhat a + b`` and ``g`` the gradient of ``z`` (through ``SiLU'(z) = s (1 + z (1 - s))``):
    ``da = sum g xhat``, ``db = sum g`` over positions, and per group, with means over it,
    ``dx = inv (g a - mean(g a) - xhat mean(g a xhat))``."""
    x, a, b, groups = args[:4]
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    act = args[5] if len(args) > 5 else kwargs.get("act", True)
    if any(i > 2 for i in argnums):
        raise NotImplementedError("group_norm_act is differentiable in x, a and b only")
    n, c = x.shape[:2]

    def vjp(g):
        g = g.astype(x.dtype, copy=False)
        dx = onp.empty((n, x[0, 0].size, c), x.dtype) if 0 in argnums else None
        da, db = onp.empty((n, c), x.dtype), onp.empty((n, c), x.dtype)
        for sl in _sample_chunks(x):
            xhat, inv = _gn_chunk(x[sl], groups, eps)  # (k, S, C), (k, 1, C)
            gz = _channels_last(g[sl])
            if act:
                z = xhat * a[sl, None, :]
                z += b[sl, None, :]
                s = _silu_gate(z)
                z *= 1.0 - s  # SiLU'(z) = s (1 + z (1 - s))
                z += 1.0
                z *= s
                gz *= z
            da[sl] = onp.einsum("ksc,ksc->kc", gz, xhat)
            db[sl] = onp.einsum("ksc->kc", gz)
            if dx is not None:
                m = xhat.shape[1] * (c // groups)
                gz *= a[sl, None, :]  # the gradient of xhat
                m1 = _group_mean(onp.einsum("ksc->kc", gz), groups, m)
                m2 = _group_mean(onp.einsum("ksc,ksc->kc", gz, xhat), groups, m)
                xhat *= m2
                gz -= m1
                gz -= xhat
                onp.multiply(gz, inv, out=dx[sl])
        grads = {0: _from_channels_last(dx, x) if dx is not None else None, 1: da, 2: db}
        return tuple(grads[i] for i in argnums)
    return vjp


defvjp_argnums(group_norm_act, _gn_act_vjp)
