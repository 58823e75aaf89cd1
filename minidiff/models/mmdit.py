"""Chapter 10 — SD3's MMDiT and FLUX's hybrid, in miniature.

Stable Diffusion 3 (Esser et al. 2024, sec. 4 and fig. 2) keeps DiT's patch tokens and adaLN-Zero
but stops treating the caption as a side input. The caption's token states become a second stream
of tokens with **its own weights** — its own adaLN modulation, QKV projection, output projection
and MLP — and the two streams meet in **one joint attention** over their concatenated sequence:

    double-stream (MMDiT) block, for each stream s in (text, image):
        h_s = LN(x_s) (1 + scale_s) + shift_s                  its own modulation from c
        q_s, k_s, v_s = W_qkv,s h_s                            its own projections
        o = attention([q_txt; q_img], [k_txt; k_img], [v_txt; v_img])      one attention
        x_s = x_s + gate_s W_o,s o_s;   x_s = x_s + gate'_s MLP_s(LN(x_s) (1 + scale'_s) + shift'_s)

so text tokens read the image and the image reads the text in the same softmax (chapter 8's
cross-attention only let the image read). The conditioning vector ``c`` is the timestep embedding
plus an MLP of the **pooled** caption embedding (SD3 pools CLIP; here the text encoder's state at
``<eos>``): the global summary goes through adaLN, the tokens through attention.

FLUX.1 (Black Forest Labs 2024; its reference code is the description) runs ``double_blocks`` of
these, then concatenates the two streams into one and runs ``single_blocks`` **parallel**
single-stream blocks (Dehghani et al. 2023, sec. 2: attention and MLP from the same normalised
input, summed), with one modulation and with the attention's QKV and the MLP's first layer fused
into one matrix and its output projection and the MLP's second layer fused into another:

    single-stream block:  h = LN(x) (1 + scale) + shift
                          [qkv | m] = W_1 h;   x = x + gate W_2 [attention(qkv) | GELU(m)]

which equals ``x + gate (W_o attention(h) + W_fc2 GELU(W_fc1 h))`` with ``W_2 = [W_o; W_fc2]``
(a test holds it). ``double_blocks = depth, single_blocks = 0`` is pure MMDiT (SD3);
``double_blocks = 0`` is a single-stream transformer over text and image tokens.

**QK-norm** (``qk_norm``; Dehghani et al. 2023, sec. 2; SD3.5 and FLUX use it): RMSNorm on each
head's queries and keys with a learned scale ``g`` before the dot product. Then
``|q . k| / sqrt(d_h) <= sqrt(d_h) max|g_q| max|g_k|`` whatever the weights do, so the
attention logits cannot run away at a high learning rate (``attention_logits`` measures them).

Departures, said once: FLUX's rotary position embedding is replaced by DiT's fixed 2D sin-cos on
the image tokens (the text states carry their own positions from the text encoder); SD3's last
double block has no text MLP ("pre-only"), here every block is whole; padded caption positions are
masked as keys (SD3 and FLUX attend to padding tokens of their encoders). Zero-initialised adaLN
gates make every block the identity at initialisation, as in DiT.
``params = init(rng, config)``; ``apply(params, x, t, y, config) -> (N, C, H, W)``.
"""

import dataclasses

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from ..nn import gelu, init_linear, linear, modulated_layer_norm, silu, sinusoidal_embedding
from ..nn.attention import attention, merge_heads, split_heads
from ..nn.layers import rms_norm
from . import check_images
from .dit import patchify, sincos_2d, unpatchify


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    in_channels: int = 4
    resolution: int = 7
    patch: int = 1
    width: int = 96
    double_blocks: int = 4  # MMDiT blocks (SD3); FLUX runs some of these ...
    single_blocks: int = 0  # ... then parallel single-stream blocks over both
    heads: int = 4
    mlp_ratio: int = 4
    context_dim: int = 64  # the text encoder's token states
    pooled_dim: int = 64  # its pooled caption embedding
    qk_norm: bool = False

    def __post_init__(self):
        if self.resolution % self.patch:
            raise ValueError(f"`resolution` {self.resolution} must be divisible by `patch` "
                             f"{self.patch}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"`width` {self.width} must be divisible by `heads` {self.heads} "
                             "and by 4 (2D sin-cos position embedding)")
        if self.double_blocks < 0 or self.single_blocks < 0 \
                or self.double_blocks + self.single_blocks == 0:
            raise ValueError("`double_blocks` and `single_blocks` must be non-negative with at "
                             f"least one block (got {self.double_blocks}, {self.single_blocks})")

    @property
    def tokens(self):
        return (self.resolution // self.patch) ** 2

    def to_dict(self):
        return dataclasses.asdict(self)


def check_text(y, n, config):
    """A caption ``{"context": (n, S, context_dim), "mask": (n, S) bool, "pooled": (n,
    pooled_dim)}`` (``text_encoder.encode_captions(..., pooled=True)``); ``None`` is the empty
    caption (one masked token, a zero pooled vector)."""
    if y is None:
        return (onp.zeros((n, 1, config.context_dim), onp.float32), onp.zeros((n, 1), bool),
                onp.zeros((n, config.pooled_dim), onp.float32))
    ok = isinstance(y, dict) and set(y) == {"context", "mask", "pooled"}
    if ok:
        ctx, mask, pooled = y["context"], onp.asarray(y["mask"]), y["pooled"]
        ok = (np.ndim(ctx) == 3 and ctx.shape[0] == n and ctx.shape[2] == config.context_dim
              and mask.dtype == bool and mask.shape == ctx.shape[:2]
              and np.shape(pooled) == (n, config.pooled_dim))
    if not ok:
        raise ValueError(f"`y` must be a caption {{'context': (N={n}, S, {config.context_dim}), "
                         f"'mask': (N, S) bool, 'pooled': (N, {config.pooled_dim})}} "
                         f"(got {type(y).__name__})")
    return ctx, mask, pooled


# ----------------------------------------------------------------------------- attention

def _qkv(w, x, heads, norms):
    """Tokens ``x: (N, L, D)`` -> ``q, k, v`` of shape ``(N*heads, L, D/heads)`` through ``w``
    (one matrix), with QK-norm when ``norms`` holds the two RMSNorm scales."""
    n, length, d = x.shape
    z = linear(w, np.reshape(x, (n * length, d)))
    q, k, v = (split_heads(a, n, length, heads) for a in np.split(z, 3, axis=1))
    if norms is not None:
        q, k = rms_norm(q, norms["q"]), rms_norm(k, norms["k"])
    return q, k, v


def joint_attention(qkv_txt, qkv_img, mask, heads, probe=None):
    """One attention over the concatenated sequence ``[text; image]`` (Esser et al. 2024, fig.
    2a): every query, of either stream, attends over both streams' keys. ``qkv_*``: triples of
    ``(N*heads, L_*, d)``, ``mask: (N, S)`` the caption's key padding. Returns the two streams'
    outputs, ``(N*heads, S, d)`` and ``(N*heads, T, d)``."""
    s = qkv_txt[0].shape[1]
    # BEGIN EXERCISE 10.1: joint attention: both streams' tokens in one sequence, the caption's
    #   padding masked, then split back (Esser et al. 2024, fig. 2a); notebook 10, section 6
    q, k, v = (np.concatenate([a, b], axis=1) for a, b in zip(qkv_txt, qkv_img, strict=True))
    keys = onp.concatenate([mask, onp.ones((mask.shape[0], qkv_img[0].shape[1]), bool)], axis=1)
    keys = onp.repeat(keys, heads, axis=0)  # (N*heads, S + T)
    o_txt, o_img = np.split(attention(q, k, v, mask=keys), [s], axis=1)  # split: cheap VJP
    # END EXERCISE
    if probe is not None:
        probe.append({"q": getval(q), "k": getval(k), "mask": keys, "text_tokens": s})
    return o_txt, o_img


def attention_logits(record):
    """The logits ``q . k / sqrt(d)`` and weights of one probed attention (``apply(...,
    probe=[])``), padded keys set to ``-inf`` / weight 0: ``(logits, weights)``, each ``(N*heads,
    S+T, S+T)`` with the text tokens first."""
    from ..nn.attention import softmax

    q, k, keys = record["q"], record["k"], record["mask"]
    logits = q @ onp.swapaxes(k, 1, 2) / onp.sqrt(q.shape[-1])
    return onp.where(keys[:, None, :], logits, -onp.inf), softmax(logits, keys[:, None, :])


# ----------------------------------------------------------------------------- blocks

def _stream_init(rng, cfg, dtype):
    """One stream of a double block: the names of a DiT block (``dit._block`` can run it)."""
    d, r = cfg.width, cfg.mlp_ratio
    p = {"ada": init_linear(rng, d, 6 * d, dtype, zero=True),  # adaLN-Zero
         "attn": {"qkv": init_linear(rng, d, 3 * d, dtype),
                  "proj": init_linear(rng, d, d, dtype)},
         "mlp": {"fc1": init_linear(rng, d, r * d, dtype),
                 "fc2": init_linear(rng, r * d, d, dtype)}}
    if cfg.qk_norm:
        p["attn"]["norm"] = _norm_init(cfg, dtype)
    return p


def _norm_init(cfg, dtype):
    hd = cfg.width // cfg.heads
    return {"q": onp.ones(hd, dtype), "k": onp.ones(hd, dtype)}


def double_block(p, txt, img, c, mask, cfg, probe=None):
    """An MMDiT block (Esser et al. 2024, fig. 2b): ``txt: (N, S, D)``, ``img: (N, T, D)``, ``c:
    (N, D)`` -> the two updated streams."""
    n, d, heads = img.shape[0], cfg.width, cfg.heads
    streams = {"txt": txt, "img": img}
    mods, qkv = {}, {}
    for name, x in streams.items():  # each stream with its own weights
        q = p[name]
        mods[name] = np.split(linear(q["ada"], silu(c))[:, None, :], 6, axis=2)  # 6 x (N, 1, D)
        shift, scale = mods[name][0], mods[name][1]
        qkv[name] = _qkv(q["attn"]["qkv"], modulated_layer_norm(x, shift, scale), heads,
                         q["attn"].get("norm"))
    outs = dict(zip(("txt", "img"), joint_attention(qkv["txt"], qkv["img"], mask, heads, probe),
                    strict=True))
    for name, x in streams.items():
        q, (_, _, gate_a, shift_m, scale_m, gate_m) = p[name], mods[name]
        length = x.shape[1]
        o = linear(q["attn"]["proj"], merge_heads(outs[name], n, length, heads))
        x = x + gate_a * np.reshape(o, (n, length, d))
        h = np.reshape(modulated_layer_norm(x, shift_m, scale_m), (n * length, d))
        mlp = linear(q["mlp"]["fc2"], gelu(linear(q["mlp"]["fc1"], h)))
        streams[name] = x + gate_m * np.reshape(mlp, (n, length, d))
    return streams["txt"], streams["img"]


def _single_init(rng, cfg, dtype):
    d, r = cfg.width, cfg.mlp_ratio
    p = {"ada": init_linear(rng, d, 3 * d, dtype, zero=True),
         "lin1": init_linear(rng, d, 3 * d + r * d, dtype),  # [qkv | MLP in]
         "lin2": init_linear(rng, d + r * d, d, dtype)}  # [attention out; MLP out]
    if cfg.qk_norm:
        p["norm"] = _norm_init(cfg, dtype)
    return p


def single_block(p, x, c, mask, cfg, probe=None):
    """FLUX's parallel single-stream block over ``x = [text; image]: (N, S+T, D)``, ``mask: (N,
    S)`` the text's key padding: ``x + gate W_2 [attention(h) | GELU(m)]``, ``[qkv | m] = W_1 h``,
    ``h`` the modulated layer norm of ``x`` (Dehghani et al. 2023, sec. 2: parallel layers)."""
    n, length, d = x.shape
    heads, s = cfg.heads, mask.shape[1]
    shift, scale, gate = np.split(linear(p["ada"], silu(c))[:, None, :], 3, axis=2)
    h = np.reshape(modulated_layer_norm(x, shift, scale), (n * length, d))
    # np.split, not slicing: a slice's VJP writes into a zero array of the whole input
    # BEGIN EXERCISE 10.2: the parallel block: qkv and the MLP's input from one matrix, attention
    #   and GELU side by side, one matrix out (Dehghani et al. 2023, sec. 2); notebook 10, sec. 6
    qkv, m = np.split(linear(p["lin1"], h), [3 * d], axis=1)  # (N*L, 3D), (N*L, rD)
    q, k, v = (split_heads(a, n, length, heads) for a in np.split(qkv, 3, axis=1))
    if "norm" in p:
        q, k = rms_norm(q, p["norm"]["q"]), rms_norm(k, p["norm"]["k"])
    txt, img = zip(*(np.split(a, [s], axis=1) for a in (q, k, v)), strict=True)
    o = merge_heads(np.concatenate(joint_attention(txt, img, mask, heads, probe), axis=1), n,
                    length, heads)  # (N*L, D)
    out = linear(p["lin2"], np.concatenate([o, gelu(m)], axis=1))
    # END EXERCISE
    return x + gate * np.reshape(out, (n, length, d))


# ----------------------------------------------------------------------------- the model

def init(rng, config=MMDiTConfig(), dtype=onp.float32):
    cfg, d = config, config.width
    patch_dim = cfg.patch * cfg.patch * cfg.in_channels
    return {"embed": init_linear(rng, patch_dim, d, dtype),
            "context_in": init_linear(rng, cfg.context_dim, d, dtype),
            "time1": init_linear(rng, 256, d, dtype), "time2": init_linear(rng, d, d, dtype),
            "pooled1": init_linear(rng, cfg.pooled_dim, d, dtype),
            "pooled2": init_linear(rng, d, d, dtype),
            "double": [{"txt": _stream_init(rng, cfg, dtype), "img": _stream_init(rng, cfg, dtype)}
                       for _ in range(cfg.double_blocks)],
            "single": [_single_init(rng, cfg, dtype) for _ in range(cfg.single_blocks)],
            "final_ada": init_linear(rng, d, 2 * d, dtype, zero=True),
            "final": init_linear(rng, d, patch_dim, dtype, zero=True)}


def apply(params, x, t, y=None, config=MMDiTConfig(), probe=None):
    """``x: (N, C, H, W)``, ``t: (N,)`` or scalar (the timestep the sinusoidal embedding reads:
    chapter 10 passes ``1000 t``, as SD3 does), ``y`` a caption (``check_text``) -> ``(N, C, H,
    W)``. ``probe``: a list that receives every attention's queries and keys (``attention_logits``
    reads them); it changes nothing else."""
    cfg = config
    n = x.shape[0]
    t = check_images(x, t, cfg)
    ctx, mask, pooled = check_text(y, n, cfg)
    t_emb = linear(params["time2"], silu(linear(params["time1"],
                                                sinusoidal_embedding(t, 256, dtype=x.dtype))))
    c = t_emb + linear(params["pooled2"], silu(linear(params["pooled1"], pooled)))  # (N, D)
    img = linear(params["embed"], patchify(x, cfg.patch))  # (N, T, D)
    img = img + sincos_2d(cfg.width, cfg.resolution // cfg.patch).astype(x.dtype)
    s = ctx.shape[1]
    txt = np.reshape(linear(params["context_in"], np.reshape(ctx, (n * s, cfg.context_dim))),
                     (n, s, cfg.width))  # (N, S, D)
    for blk in params["double"]:
        txt, img = double_block(blk, txt, img, c, mask, cfg, probe)
    if params["single"]:
        both = np.concatenate([txt, img], axis=1)  # (N, S + T, D): one stream from here
        for blk in params["single"]:
            both = single_block(blk, both, c, mask, cfg, probe)
        img = np.split(both, [s], axis=1)[1]
    shift, scale = np.split(linear(params["final_ada"], silu(c))[:, None, :], 2, axis=2)
    out = linear(params["final"], modulated_layer_norm(img, shift, scale))  # (N, T, p*p*C)
    return unpatchify(out, cfg.patch, cfg.in_channels)
