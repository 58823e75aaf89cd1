"""The fast path behind ``conv2d``: the same arithmetic as the reference im2col + GEMM in
``nn/conv.py``, laid out for speed on a CPU (``tests/test_conv.py`` checks the two agree in float64
on random shapes, strides and paddings, values and gradients).

Speed notes (measured on a 2-core CPU while building chapter 6's U-Net; the U-Net step at batch
64 went from 1.8 s to 1.2 s with the first version of the stride-1 convolution and the GroupNorm
below, same run):

- A stride-1 ``conv2d`` is ``kh * kw`` GEMMs on *shifted contiguous slices* of the zero-padded,
  channels-last input (``shifted_layout``): no im2col copy at all. The padding is stored once
  between grid rows and between images, not twice, so a 3x3 convolution on 28 x 28 computes
  29 x 29 rows per image instead of 30 x 30 (at 7 x 7: 64 instead of 81); the garbage rows are
  cropped, and the output comes out channels-last in memory behind an ``(N, C, H, W)`` view.
  The GEMMs of one block of output rows run together so the block stays in cache
  (``_accumulate_taps``). The input gradient is the same blocked GEMMs on the output gradient's
  rows with the offsets reversed; the weight gradient is one GEMM per tap. Sharing the padding,
  and the input gradient as blocked gathers rather than whole-array scatter-adds,
  took a batch-64 step from about 1.5 s to 1.25 s (the convolutions' time from 1.18 s to 0.88 s
  in the same phase of this noisy machine).
- Strided convolutions (two per U-Net) keep one im2col copy (``kh * kw`` strided slices,
  channels-last) and one GEMM; their input gradient is a transposed convolution, not a
  scatter-add.
- NumPy's ``matmul`` only: calling SciPy's BLAS ``gemm`` (which can accumulate, ``beta = 1``)
  between NumPy's made the step twice as slow, because the two wheels ship separate OpenBLAS
  libraries whose idle threads spin against each other on two cores.
- ``group_norm_act`` fuses GroupNorm, the per-channel scale/shift of AdaGN and SiLU in one
  primitive, works channels-last (per-channel sums by ``einsum`` over contiguous rows, then per
  group), a few samples at a time so its dozen elementwise passes stay in cache, and hands the
  next convolution channels-last data.
- Every VJP casts its incoming gradient to the forward dtype, so a float32 network stays float32
  even if something upstream produced float64.
"""

import contextlib
import math
import typing

import numpy as onp


def _pad_nhwc(x, padding):
    """``x: (N, C, H, W)`` -> zero-padded channels-last ``(N, H + 2 ph, W + 2 pw, C)``: one copy."""
    n, c, h, w = x.shape
    ph, pw = padding
    xh = onp.empty((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    _zero_border(xh, ph, ph + h, pw, pw + w)
    xh[:, ph:ph + h, pw:pw + w, :] = x.transpose(0, 2, 3, 1)
    return xh


def _zero_border(a, top, bottom, left, right):
    """Zero ``a: (N, H, W, C)`` outside rows ``[top, bottom)`` and columns ``[left, right)``."""
    a[:, :top], a[:, bottom:] = 0, 0
    a[:, top:bottom, :left], a[:, top:bottom, right:] = 0, 0


def _im2col(x, kh, kw, stride, padding=(0, 0)):
    """``x: (N, C, H, W)`` -> ``(N * Ho * Wo, kh * kw * C)``, channels last, padding included.

    One copy into a zero-padded channels-last buffer, then ``kh * kw`` strided slice copies into
    the column buffer: numpy's generic copy of a 6-D ``sliding_window_view`` was 8x slower.
    Used for strided convolutions; stride 1 takes the shifted-GEMM path below."""
    n, c, h, w = x.shape
    ph, pw = padding
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    xh = _pad_nhwc(x, padding) if ph or pw else onp.ascontiguousarray(x.transpose(0, 2, 3, 1))
    cols = onp.empty((n, ho, wo, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xh[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :]
    return cols.reshape(n * ho * wo, kh * kw * c), (n, ho, wo)


def _w_matrix(w):
    """``w: (O, C, kh, kw)`` -> ``(kh * kw * C, O)`` matching ``_im2col``'s column order."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


class _Layout(typing.NamedTuple):
    """Where everything sits when a stride-1 convolution runs as shifted GEMMs (see
    ``shifted_layout``)."""

    grid: tuple  # (N, Hq, Wq): the row grid shared by input and output
    out_hw: tuple  # (Ho, Wo): the output pixels, the top-left corner of each image's grid
    lead: int  # zero rows of the input buffer before image 0's first pixel
    rows: int  # rows of the input buffer (the grid plus zeros before and after it)
    offsets: list  # (di, dj, off): kernel tap (di, dj) reads input row r + off
    pre: int  # zero rows before the output gradient in its buffer (the input gradient's taps)


def shifted_layout(x_shape, w_shape, padding):
    """The stride-1 convolution as ``kh * kw`` shifted GEMMs (no im2col copy).

    The input goes channels-last into a buffer of rows ``(rows, C)``: each image on a grid of
    ``Hq = H + ph`` rows of ``Wq = W + pw`` pixels, the pixels top-left, the rest zero. The zero
    columns at the end of one grid row are also the left padding of the next, and the zero rows
    at the bottom of one image the top padding of the next, so the padding is stored once, not
    twice (``(H + 1)(W + 1)`` rows per image instead of ``(H + 2)(W + 2)`` for a 3x3 kernel).
    Output pixel ``(i, j)`` of image ``n`` sits at row ``r = (n Hq + i) Wq + j`` of an output on
    the same grid, and kernel tap ``(di, dj)`` reads input row ``r + di Wq + dj``. So tap
    ``(di, dj)`` contributes ``X[off : off + N Hq Wq] @ W[di, dj]`` to the output: a GEMM on a
    contiguous slice. Grid rows that are not output pixels come out as garbage and are cropped.
    """
    n, _, h, w = x_shape
    _, _, kh, kw = w_shape
    ph, pw = padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    hq, wq = max(h + ph, ho), max(w + pw, wo)  # at least ph zero rows, pw zero columns between
    lead = ph * wq + pw  # reads of image 0's top-left output pixel start at row 0
    size = n * hq * wq
    offsets = [(i, j, i * wq + j) for i in range(kh) for j in range(kw)]
    last = offsets[-1][2]
    return _Layout((n, hq, wq), (ho, wo), lead, max(size + last, lead + size), offsets,
                   max(0, last - lead))


def _shifted_rows(x, lay):
    """``x: (N, C, H, W)`` laid out as the zero-padded input rows ``(lay.rows, C)``: one copy."""
    n, hq, wq = lay.grid
    _, c, h, w = x.shape
    buf = onp.empty((lay.rows, c), dtype=x.dtype)
    size = n * hq * wq
    buf[:lay.lead], buf[lay.lead + size:] = 0, 0
    img = buf[lay.lead:lay.lead + size].reshape(n, hq, wq, c)
    _zero_border(img, 0, h, 0, w)
    img[:, :h, :w, :] = x.transpose(0, 2, 3, 1)
    return buf


_ROW_BLOCK = 2048
_GEMM_IN_PLACE = [False]  # on in the one-thread worker processes of ``nn.parallel``


def use_gemm_in_place(on=True):
    """From now on (``on``) the tap GEMMs accumulate into the output inside BLAS (``C += A B``,
    SciPy's ``gemm`` with ``beta = 1``) instead of NumPy's ``matmul`` into a buffer and an
    addition: one pass over each block fewer per tap (a 3x3 convolution 20-33% faster on one
    thread). Only for a process whose BLAS libraries all run on one thread, which is what
    ``nn.parallel.DataParallel``'s training workers are: SciPy's wheel ships its own OpenBLAS,
    and two multi-threaded OpenBLAS pools spinning side by side on two cores made a step twice
    as slow. Not for ``nn.threads`` either: SciPy's BLAS wrappers hold Python's global lock
    while they run, so two threads calling them take turns. And not for sampling: the sums come
    out rounded differently (by about 1e-5 in a pixel after ten DDIM steps), and a model should
    sample the same images bit for bit wherever it runs. Returns the previous setting."""
    saved, _GEMM_IN_PLACE[0] = _GEMM_IN_PLACE[0], bool(on)
    return saved


@contextlib.contextmanager
def gemm_in_place():
    """``use_gemm_in_place`` for the duration of a block."""
    saved = use_gemm_in_place(True)
    try:
        yield
    finally:
        use_gemm_in_place(saved)


def _accumulate_in_place(out, rows, taps, offsets, bias):
    """``_accumulate_taps`` with SciPy's ``gemm``: the row-major blocks are handed over as their
    column-major transposes (``blk.T = taps[k].T rows[...].T``), so nothing is copied and
    ``overwrite_c`` writes straight into ``out``."""
    from scipy.linalg import blas

    gemm = blas.get_blas_funcs("gemm", dtype=out.dtype)
    span = out.shape[0]
    for s in range(0, span, _ROW_BLOCK):
        e = min(s + _ROW_BLOCK, span)
        blk = out[s:e]
        beta = 0.0
        if bias is not None:
            blk[...] = bias
            beta = 1.0
        for off, tap in zip(offsets, taps, strict=True):
            c = gemm(1.0, tap.T, rows[s + off:e + off].T, beta=beta, c=blk.T, overwrite_c=True)
            beta = 1.0
        if not onp.shares_memory(c, blk):  # f2py copied: never with these layouts, but be sure
            blk[...] = c.T


def _accumulate_taps(out, rows, taps, offsets, bias=None):
    """``out[r] = sum_k rows[r + offsets[k]] @ taps[k] (+ bias)`` for every row of ``out``.

    Done block by block of ``_ROW_BLOCK`` output rows, all taps per block: the block of ``out``
    and the rows it reads stay in cache across the taps' GEMMs and additions, instead of
    streaming the whole output through memory once per tap."""
    if _GEMM_IN_PLACE[0]:
        return _accumulate_in_place(out, rows, taps, offsets, bias)
    span = out.shape[0]
    tmp = onp.empty((min(_ROW_BLOCK, span), out.shape[1]), dtype=out.dtype)
    for s in range(0, span, _ROW_BLOCK):
        e = min(s + _ROW_BLOCK, span)
        blk, t = out[s:e], tmp[:e - s]
        onp.matmul(rows[s + offsets[0]:e + offsets[0]], taps[0], out=blk)
        for off, tap in zip(offsets[1:], taps[1:], strict=True):
            onp.matmul(rows[s + off:e + off], tap, out=t)
            blk += t
        if bias is not None:
            blk += bias


def forward(x, w, stride, padding, b=None):
    o, c, kh, kw = w.shape
    if stride != 1:
        cols, (n, ho, wo) = _im2col(x, kh, kw, stride, padding)
        out = cols @ _w_matrix(w)  # (N*Ho*Wo, O): the one GEMM
        if b is not None:
            out += b
        return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)  # (N, O, Ho, Wo), a view
    lay = shifted_layout(x.shape, w.shape, padding)
    (n, hq, wq), (ho, wo) = lay.grid, lay.out_hw
    taps = onp.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(kh * kw, c, o)
    out = onp.empty((n * hq * wq, o), dtype=x.dtype)  # garbage rows are cropped below
    _accumulate_taps(out, _shifted_rows(x, lay), taps, [off for *_, off in lay.offsets],
                     bias=b)
    return out.reshape(n, hq, wq, o)[:, :ho, :wo, :].transpose(0, 3, 1, 2)  # a view


def grad_rows(g, lay):
    """The output gradient ``g: (N, O, Ho, Wo)`` on the grid's rows, zero where the forward
    pass produced cropped garbage, after ``lay.pre`` zero rows and before ``lay.lead`` more
    (the input gradient's taps read that far): ``(lay.pre + N Hq Wq + lay.lead, O)``."""
    n, hq, wq = lay.grid
    (ho, wo), o = lay.out_hw, g.shape[1]
    size = n * hq * wq
    gf = onp.empty((lay.pre + size + lay.lead, o), dtype=g.dtype)
    gf[:lay.pre], gf[lay.pre + size:] = 0, 0
    grid = gf[lay.pre:lay.pre + size].reshape(n, hq, wq, o)
    _zero_border(grid, 0, ho, 0, wo)
    grid[:, :ho, :wo, :] = g.transpose(0, 2, 3, 1)
    return gf


def input_grad(g, w, x_shape, stride, padding, gf=None):
    """The adjoint of ``_conv_forward`` in ``x``. Stride 1: input row ``s`` was read by tap
    ``(di, dj)`` of output row ``s - off``, so ``dX[s] = sum G[s - off] W[di, dj]^T`` — the
    same blocked shifted GEMMs as the forward, on the output gradient's rows with the offsets
    reversed. Strided: a transposed convolution — dilate ``g`` by the stride, pad by ``k - 1``
    (plus any rows the forward never reached), correlate with the kernel flipped in space and
    transposed in channels, crop the padding."""
    n, c, h, wd = x_shape
    o, _, kh, kw = w.shape
    ph, pw = padding
    if stride == 1:
        lay = shifted_layout(x_shape, w.shape, padding)
        gf = grad_rows(g, lay) if gf is None else gf
        _, hq, wq = lay.grid
        taps_t = onp.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, o, c)
        # input grid row s is buffer row lead + s; output row r is gradient row pre + r
        dx = onp.empty((n * hq * wq, c), dtype=g.dtype)
        _accumulate_taps(dx, gf, taps_t, [lay.lead + lay.pre - off for *_, off in lay.offsets])
        return dx.reshape(n, hq, wq, c)[:, :h, :wd, :].transpose(0, 3, 1, 2)
    hp, wp = h + 2 * ph, wd + 2 * pw
    ho, wo = g.shape[2:]
    gd = onp.zeros((n, o, (ho - 1) * stride + 1, (wo - 1) * stride + 1), g.dtype)
    gd[:, :, ::stride, ::stride] = g
    extra_h = hp - (gd.shape[2] + kh - 1)  # rows of the padded input no window reached
    extra_w = wp - (gd.shape[3] + kw - 1)
    gd = onp.pad(gd, ((0, 0), (0, 0), (kh - 1, kh - 1 + extra_h), (kw - 1, kw - 1 + extra_w)))
    w_t = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, kh, kw)
    dx = forward(gd, w_t, 1, (0, 0))  # (N, C, Hp, Wp)
    return dx[:, :, ph:ph + h, pw:pw + wd]


def weight_grad(g, x, w_shape, stride, padding, gf=None):
    """``dW = X^T G``. Stride 1: one GEMM per tap on the shifted input rows, summed block by
    block of ``_ROW_BLOCK`` rows so each block of ``X`` and ``G`` is read from memory once for
    all the taps, not once per tap (12-15% faster on one BLAS thread). Strided: the im2col
    matrix is rebuilt here rather than kept alive from the forward pass (see the module notes)."""
    o, c, kh, kw = w_shape
    if stride == 1:
        lay = shifted_layout(x.shape, w_shape, padding)
        size = math.prod(lay.grid)
        gf = (grad_rows(g, lay) if gf is None else gf)[lay.pre:lay.pre + size]
        xf = _shifted_rows(x, lay)
        dw = onp.zeros((kh, kw, c, o), dtype=g.dtype)
        tmp = onp.empty((c, o), dtype=g.dtype)
        for s in range(0, size, _ROW_BLOCK):  # a block of rows, every tap, while it is in cache
            e = min(s + _ROW_BLOCK, size)
            for i, j, off in lay.offsets:
                onp.matmul(xf[s + off:e + off].T, gf[s:e], out=tmp)
                dw[i, j] += tmp
        return dw.transpose(3, 2, 0, 1)
    cols, _ = _im2col(x, kh, kw, stride, padding)
    g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)  # (N*Ho*Wo, O)
    dw = cols.T @ g2  # (kh*kw*C, O)
    return dw.reshape(kh, kw, c, o).transpose(3, 2, 0, 1)
