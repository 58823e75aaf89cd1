"""Chapter 9: the DiT's identities — patches, identity blocks at init, permutation equivariance,
gradients, and the Gflops formula against an instrumented forward pass."""

import autograd
import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff import nn
from minidiff.models import dit

pytestmark = pytest.mark.ch9

TINY = dit.DiTConfig(resolution=8, patch=2, width=16, depth=2, heads=2, num_classes=3)


def _perturbed(params, rng, scale=0.1):
    return nn.tree_map(lambda p: p + scale * rng.standard_normal(p.shape).astype(p.dtype), params)


@pytest.mark.exercise("9.1", "9.2")
def test_unpatchify_inverts_patchify(rng):
    x = rng.normal(size=(2, 3, 12, 12))
    tokens = dit.patchify(x, 4)
    assert tokens.shape == (2, 9, 48)
    np.testing.assert_array_equal(dit.unpatchify(tokens, 4, 3), x)
    np.testing.assert_array_equal(tokens[0, 1], x[0, :, 0:4, 4:8].transpose(1, 2, 0).ravel())


@pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")
def test_adaln_zero_blocks_start_as_the_identity_and_the_model_outputs_zeros(rng):
    cfg = dit.DiTConfig()
    params = dit.init(rng, cfg)
    tokens = rng.standard_normal((2, cfg.tokens, cfg.width)).astype(np.float32)
    c = rng.standard_normal((2, cfg.width)).astype(np.float32)
    for blk in params["blocks"]:
        np.testing.assert_array_equal(dit._block(blk, tokens, c, None, cfg), tokens)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    out = dit.apply(params, x, np.array([1.0, 900.0]), np.array([3, 10]), cfg)
    assert out.shape == x.shape and np.all(out == 0)


@pytest.mark.parametrize("use_pos", [False, pytest.param(True, marks=pytest.mark.exercise("9.3"))])
@pytest.mark.exercise("9.1", "9.2", "9.4")
def test_permutation_equivariance_without_position_embeddings(use_pos, rng):
    # Without position embeddings, permuting the patches permutes the output patches the same
    # way; with them, it does not.
    cfg = dit.DiTConfig(**{**TINY.to_dict(), "use_pos_embed": use_pos})
    params = _perturbed(nn.tree_cast(dit.init(rng, cfg), np.float64), rng)
    x = rng.normal(size=(1, 1, 8, 8))
    perm = rng.permutation(cfg.tokens)
    tokens = dit.patchify(x, 2)
    x_perm = dit.unpatchify(tokens[:, perm], 2, 1)
    out = dit.patchify(dit.apply(params, x, 5.0, np.array([1]), cfg), 2)
    out_perm = dit.patchify(dit.apply(params, x_perm, 5.0, np.array([1]), cfg), 2)
    same = np.allclose(out_perm, out[:, perm], atol=1e-10)
    assert same != use_pos


@pytest.mark.parametrize("conditioning", dit.CONDITIONINGS)
@pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")
def test_dit_gradients(conditioning, rng):
    cfg = dit.DiTConfig(**{**TINY.to_dict(), "conditioning": conditioning, "depth": 1})
    params = _perturbed(nn.tree_cast(dit.init(rng, cfg), np.float64), rng)
    x, t, y = rng.normal(size=(2, 1, 8, 8)), np.array([1.0, 7.0]), np.array([0, 3])
    check_grads(lambda p: dit.apply(p, x, t, y, cfg), modes=["rev"], order=1)(params)


@pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")
def test_float32_gradients_stay_float32(rng):
    params = dit.init(rng, TINY)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    loss = lambda p: nn.mean((dit.apply(p, x, np.array([1.0, 2.0], np.float32),
                                        np.array([0, 3]), TINY) - x) ** 2)
    assert {g.dtype for g in nn.tree_leaves(autograd.grad(loss)(params))} == {np.dtype(np.float32)}


@pytest.mark.parametrize("conditioning", dit.CONDITIONINGS)
@pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")
def test_gflops_formula_matches_an_instrumented_forward_pass(conditioning, monkeypatch, rng):
    cfg = dit.DiTConfig(**{**TINY.to_dict(), "conditioning": conditioning})
    macs = []
    real_linear, real_attention = dit.linear, dit.attention

    def counting_linear(p, x):
        rows = int(np.prod(x.shape[:-1]))
        macs.append(rows * p["w"].shape[0] * p["w"].shape[1])
        return real_linear(p, x)

    def counting_attention(q, k, v):
        macs.append(2 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2])  # scores + values
        return real_attention(q, k, v)

    monkeypatch.setattr(dit, "linear", counting_linear)
    monkeypatch.setattr(dit, "attention", counting_attention)
    n = 3
    dit.apply(dit.init(rng, cfg), np.zeros((n, 1, 8, 8), np.float32), 1.0, np.zeros(n, int), cfg)
    assert sum(macs) / n / 1e9 == pytest.approx(dit.gflops(cfg), rel=1e-12)


def test_halving_the_patch_roughly_quadruples_the_compute():
    a = dit.gflops(dit.DiTConfig(patch=4))
    b = dit.gflops(dit.DiTConfig(patch=2))
    assert 3.5 < b / a < 5.5


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="divisible by `patch`"):
        dit.DiTConfig(resolution=28, patch=3)
    with pytest.raises(ValueError, match="divisible by `heads`"):
        dit.DiTConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="`conditioning` must be one of"):
        dit.DiTConfig(conditioning="film")


# Peebles & Xie 2023, table 4: forward Gflops of the twelve ImageNet-256 DiTs (latent 32x32x4;
# S, B, L, XL = width 384, 768, 1024, 1152, depth 12, 12, 24, 28, heads 6, 12, 16, 16).
PAPER_GFLOPS = {("S", 8): 0.36, ("S", 4): 1.41, ("S", 2): 6.06, ("B", 8): 1.42, ("B", 4): 5.56,
                ("B", 2): 23.01, ("L", 8): 5.01, ("L", 4): 19.70, ("L", 2): 80.71,
                ("XL", 8): 7.39, ("XL", 4): 29.05, ("XL", 2): 118.64}
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}


def _imagenet_dit(size, patch, **kw):
    width, depth, heads = SIZES[size]
    return dit.DiTConfig(in_channels=4, resolution=32, patch=patch, width=width, depth=depth,
                         heads=heads, num_classes=1000, **kw)


@pytest.mark.parametrize("size,patch", sorted(PAPER_GFLOPS))
def test_gflops_formula_reproduces_the_dit_paper_table(size, patch):
    # The paper's models also output a learned variance (2C output channels: T D p² C more
    # multiply-adds in the final layer, 0.02 Gflops for XL/2); the rest is the same count.
    cfg = _imagenet_dit(size, patch)
    learned_sigma = cfg.tokens * cfg.width * patch**2 * cfg.in_channels / 1e9
    assert dit.gflops(cfg) + learned_sigma == pytest.approx(PAPER_GFLOPS[size, patch], rel=0.01,
                                                            abs=0.006)  # table rounding


def test_halving_the_patch_quadruples_tokens_and_about_quadruples_gflops():
    big, small = _imagenet_dit("XL", 4), _imagenet_dit("XL", 2)
    assert small.tokens == 4 * big.tokens
    ratio = dit.gflops(small) / dit.gflops(big)
    # 4x on every per-token layer; attention scores (T² D) grow 16x, so a little more than 4
    assert 4.0 < ratio < 4.2, ratio


def test_conditioning_costs_as_the_paper_states():
    # sec. 3.2: cross-attention adds "roughly 15%" Gflops; in-context adds two tokens (negligible)
    base = dit.gflops(_imagenet_dit("XL", 2))
    cross = dit.gflops(_imagenet_dit("XL", 2, conditioning="cross_attention"))
    context = dit.gflops(_imagenet_dit("XL", 2, conditioning="in_context"))
    assert 1.10 < cross / base < 1.20 and 1.0 < context / base < 1.01
