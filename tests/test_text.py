"""Chapter 8's text side: the tokenizer, the contrastive loss by hand, the text encoder's padding,
and cross-attention's defining properties (order of the context, padding, the empty context,
gradients) in the U-Net's transformer block and PixArt-alpha's DiT block."""

import math

import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff import latent
from minidiff.captions import VOCABULARY
from minidiff.models import dit, text, unet
from minidiff.nn.attention import attention

pytestmark = pytest.mark.ch8


def tiny_text_config():
    return text.TextConfig(vocabulary=VOCABULARY, max_len=8, width=16, depth=1, heads=2,
                           embed_dim=8)


def test_tokenizer_frames_pads_and_refuses_unknown_words():
    cfg = text.TextConfig(vocabulary=VOCABULARY)
    ids, mask = text.tokenize(["7, thin", ""], cfg)
    tokens = cfg.tokens
    assert [tokens[i] for i in ids[0, :5]] == ["<bos>", "7", ",", "thin", "<eos>"]
    assert mask[0].sum() == 5 and mask[1].sum() == 2  # the empty caption is <bos> <eos>
    assert np.all(ids[0, 5:] == 0) and not mask[0, 5:].any()
    with pytest.raises(ValueError, match=r"outside the vocabulary: \['purple'\]"):
        text.tokenize(["a purple seven"], cfg)


@pytest.mark.exercise("8.4")
def test_contrastive_loss_equals_a_hand_computation():
    # Two pairs, temperature 1: logits = image caption^T = [[1, 0.6], [0, 0.8]].
    image = np.array([[1.0, 0.0], [0.0, 1.0]])
    caption = np.array([[1.0, 0.0], [0.6, 0.8]])

    def lse(a, b):
        return math.log(math.exp(a) + math.exp(b))
    rows = ((lse(1.0, 0.6) - 1.0) + (lse(0.0, 0.8) - 0.8)) / 2  # image -> caption
    cols = ((lse(1.0, 0.0) - 1.0) + (lse(0.6, 0.8) - 0.8)) / 2  # caption -> image
    assert text.contrastive_loss(image, caption, 0.0) == pytest.approx((rows + cols) / 2,
                                                                        rel=1e-12)
    # the temperature scales the logits and is clipped at 100, as CLIP's
    big = text.contrastive_loss(image, caption, math.log(1000.0))
    assert big == pytest.approx(text.contrastive_loss(image, caption, math.log(100.0)))


def test_contrastive_objective_passes_check_grads_in_float64():
    cfg = tiny_text_config()
    rng = np.random.default_rng(0)
    params = text.init(rng, cfg, dtype=np.float64)
    ids, mask = text.tokenize(["a thin seven", "2, wide", "an eight"], cfg)
    batch = {"x": np.tanh(rng.normal(size=(3, 1, 28, 28))), "ids": ids, "mask": mask}
    check_grads(lambda p: text.loss(p, batch, cfg), modes=["rev"], order=1)(params)


def test_padding_changes_nothing_in_the_text_encoder():
    cfg = tiny_text_config()
    params = text.init(np.random.default_rng(1), cfg, dtype=np.float64)
    ids, mask = text.tokenize(["a bold seven"], cfg)
    other = ids.copy()
    other[0, ~mask[0]] = 7  # any token in the padded positions
    a, pooled_a = text.encode_text(params, ids, mask, cfg)
    b, pooled_b = text.encode_text(params, other, mask, cfg)
    np.testing.assert_allclose(a[0, mask[0]], b[0, mask[0]], rtol=1e-12)
    np.testing.assert_allclose(pooled_a, pooled_b, rtol=1e-12)


# ----------------------------------------------------------------------------- cross-attention

def cross_params(rng, c=8, dc=6):
    return {"q": {"w": rng.normal(size=(c, c)), "b": rng.normal(size=c)},
            "kv": {"w": rng.normal(size=(dc, 2 * c)), "b": rng.normal(size=2 * c)}}


@pytest.mark.exercise("8.1")
def test_cross_attention_ignores_the_order_of_the_context_and_its_padding():
    rng = np.random.default_rng(2)
    p = cross_params(rng)
    tokens, context = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 4, 6))
    mask = np.array([[True, True, True, False], [True, False, True, True]])
    out = unet.cross_attention(p, tokens, context, mask, heads=2)
    perm = np.array([2, 0, 3, 1])  # keys move with their values (and their mask)
    np.testing.assert_allclose(unet.cross_attention(p, tokens, context[:, perm], mask[:, perm],
                                                    heads=2), out, rtol=1e-12)
    padded = context.copy()
    padded[~mask] = 1e3 * rng.normal(size=padded[~mask].shape)  # anything at a padded token
    np.testing.assert_allclose(unet.cross_attention(p, tokens, padded, mask, heads=2), out,
                               rtol=1e-12)
    # the same as attending to the real tokens alone
    alone = unet.cross_attention(p, tokens[:1], context[:1, :3], mask[:1, :3], heads=2)
    np.testing.assert_allclose(alone, out[:1], rtol=1e-12)


@pytest.mark.exercise("8.1")
def test_cross_attention_to_an_empty_context_is_zero_and_matches_the_attention_formula():
    rng = np.random.default_rng(3)
    p = cross_params(rng)
    tokens, context = rng.normal(size=(1, 5, 8)), rng.normal(size=(1, 3, 6))
    empty = unet.cross_attention(p, tokens, context, np.zeros((1, 3), bool), heads=2)
    np.testing.assert_array_equal(empty, 0.0)
    # one head: softmax(q k^T / sqrt(d)) v with q = W_q x, [k, v] = W_kv c
    out = unet.cross_attention(p, tokens, context, np.ones((1, 3), bool), heads=1)
    q = tokens[0] @ p["q"]["w"] + p["q"]["b"]
    k, v = np.split(context[0] @ p["kv"]["w"] + p["kv"]["b"], 2, axis=1)
    s = q @ k.T / math.sqrt(8)
    w = np.exp(s - s.max(1, keepdims=True))
    np.testing.assert_allclose(out[0], (w / w.sum(1, keepdims=True)) @ v, rtol=1e-12)


def test_masked_attention_and_cross_attention_pass_check_grads_in_float64():
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 4))
    mask = np.array([[True, False, True, True, False], [False] * 5])
    check_grads(lambda q, k, v: attention(q, k, v, mask=mask), modes=["rev"],
                order=1)(q, k, v)
    p = cross_params(rng)
    tokens, context = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 4, 6))
    m = np.array([[True, True, False, True], [True, False, False, False]])
    check_grads(lambda p, t, c: unet.cross_attention(p, t, c, m, heads=2), modes=["rev"],
                order=1)(p, tokens, context)


def tiny_unet(**kw):
    return unet.UNetConfig(in_channels=4, resolution=7, channels=(16, 16), attention_levels=(1,),
                           head_channels=8, context_dim=6, num_classes=None, **kw)


def test_the_sd_shaped_unet_runs_on_a_7x7_latent_and_starts_at_zero():
    cfg = tiny_unet()
    rng = np.random.default_rng(5)
    params = unet.init(rng, cfg)
    x = rng.normal(size=(2, 4, 7, 7)).astype(np.float32)
    y = {"context": rng.normal(size=(2, 3, 6)).astype(np.float32), "mask": np.ones((2, 3), bool)}
    out = unet.apply(params, x, np.array([3.0, 700.0], np.float32), y, cfg)
    assert out.shape == (2, 4, 7, 7) and np.all(out == 0)  # zero-initialised output conv
    with pytest.raises(ValueError, match="must be a text context"):
        unet.apply(params, x, 3.0, np.array([1, 2]), cfg)


def test_sd_transformer_block_passes_check_grads_in_float64():
    cfg = tiny_unet()
    rng = np.random.default_rng(6)
    p = unet._transformer_init(rng, 16, 6, np.float64)
    p["proj_out"]["w"] = rng.normal(size=p["proj_out"]["w"].shape)  # not the zero init
    x, ctx = rng.normal(size=(2, 16, 4, 4)), rng.normal(size=(2, 3, 6))
    mask = np.array([[True, True, False], [True, False, False]])
    check_grads(lambda p, x, c: unet._transformer_block(p, x, c, mask, cfg), modes=["rev"],
                order=1)(p, x, ctx)


def test_pixart_block_with_an_empty_context_is_the_plain_dit_block():
    # With every context token masked the cross-attention adds its projection's bias only;
    # with that bias at zero the PixArt DiT equals the DiT without the text layers.
    plain = dit.DiTConfig(in_channels=4, resolution=8, patch=2, width=16, depth=2, heads=2,
                          num_classes=None)
    pixart = dit.DiTConfig(in_channels=4, resolution=8, patch=2, width=16, depth=2, heads=2,
                           num_classes=None, context_dim=6)
    rng = np.random.default_rng(7)
    params = dit.init(rng, pixart, dtype=np.float64)
    for blk in params["blocks"]:  # random weights everywhere, not the zero inits
        blk["ada"]["w"] = rng.normal(scale=0.1, size=blk["ada"]["w"].shape)
        blk["text"]["proj"]["w"] = rng.normal(size=blk["text"]["proj"]["w"].shape)
    params["final"]["w"] = rng.normal(size=params["final"]["w"].shape)
    x = rng.normal(size=(2, 4, 8, 8))
    ctx = {"context": rng.normal(size=(2, 3, 6)), "mask": np.zeros((2, 3), bool)}
    without = {k: v for k, v in params.items() if k != "blocks"}
    without["blocks"] = [{k: v for k, v in b.items() if k != "text"} for b in params["blocks"]]
    np.testing.assert_allclose(dit.apply(params, x, 5.0, ctx, pixart),
                               dit.apply(without, x, 5.0, None, plain), rtol=1e-12)
    ctx["mask"][:] = True  # a real caption changes the output
    assert not np.allclose(dit.apply(params, x, 5.0, ctx, pixart),
                           dit.apply(without, x, 5.0, None, plain))


# ----------------------------------------------------------------------------- guidance

def test_caption_guidance_is_the_cfg_rule_on_the_empty_caption():
    cfg = tiny_unet()
    rng = np.random.default_rng(8)
    params = unet.init(rng, cfg)
    params["conv_out"]["w"] = rng.normal(scale=0.1, size=params["conv_out"]["w"].shape).astype(
        np.float32)
    for blk in params["down"] + params["up"] + [params["mid"]]:  # let the caption through
        if "attn" in blk:
            w = blk["attn"]["proj_out"]["w"]
            blk["attn"]["proj_out"]["w"] = rng.normal(scale=0.3, size=w.shape).astype(np.float32)
    ctx = {"context": rng.normal(size=(2, 4, 6)).astype(np.float32), "mask": np.ones((2, 4), bool)}
    null = {"context": rng.normal(size=(1, 2, 6)).astype(np.float32), "mask": np.ones((1, 2), bool)}
    x = rng.normal(size=(2, 4, 7, 7)).astype(np.float32)
    t = np.full(2, 40.0, np.float32)
    eps_c = unet.apply(params, x, t, ctx, cfg)
    eps_u = unet.apply(params, x, t, {k: np.repeat(v, 2, axis=0) for k, v in null.items()}, cfg)
    assert np.abs(eps_c - eps_u).max() > 1e-2  # the two branches differ, or the test is empty
    for w in (0.0, 1.0, 3.0):
        got = latent.caption_guided_eps(unet.apply, params, cfg, ctx, null, w)(x, 40)
        np.testing.assert_allclose(got, eps_u + w * (eps_c - eps_u), rtol=1e-4, atol=1e-5)


def test_the_shipped_text_encoder_retrieves_far_above_chance():
    # 300 validation digits, one caption each: chance is 1/300 for the exact digit. The shipped
    # file records 12.8% exact and 96.1% semantic top-1 on 1,000; on 300 the bars are 20x chance
    # exactly and 85% semantically (a standard error of 1.1 points at 96%).
    from minidiff import text_encoder
    from minidiff.datasets import mnist
    from minidiff.images import SHIPPED

    params, cfg, thresholds = text_encoder.load_text_encoder(SHIPPED["clip"])
    x, y = mnist("validation")
    r = text_encoder.retrieval(params, text_encoder.CaptionedDigits(x[:2000], y[:2000],
                                                                    thresholds), n=300)
    assert r["caption_to_digit"]["top1"] > 20 / 300 and r["semantic_top1"] > 0.85
