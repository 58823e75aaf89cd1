"""The image primitives: forward against independent computations, VJPs by check_grads."""

import contextlib

import autograd
import numpy as np
import pytest
from autograd.test_util import check_grads
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.signal import correlate

from minidiff.nn import attention, conv, conv_fast

pytestmark = pytest.mark.ch6

# Stride 1 stores the padding once between rows and images (conv_fast.shifted_layout); the cases
# cover the usual "same" convolution, padding wider than half the kernel (1x1 with padding 1,
# 3x3 with padding 3: the output is taller than the shared grid row), even and 5x5 kernels.
CASES = [(1, 0, 3), (1, 1, 3), (2, 1, 3), (2, 0, 3), (1, 0, 1), (2, 1, 4), (1, 1, 1), (1, 1, 2),
         (1, 2, 3), (1, 3, 3), (1, 2, 5)]


@pytest.mark.parametrize("stride,padding,k", CASES)
@pytest.mark.exercise("6.1", "6.2")
def test_conv2d_equals_scipy_correlate(stride, padding, k, rng):
    x, w, b = rng.normal(size=(2, 3, 9, 8)), rng.normal(size=(4, 3, k, k)), rng.normal(size=4)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ref = np.stack([np.stack([sum(correlate(xp[n, c], w[o, c], mode="valid") for c in range(3))
                              + b[o] for o in range(4)]) for n in range(2)])
    ref = ref[:, :, ::stride, ::stride]
    np.testing.assert_allclose(conv.conv2d(x, w, b, stride, padding), ref, atol=1e-12)
    np.testing.assert_allclose(conv.conv2d_reference(x, w, b, stride, padding), ref, atol=1e-12)


def _gemm_mode(in_place):
    """The fast path's two ways of adding up the taps' GEMMs: NumPy's ``matmul`` and an addition,
    or BLAS accumulating in place (``conv_fast.gemm_in_place``, on while BLAS runs on one
    thread)."""
    return conv_fast.gemm_in_place() if in_place else contextlib.nullcontext()


@pytest.mark.parametrize("conv2d, in_place", [
    pytest.param(conv.conv2d, False, id="fast"),
    pytest.param(conv.conv2d, True, id="fast-gemm_in_place"),
    pytest.param(conv.conv2d_reference, False, id="reference",
                 marks=pytest.mark.exercise("6.1", "6.2", "6.3"))])
@pytest.mark.parametrize("stride,padding,k", CASES)
def test_conv2d_gradients(conv2d, in_place, stride, padding, k, rng):
    # every differentiable argument (argnum=(0, 1, 2)): input, weight and bias
    x, w, b = rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(4, 3, k, k)), rng.normal(size=4)
    with _gemm_mode(in_place):
        check_grads(lambda x, w, b: conv2d(x, w, b, stride, padding), argnum=(0, 1, 2),
                    modes=["rev"], order=1)(x, w, b)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 4), o=st.integers(1, 4), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.integers(1, 5), stride=st.integers(1, 3),
       padding=st.integers(0, 3), seed=st.integers(0, 2**31))
@pytest.mark.exercise("6.1", "6.2", "6.3")
@pytest.mark.parametrize("in_place", [False, True], ids=["matmul", "gemm_in_place"])
def test_the_fast_convolution_agrees_with_the_reference(in_place, n, c, o, h, w, k, stride,
                                                        padding, seed):
    # nn/conv_fast.py is the im2col + GEMM of conv2d_reference laid out for speed: on random
    # shapes, strides and paddings (float64) the values and all three gradients must agree,
    # whichever way the taps' GEMMs are added up.
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    x, wt, b = rng.normal(size=(n, c, h, w)), rng.normal(size=(o, c, k, k)), rng.normal(size=o)
    with _gemm_mode(in_place):
        fast = conv.conv2d(x, wt, b, stride, padding)
        ref = conv.conv2d_reference(x, wt, b, stride, padding)
        np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)
        g = rng.normal(size=ref.shape)
        grads = [autograd.grad(lambda x, wt, b, f=f: np.sum(f(x, wt, b, stride, padding) * g),
                               argnum=(0, 1, 2))(x, wt, b)
                 for f in (conv.conv2d, conv.conv2d_reference)]
    for a, r in zip(*grads, strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("stride,k", [(2, 2), (1, 3)])
def test_conv_transpose2d_is_the_adjoint_of_conv2d(stride, k, rng):
    # <conv(x), y> = <x, conv_transpose(y)> for the same kernel (no padding).
    x, w = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(4, 3, k, k))
    y = rng.normal(size=(2, 4, (8 - k) // stride + 1, (8 - k) // stride + 1))
    lhs = np.sum(conv.conv2d(x, w, stride=stride) * y)
    rhs = np.sum(x * conv.conv_transpose2d(y, w, stride=stride))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    check_grads(lambda y, w: conv.conv_transpose2d(y, w, stride=stride), argnum=(0, 1),
                modes=["rev"], order=1)(y, w)


def test_resampling_values_and_gradients(rng):
    x = rng.normal(size=(2, 3, 4, 6))
    up = conv.upsample_nearest(x)
    np.testing.assert_array_equal(up[:, :, 1::2, ::2], x)
    np.testing.assert_allclose(conv.avg_pool2(up), x)
    check_grads(conv.upsample_nearest, modes=["rev"], order=1)(x)
    check_grads(conv.avg_pool2, modes=["rev"], order=1)(x)


@pytest.mark.parametrize("act", [True, False])
def test_group_norm_act_against_a_naive_loop_and_gradients(act, rng):
    x = rng.normal(size=(2, 6, 3, 4)) * 3 + 1
    a, b = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    out = conv.group_norm_act(x, a, b, 3, 1e-5, act)
    ref = np.empty_like(x)
    for n in range(2):
        for g in range(3):
            block = x[n, 2 * g:2 * g + 2]
            z = (block - block.mean()) / np.sqrt(block.var() + 1e-5)
            z = z * a[n, 2 * g:2 * g + 2, None, None] + b[n, 2 * g:2 * g + 2, None, None]
            ref[n, 2 * g:2 * g + 2] = z / (1 + np.exp(-z)) if act else z
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    check_grads(lambda x, a, b: conv.group_norm_act(x, a, b, 3, 1e-5, act), argnum=(0, 1, 2),
                modes=["rev"], order=1)(x, a, b)


def test_attention_against_a_naive_softmax_and_gradients(rng):
    q, k, v = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 6, 4)), rng.normal(size=(3, 6, 4))
    s = np.einsum("bqd,bkd->bqk", q, k) / 2.0
    p = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    np.testing.assert_allclose(attention.attention(q, k, v), p @ v, rtol=1e-12)
    check_grads(attention.attention, argnum=(0, 1, 2), modes=["rev"], order=1)(q, k, v)


def test_float32_stays_float32_through_every_primitive(rng):
    f = np.float32
    x, w = rng.normal(size=(2, 4, 6, 6)).astype(f), rng.normal(size=(4, 4, 3, 3)).astype(f)
    a, b = np.ones((2, 4), f), np.zeros((2, 4), f)
    q = rng.normal(size=(2, 5, 4)).astype(f)

    def loss(x, w, a, b, q):
        h = conv.group_norm_act(conv.conv2d(x, w, padding=1), a, b, 2)
        h = conv.avg_pool2(conv.upsample_nearest(h))
        return np.sum(h * 1.0) + np.sum(attention.attention(q, q, q) * 1.0)

    grads = autograd.grad(loss, argnum=(0, 1, 2, 3, 4))(x, w, a, b, q)
    assert all(g.dtype == np.float32 for g in grads)


def test_conv2d_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="x has 3 channels but w expects 2"):
        conv.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="conv2d expects"):
        conv.conv2d(np.zeros((3, 5, 5)), np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match="one bias per output channel"):
        conv.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3)), np.zeros(3))


def test_blocked_and_chunked_paths_agree_with_the_whole_computation(rng, monkeypatch):
    # The stride-1 conv runs block by block of output rows and GroupNorm a few samples at a
    # time (cache blocking); with blocks of 7 rows and one sample per chunk every boundary case
    # is hit (blocks that straddle images, a short last block), and the values and gradients
    # must not change.
    x, w, b = rng.normal(size=(3, 4, 6, 5)), rng.normal(size=(2, 4, 3, 3)), rng.normal(size=2)
    a, s = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    whole = conv.conv2d(x, w, b, 1, 1), conv.group_norm_act(x, a, s, 2, 1e-5, True)
    monkeypatch.setattr(conv_fast, "_ROW_BLOCK", 7)
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 1)
    np.testing.assert_allclose(conv.conv2d(x, w, b, 1, 1), whole[0], rtol=1e-12, atol=1e-12)
    with conv_fast.gemm_in_place():
        np.testing.assert_allclose(conv.conv2d(x, w, b, 1, 1), whole[0], rtol=1e-12,
                                   atol=1e-12)
        check_grads(lambda x, w, b: conv.conv2d(x, w, b, 1, 1), argnum=(0, 1, 2),
                    modes=["rev"], order=1)(x, w, b)
    np.testing.assert_allclose(conv.group_norm_act(x, a, s, 2, 1e-5, True), whole[1],
                               rtol=1e-12, atol=1e-12)
    check_grads(lambda x, w, b: conv.conv2d(x, w, b, 1, 1), argnum=(0, 1, 2), modes=["rev"],
                order=1)(x, w, b)
    check_grads(lambda x, a, s: conv.group_norm_act(x, a, s, 2, 1e-5, True), argnum=(0, 1, 2),
                modes=["rev"],
                order=1)(x, a, s)


def test_memory_layout_changes_no_value(rng):
    # Conv outputs live channels-last in memory behind an (N, C, H, W) view, and GroupNorm hands
    # channels-last data on; either layout in must give the same numbers out.
    x = rng.normal(size=(2, 4, 5, 5))
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w, a, s = rng.normal(size=(3, 4, 3, 3)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    out = conv.conv2d(x, w, padding=1)
    assert out.strides[1] == out.itemsize  # channels are adjacent in memory
    np.testing.assert_array_equal(conv.conv2d(x_last, w, padding=1), out)
    np.testing.assert_array_equal(conv.group_norm_act(x_last, a, s, 2),
                                  conv.group_norm_act(x, a, s, 2))
