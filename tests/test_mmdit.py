"""Chapter 10: SD3's MMDiT blocks, FLUX's parallel single-stream blocks, QK-norm — each against
its definition, in float64."""

import math

import autograd.numpy as anp
import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff.models import dit, mmdit
from minidiff.nn import gelu, linear, modulated_layer_norm, silu, tree_map
from minidiff.nn.layers import rms_norm

pytestmark = pytest.mark.ch10
TINY = mmdit.MMDiTConfig(in_channels=2, resolution=4, patch=2, width=8, double_blocks=1,
                         single_blocks=1, heads=2, mlp_ratio=2, context_dim=6, pooled_dim=5)


def naive_attention(q, k, v, keep):
    """softmax(q k^T / sqrt(d)) v, one row at a time, masked keys dropped (the definition)."""
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            s = np.array([q[b, i] @ k[b, j] / math.sqrt(q.shape[2]) for j in range(k.shape[1])])
            w = np.where(keep[b], np.exp(s - s[keep[b]].max()), 0.0)
            out[b, i] = (w / w.sum()) @ v[b]
    return out


def perturbed(params, rng, scale=0.3):
    # the zero-initialised gates and outputs made non-zero, so that every path is exercised
    return tree_map(lambda p: p + scale * rng.standard_normal(p.shape), params)


def caption(rng, n, cfg, s=3, masked=1):
    mask = np.ones((n, s), bool)
    mask[:, s - masked:] = False
    return {"context": rng.standard_normal((n, s, cfg.context_dim)), "mask": mask,
            "pooled": rng.standard_normal((n, cfg.pooled_dim))}


# ----------------------------------------------------------------------------- joint attention

@pytest.mark.exercise("10.1")
def test_joint_attention_is_one_attention_over_the_concatenated_streams(rng):
    # Esser et al. 2024, fig. 2a: each stream's queries attend over both streams' keys; the text
    # padding is masked for every query.
    bh, s, t, d = 4, 3, 5, 4
    txt = tuple(rng.standard_normal((bh, s, d)) for _ in range(3))
    img = tuple(rng.standard_normal((bh, t, d)) for _ in range(3))
    mask = np.array([[True, True, False], [True, False, False]])  # N = 2, heads = 2
    o_txt, o_img = mmdit.joint_attention(txt, img, mask, heads=2)
    keep = np.concatenate([np.repeat(mask, 2, axis=0), np.ones((bh, t), bool)], axis=1)
    q, k, v = (np.concatenate([a, b], axis=1) for a, b in zip(txt, img, strict=True))
    ref = naive_attention(q, k, v, keep)
    np.testing.assert_allclose(o_txt, ref[:, :s], atol=1e-13)
    np.testing.assert_allclose(o_img, ref[:, s:], atol=1e-13)


def test_double_block_uses_each_streams_own_projections_in_one_attention(rng):
    # The block's attention outputs, recomputed by hand: text tokens through the text weights,
    # image tokens through the image weights, one softmax over the concatenation.
    cfg = TINY
    p = perturbed(mmdit.init(rng, cfg, np.float64)["double"][0], rng)
    n, s, t, d, h = 2, 3, 4, cfg.width, cfg.heads
    txt, img = rng.standard_normal((n, s, d)), rng.standard_normal((n, t, d))
    c = rng.standard_normal((n, d))
    mask = np.array([[True, True, False], [True, True, True]])
    probe = []
    mmdit.double_block(p, txt, img, c, mask, cfg, probe)

    def projected(q, x):  # modulated norm, then the stream's own qkv, heads folded into N
        shift, scale = np.split(linear(q["ada"], silu(c))[:, None, :], 6, axis=2)[:2]
        z = linear(q["attn"]["qkv"], modulated_layer_norm(x, shift, scale).reshape(-1, d))
        return [a.reshape(n, -1, h, d // h).transpose(0, 2, 1, 3).reshape(n * h, -1, d // h)
                for a in np.split(z, 3, axis=1)]
    q_t, k_t, _ = projected(p["txt"], txt)
    q_i, k_i, _ = projected(p["img"], img)
    np.testing.assert_allclose(probe[0]["q"], np.concatenate([q_t, q_i], axis=1), atol=1e-12)
    np.testing.assert_allclose(probe[0]["k"], np.concatenate([k_t, k_i], axis=1), atol=1e-12)


def test_with_the_caption_absent_the_double_block_is_a_dit_block(rng):
    # All caption tokens masked: the image stream attends to itself only, and its update is
    # chapter 9's adaLN-Zero DiT block with the image stream's weights.
    cfg = TINY
    p = perturbed(mmdit.init(rng, cfg, np.float64)["double"][0], rng)
    n, d = 2, cfg.width
    img = rng.standard_normal((n, 4, d))
    c = rng.standard_normal((n, d))
    _, out = mmdit.double_block(p, rng.standard_normal((n, 3, d)), img, c,
                                np.zeros((n, 3), bool), cfg)
    dit_cfg = dit.DiTConfig(in_channels=2, resolution=4, patch=2, width=d, heads=cfg.heads,
                            mlp_ratio=cfg.mlp_ratio, num_classes=None)
    np.testing.assert_allclose(out, dit._block(p["img"], img, c, None, dit_cfg), atol=1e-12)


@pytest.mark.exercise("10.2")
def test_single_stream_block_is_attention_plus_mlp_in_parallel(rng):
    # FLUX's fused form x + gate W_2 [attn | GELU(m)], [qkv | m] = W_1 h, equals Dehghani et al.
    # 2023's parallel layer x + gate (W_o attn(h) + W_fc2 GELU(W_fc1 h)) with the split weights.
    cfg = TINY
    p = perturbed(mmdit.init(rng, cfg, np.float64)["single"][0], rng)
    n, s, t, d, h = 2, 3, 4, cfg.width, cfg.heads
    x = rng.standard_normal((n, s + t, d))
    c = rng.standard_normal((n, d))
    mask = np.array([[True, False, False], [True, True, True]])
    out = mmdit.single_block(p, x, c, mask, cfg)
    shift, scale, gate = np.split(linear(p["ada"], silu(c))[:, None, :], 3, axis=2)
    hh = modulated_layer_norm(x, shift, scale).reshape(-1, d)
    w1, b1, w2, b2 = p["lin1"]["w"], p["lin1"]["b"], p["lin2"]["w"], p["lin2"]["b"]
    qkv = hh @ w1[:, :3 * d] + b1[:3 * d]
    q, k, v = (a.reshape(n, -1, h, d // h).transpose(0, 2, 1, 3).reshape(n * h, -1, d // h)
               for a in np.split(qkv, 3, axis=1))
    keep = np.concatenate([np.repeat(mask, h, axis=0), np.ones((n * h, t), bool)], axis=1)
    att = naive_attention(q, k, v, keep).reshape(n, h, -1, d // h).transpose(0, 2, 1, 3)
    attn_out = att.reshape(-1, d) @ w2[:d]
    mlp_out = np.asarray(gelu(hh @ w1[:, 3 * d:] + b1[3 * d:])) @ w2[d:]
    ref = x + gate * (attn_out + mlp_out + b2).reshape(n, s + t, d)
    np.testing.assert_allclose(out, ref, atol=1e-12)


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("double, single", [(2, 0), (1, 2), (0, 2)])
def test_adaln_zero_makes_every_block_the_identity_and_the_model_output_zero_at_init(
        double, single, rng):
    cfg = mmdit.MMDiTConfig(in_channels=2, resolution=4, patch=2, width=8, double_blocks=double,
                            single_blocks=single, heads=2, context_dim=6, pooled_dim=5)
    params = mmdit.init(rng, cfg, np.float64)
    n, d = 2, cfg.width
    txt, img, c = (rng.standard_normal((n, 3, d)), rng.standard_normal((n, 4, d)),
                   rng.standard_normal((n, d)))
    mask = np.ones((n, 3), bool)
    for blk in params["double"]:
        out_t, out_i = mmdit.double_block(blk, txt, img, c, mask, cfg)
        np.testing.assert_array_equal(out_t, txt)
        np.testing.assert_array_equal(out_i, img)
    both = np.concatenate([txt, img], axis=1)
    for blk in params["single"]:
        np.testing.assert_array_equal(mmdit.single_block(blk, both, c, mask, cfg), both)
    x = rng.standard_normal((n, 2, 4, 4))
    assert np.all(mmdit.apply(params, x, np.array([10.0, 900.0]), caption(rng, n, cfg), cfg) == 0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_mmdit_gradients_pass_check_grads(qk_norm, rng):
    cfg = mmdit.MMDiTConfig(**{**TINY.to_dict(), "qk_norm": qk_norm})
    params = perturbed(mmdit.init(rng, cfg, np.float64), rng)
    x = rng.standard_normal((2, 2, 4, 4))
    y = caption(rng, 2, cfg)
    w = rng.standard_normal(x.shape)

    def loss(p, x, pooled):
        return anp.sum(w * mmdit.apply(p, x, np.array([3.0, 700.0]),
                                       {**y, "pooled": pooled}, cfg))
    for argnum in (0, 1, 2):
        check_grads(loss, modes=["rev"], order=1, argnum=argnum)(params, x, y["pooled"])


def test_padded_caption_tokens_change_nothing(rng):
    # a masked caption position's state never reaches the image (it is masked as a key)
    cfg = TINY
    params = perturbed(mmdit.init(rng, cfg, np.float64), rng)
    x = rng.standard_normal((2, 2, 4, 4))
    y = caption(rng, 2, cfg, s=4, masked=2)
    other = {**y, "context": y["context"].copy()}
    other["context"][:, 2:] = 100.0
    t = np.array([100.0, 500.0])
    np.testing.assert_allclose(mmdit.apply(params, x, t, other, cfg),
                               mmdit.apply(params, x, t, y, cfg), atol=1e-12)


def test_the_pooled_caption_conditions_every_block_through_adaln(rng):
    # c = time embedding + MLP(pooled) (Esser et al. 2024, fig. 2a): with every caption token
    # masked, the pooled vector alone still changes the output, and the time embedding is not
    # replaced by it (a pooled vector of zeros still leaves the output depending on t).
    cfg = TINY
    params = perturbed(mmdit.init(rng, cfg, np.float64), rng)
    x = rng.standard_normal((2, 2, 4, 4))
    y = caption(rng, 2, cfg, s=2, masked=2)
    t = np.array([100.0, 100.0])
    out = mmdit.apply(params, x, t, y, cfg)
    other = mmdit.apply(params, x, t, {**y, "pooled": y["pooled"] + 1.0}, cfg)
    assert np.abs(out - other).max() > 1e-3
    zero = {**y, "pooled": np.zeros_like(y["pooled"])}
    assert np.abs(mmdit.apply(params, x, t, zero, cfg)
                  - mmdit.apply(params, x, t + 300.0, zero, cfg)).max() > 1e-3


# ----------------------------------------------------------------------------- QK-norm

@pytest.mark.exercise("10.3")
def test_rms_norm_matches_zhang_sennrich_and_passes_check_grads(rng):
    x, g = rng.standard_normal((3, 5, 8)), rng.standard_normal(8)
    ref = x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-6) * g
    np.testing.assert_allclose(rms_norm(x, g), ref, rtol=1e-12)
    check_grads(rms_norm, modes=["rev"], order=1, argnum=0)(x, g)
    check_grads(rms_norm, modes=["rev"], order=1, argnum=1)(x, g)


def test_qk_norm_bounds_every_attention_logit_by_the_norms_scale(rng):
    # |q.k| / sqrt(d) <= |q| |k| / sqrt(d) <= sqrt(d) max|g_q| max|g_k| since |x / rms(x)| =
    # sqrt(d): whatever the weights, however large. Without QK-norm the same weights exceed it.
    cfgs = [mmdit.MMDiTConfig(**{**TINY.to_dict(), "qk_norm": q}) for q in (True, False)]
    x = rng.standard_normal((2, 2, 4, 4))
    y = caption(rng, 2, TINY)
    largest = []
    for cfg in cfgs:
        params = perturbed(mmdit.init(np.random.default_rng(0), cfg, np.float64),
                           np.random.default_rng(1), scale=3.0)
        probe = []
        mmdit.apply(params, x, np.array([5.0, 50.0]), y, cfg, probe=probe)
        logits = [mmdit.attention_logits(r)[0] for r in probe]
        largest.append(max(np.abs(lg[np.isfinite(lg)]).max() for lg in logits))
        if cfg.qk_norm:
            norms = [b[s]["attn"]["norm"] for b in params["double"] for s in ("txt", "img")] + \
                [b["norm"] for b in params["single"]]
            hd = cfg.width // cfg.heads
            bound = math.sqrt(hd) * max(np.abs(n["q"]).max() for n in norms) * \
                max(np.abs(n["k"]).max() for n in norms)
            assert largest[0] <= bound, (largest[0], bound)
    assert largest[1] > largest[0]


def test_probed_attention_rows_are_distributions_over_the_kept_keys(rng):
    cfg = TINY
    params = perturbed(mmdit.init(rng, cfg, np.float64), rng)
    probe = []
    y = caption(rng, 2, cfg, s=3, masked=1)
    mmdit.apply(params, rng.standard_normal((2, 2, 4, 4)), np.array([1.0, 2.0]), y, cfg, probe)
    assert len(probe) == cfg.double_blocks + cfg.single_blocks
    for r in probe:
        _, w = mmdit.attention_logits(r)
        np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-12)
        assert np.all(w[:, :, 2] == 0)  # the padded caption position, for every query


# ----------------------------------------------------------------------------- bad input

def test_bad_mmdit_input_is_refused_by_name(rng):
    with pytest.raises(ValueError, match="`width`"):
        mmdit.MMDiTConfig(width=10, heads=4)
    with pytest.raises(ValueError, match="at least one block"):
        mmdit.MMDiTConfig(double_blocks=0, single_blocks=0)
    params = mmdit.init(rng, TINY)
    x = np.zeros((2, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="`y` must be a caption"):
        mmdit.apply(params, x, 1.0, {"context": np.zeros((2, 3, 6)), "mask": np.ones((2, 3),
                                                                                     bool)}, TINY)
    with pytest.raises(ValueError, match="`x` must have shape"):
        mmdit.apply(params, np.zeros((2, 1, 4, 4)), 1.0, None, TINY)
