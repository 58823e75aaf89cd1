"""Chapter 6 — a tiny ADM-style U-Net: the convolutional score network.

The U-Net of Ronneberger et al. (2015) — a contracting path, an expanding path, and skip
connections that concatenate encoder features into the decoder — outputs a tensor the shape of
its input, so it fits a per-pixel noise (or score) prediction. Dhariwal & Nichol (2021, "ADM",
sec. 3) ablated it for diffusion; each of their changes is a switch in ``UNetConfig``:

| ADM change (their table 1)                       | switch                              |
|--------------------------------------------------|-------------------------------------|
| more depth vs width                              | ``num_res_blocks``, ``channels``    |
| multi-head attention at several resolutions      | ``attention_levels``, ``head_channels`` |
| BigGAN residual blocks for up/down-sampling      | ``resblock_updown``                 |
| residual connections rescaled by 1/sqrt(2)       | ``rescale_skip``                    |
| adaptive group norm (AdaGN) for the embedding    | ``adagn``                           |

The timestep enters as a sinusoidal embedding, an MLP, and — with AdaGN — a per-channel
``(scale, shift)`` in every residual block; a class label adds a learned embedding (index
``num_classes`` is the null label used by classifier-free guidance, chapter 7). The final
convolution is zero-initialised, so an untrained network outputs exactly zero.

**Text (chapter 8).** With ``context_dim`` set, every attention block becomes Stable Diffusion's
transformer block (Rombach et al. 2022, sec. 3.3 and their ``SpatialTransformer``): GroupNorm, a
linear map into tokens, then self-attention, *cross-attention* and an MLP, each pre-norm and
residual, and a zero-initialised linear map back. Cross-attention takes its queries from the
image tokens and its keys and values from the frozen text encoder's token states (their eq. (3),
``softmax(Q K^T / sqrt(d)) V`` with ``Q = W_Q phi(z_t)``, ``K = W_K tau(y)``, ``V = W_V tau(y)``),
with the caption's padding masked. ``y`` is then ``{"context": (N, S, context_dim), "mask":
(N, S) bool}``. Stable Diffusion 1.x has no class embedding: ``num_classes=None``. Two small
departures from its block: the MLP is GELU where SD's is GEGLU (a gated GELU, twice the first
layer's width), and the attention projections have biases where SD's have none.

The resolution need not be a power of two: a stride-2 convolution takes 7 x 7 to 4 x 4, and the
decoder's nearest up-sampling (to 8 x 8) is cropped back to its skip connection's size.

Chapter 12's latent consistency model takes the guidance scale ``w`` as an input
(``guidance_embedding=True``; Luo et al. 2023, sec. 4.2): ``1000 w`` gets the time's sinusoidal
embedding, a zero-initialised linear map, and is added to the time's sinusoids before the time
MLP, so a student built from a teacher's weights starts out as the teacher.

``params = init(rng, config)``; ``apply(params, x, t, y, config) -> (N, C, H, W)``.
"""

import dataclasses
import math

import autograd.numpy as np
import numpy as onp

from ..nn import gelu, init_linear, linear, modulated_layer_norm, silu, sinusoidal_embedding
from ..nn.attention import attention, merge_heads, split_heads
from ..nn.conv import avg_pool2, conv2d, group_norm_act, upsample_nearest
from . import check_images, labels_or_null


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The architecture. The defaults are the shipped MNIST model (1.2M parameters); flip the
    switches to reproduce ADM's table (``resblock_updown=True`` is ADM's choice, off by default
    here because on a 2-core CPU it costs 30% more time per step)."""

    in_channels: int = 1
    resolution: int = 28
    channels: tuple = (32, 64, 64)  # per level: 28, 14, 7
    num_res_blocks: int = 1
    attention_levels: tuple = (2,)  # attend at 7 x 7
    head_channels: int = 32
    groups: int = 8
    num_classes: int | None = 10  # None: unconditional
    resblock_updown: bool = False
    rescale_skip: bool = True
    adagn: bool = True
    context_dim: int | None = None  # chapter 8: cross-attention to text token states
    guidance_embedding: bool = False  # chapter 12: the guidance scale as an input (LCM)

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        levels = len(self.channels)
        if levels < 1 or any(c <= 0 for c in self.channels):
            raise ValueError(f"`channels` must be a non-empty tuple of positive ints "
                             f"(got {self.channels})")
        for c in self.channels:
            if c % self.groups:
                raise ValueError(f"every entry of `channels` must be divisible by `groups` = "
                                 f"{self.groups} (got {c}): GroupNorm splits channels evenly")
        if self.resblock_updown and self.resolution % 2 ** (levels - 1):
            raise ValueError(f"with `resblock_updown`, `resolution` {self.resolution} must be "
                             f"divisible by 2^(levels - 1) = {2 ** (levels - 1)}: its average "
                             "pooling halves every size exactly")
        for lv in self.attention_levels:
            if not 0 <= lv < levels:
                raise ValueError(f"attention level {lv} is not one of the {levels} levels")
            if self.channels[lv] % self.head_channels:
                raise ValueError(f"attention channels {self.channels[lv]} at level {lv} must "
                                 f"be divisible by `head_channels` = {self.head_channels}")
        if self.num_res_blocks < 1:
            raise ValueError(f"`num_res_blocks` must be >= 1 (got {self.num_res_blocks})")

    @property
    def emb_dim(self):
        return 4 * self.channels[0]

    def to_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- layers

def _conv_init(rng, c_in, c_out, k, dtype, zero=False):
    bound = 1.0 / math.sqrt(c_in * k * k)  # PyTorch's Conv2d default range
    w = onp.zeros((c_out, c_in, k, k), dtype) if zero else \
        rng.uniform(-bound, bound, (c_out, c_in, k, k)).astype(dtype)
    return {"w": w, "b": onp.zeros(c_out, dtype)}


def _norm_init(c, dtype):
    return {"gamma": onp.ones(c, dtype), "beta": onp.zeros(c, dtype)}


def _norm_act(p, h, groups, act=True):
    n = h.shape[0]
    a = p["gamma"] * np.ones((n, 1), dtype=h.dtype)  # (N, C)
    b = p["beta"] * np.ones((n, 1), dtype=h.dtype)
    return group_norm_act(h, a, b, groups, 1e-5, act)


def _res_init(rng, c_in, c_out, emb_dim, cfg, dtype):
    p = {"norm1": _norm_init(c_in, dtype), "conv1": _conv_init(rng, c_in, c_out, 3, dtype),
         "emb": init_linear(rng, emb_dim, 2 * c_out if cfg.adagn else c_out, dtype),
         "norm2": _norm_init(c_out, dtype),
         "conv2": _conv_init(rng, c_out, c_out, 3, dtype, zero=True)}
    if c_in != c_out:
        p["skip"] = _conv_init(rng, c_in, c_out, 1, dtype)
    return p


def _res_block(p, x, emb, cfg, resample=None):
    """ADM's ResBlock: ``h = conv(act(norm(x)))``, the embedding through AdaGN (or added),
    ``h = conv(act(norm(h)))`` (zero-initialised), ``out = skip(x) + h``, optionally / sqrt 2.
    ``resample`` = "up"/"down" makes it a BigGAN-style up/down-sampling block."""
    h = _norm_act(p["norm1"], x, cfg.groups)
    if resample == "up":
        h, x = upsample_nearest(h), upsample_nearest(x)
    elif resample == "down":
        h, x = avg_pool2(h), avg_pool2(x)
    h = conv2d(h, p["conv1"]["w"], p["conv1"]["b"], padding=1)
    e = linear(p["emb"], emb)  # emb already went through SiLU
    if cfg.adagn:
        scale, shift = np.split(e, 2, axis=1)  # (N, C) each
        a = p["norm2"]["gamma"] * (1.0 + scale)
        b = p["norm2"]["beta"] * (1.0 + scale) + shift
        h = group_norm_act(h, a, b, cfg.groups, 1e-5, True)
    else:
        h = _norm_act(p["norm2"], h + e[:, :, None, None], cfg.groups)
    h = conv2d(h, p["conv2"]["w"], p["conv2"]["b"], padding=1)
    skip = conv2d(x, p["skip"]["w"], p["skip"]["b"]) if "skip" in p else x
    out = skip + h
    return out * (1.0 / math.sqrt(2.0)) if cfg.rescale_skip else out


def _attn_init(rng, c, dtype):
    return {"norm": _norm_init(c, dtype), "qkv": init_linear(rng, c, 3 * c, dtype),
            "proj": init_linear(rng, c, c, dtype, zero=True)}


def _attn_block(p, x, cfg):
    """Multi-head self-attention over the ``H W`` positions, residual, zero-initialised output."""
    n, c, hgt, wid = x.shape
    heads, d = c // cfg.head_channels, cfg.head_channels
    h = _norm_act(p["norm"], x, cfg.groups, act=False)
    tokens = np.reshape(np.transpose(h, (0, 2, 3, 1)), (n * hgt * wid, c))  # (N*L, C): 2-D GEMM
    q, k, v = np.split(linear(p["qkv"], tokens), 3, axis=1)  # (N*L, C) each

    def heads_first(z):  # (N*L, C) -> (N*heads, L, d)
        return np.reshape(np.transpose(np.reshape(z, (n, hgt * wid, heads, d)), (0, 2, 1, 3)),
                          (n * heads, hgt * wid, d))

    o = attention(heads_first(q), heads_first(k), heads_first(v))  # (N*heads, L, d)
    o = np.reshape(np.transpose(np.reshape(o, (n, heads, hgt * wid, d)), (0, 2, 1, 3)),
                   (n * hgt * wid, c))
    o = linear(p["proj"], o)  # (N*L, C)
    return x + np.transpose(np.reshape(o, (n, hgt, wid, c)), (0, 3, 1, 2))


def _ln_init(c, dtype):
    return {"shift": onp.zeros(c, dtype), "scale": onp.zeros(c, dtype)}


def _transformer_init(rng, c, context_dim, dtype):
    return {"norm": _norm_init(c, dtype), "proj_in": init_linear(rng, c, c, dtype),
            "ln1": _ln_init(c, dtype), "qkv": init_linear(rng, c, 3 * c, dtype),
            "proj1": init_linear(rng, c, c, dtype),
            "ln2": _ln_init(c, dtype), "q": init_linear(rng, c, c, dtype),
            "kv": init_linear(rng, context_dim, 2 * c, dtype),
            "proj2": init_linear(rng, c, c, dtype),
            "ln3": _ln_init(c, dtype), "fc1": init_linear(rng, c, 4 * c, dtype),
            "fc2": init_linear(rng, 4 * c, c, dtype),
            "proj_out": init_linear(rng, c, c, dtype, zero=True)}


def cross_attention(p, tokens, context, mask, heads):
    """Queries from ``tokens: (N, L, C)``, keys and values from ``context: (N, S, Dc)`` with the
    key padding ``mask: (N, S)`` (Rombach et al. 2022, eq. (3)) -> ``(N, L, C)``, before the
    output projection. An all-False mask (an empty context) gives zeros."""
    n, length, c = tokens.shape
    s = context.shape[1]
    # BEGIN EXERCISE 8.1: cross-attention: queries from the image, keys and values from the text
    #   (Rombach et al. 2022, eq. (3)); notebook 08, section 4
    q = linear(p["q"], np.reshape(tokens, (n * length, c)))  # (N*L, C)
    k, v = np.split(linear(p["kv"], np.reshape(context, (n * s, context.shape[2]))), 2, axis=1)
    o = attention(split_heads(q, n, length, heads), split_heads(k, n, s, heads),
                  split_heads(v, n, s, heads),
                  mask=onp.repeat(mask, heads, axis=0))  # (N*heads, L, C/heads)
    # END EXERCISE
    return np.reshape(merge_heads(o, n, length, heads), (n, length, c))


def _transformer_block(p, x, context, mask, cfg):
    """Stable Diffusion's spatial transformer: ``x + proj_out(T(proj_in(GN(x))))`` where ``T`` is
    self-attention, cross-attention to ``context`` and an MLP, each ``h + f(LN(h))``."""
    n, c, hgt, wid = x.shape
    length, heads = hgt * wid, c // cfg.head_channels
    h = _norm_act(p["norm"], x, cfg.groups, act=False)
    h = np.reshape(linear(p["proj_in"], np.reshape(np.transpose(h, (0, 2, 3, 1)),
                                                   (n * length, c))), (n, length, c))

    def ln(q, z):
        return modulated_layer_norm(z, q["shift"], q["scale"])
    z = np.reshape(ln(p["ln1"], h), (n * length, c))
    qh, kh, vh = (split_heads(a, n, length, heads)
                  for a in np.split(linear(p["qkv"], z), 3, axis=1))
    h = h + np.reshape(linear(p["proj1"], merge_heads(attention(qh, kh, vh), n, length, heads)),
                       (n, length, c))
    o = cross_attention(p, ln(p["ln2"], h), context, mask, heads)
    h = h + np.reshape(linear(p["proj2"], np.reshape(o, (n * length, c))), (n, length, c))
    z = np.reshape(ln(p["ln3"], h), (n * length, c))
    h = h + np.reshape(linear(p["fc2"], gelu(linear(p["fc1"], z))), (n, length, c))
    out = linear(p["proj_out"], np.reshape(h, (n * length, c)))  # (N*L, C)
    return x + np.transpose(np.reshape(out, (n, hgt, wid, c)), (0, 3, 1, 2))


def split_guidance(y, n):
    """``(condition, w)`` of a model with ``guidance_embedding``: ``y`` is the condition with
    the guidance scale per sample riding along, ``{"guidance": (N,), **context}`` for a text
    model or ``{"guidance": (N,), "labels": (N,)}`` for a class model."""
    if not isinstance(y, dict) or "guidance" not in y:
        raise ValueError("`y` must be a dict with a 'guidance' entry (one scale per sample) for "
                         f"a model with `guidance_embedding` (got {type(y).__name__})")
    w = onp.broadcast_to(onp.asarray(y["guidance"], onp.float64), (n,))
    if not onp.all(onp.isfinite(w)):
        raise ValueError(f"`y['guidance']` must be finite (got {w})")
    rest = {k: v for k, v in y.items() if k != "guidance"}
    return (rest.get("labels") if set(rest) <= {"labels"} else rest), w


def check_context(y, n, context_dim):
    """A text context ``{"context": (n, S, context_dim), "mask": (n, S) bool}``; ``None`` is the
    empty context (one masked position: cross-attention contributes nothing)."""
    if y is None:
        return onp.zeros((n, 1, context_dim), onp.float32), onp.zeros((n, 1), bool)
    ok = isinstance(y, dict) and set(y) == {"context", "mask"}
    if ok:
        ctx, mask = y["context"], onp.asarray(y["mask"])
        ok = (np.ndim(ctx) == 3 and ctx.shape[0] == n and ctx.shape[2] == context_dim
              and mask.dtype == bool and mask.shape == ctx.shape[:2])
    if not ok:
        raise ValueError(f"`y` must be a text context {{'context': (N={n}, S, {context_dim}), "
                         f"'mask': (N, S) bool}} for a model with `context_dim` = {context_dim} "
                         f"(got {type(y).__name__})")
    return ctx, mask


# ----------------------------------------------------------------------------- the U-Net

def _attention_init(rng, c, cfg, dtype):
    return _attn_init(rng, c, dtype) if cfg.context_dim is None else \
        _transformer_init(rng, c, cfg.context_dim, dtype)


def init(rng, config=UNetConfig(), dtype=onp.float32):
    cfg, ch0, emb = config, config.channels[0], config.emb_dim
    p = {"time1": init_linear(rng, ch0, emb, dtype), "time2": init_linear(rng, emb, emb, dtype),
         "conv_in": _conv_init(rng, cfg.in_channels, ch0, 3, dtype), "down": [], "up": []}
    if cfg.num_classes is not None:
        # N(0, 1), as ADM's nn.Embedding: a class signal as strong as the time signal from the
        # first step (a 0.02-scale start left the first shipped run weakly conditioned).
        p["class_emb"] = rng.standard_normal((cfg.num_classes + 1, emb)).astype(dtype)
    if cfg.guidance_embedding:  # zero: a student built from a teacher starts as the teacher
        p["guidance_emb"] = init_linear(rng, ch0, ch0, dtype, zero=True)
    skips, c = [ch0], ch0
    last = len(cfg.channels) - 1
    for lv, c_out in enumerate(cfg.channels):
        for _ in range(cfg.num_res_blocks):
            blk = {"res": _res_init(rng, c, c_out, emb, cfg, dtype)}
            c = c_out
            if lv in cfg.attention_levels:
                blk["attn"] = _attention_init(rng, c, cfg, dtype)
            p["down"].append(blk)
            skips.append(c)
        if lv != last:
            p["down"].append({"downsample": _res_init(rng, c, c, emb, cfg, dtype)
                              if cfg.resblock_updown else _conv_init(rng, c, c, 3, dtype)})
            skips.append(c)
    p["mid"] = {"res1": _res_init(rng, c, c, emb, cfg, dtype),
                "attn": _attention_init(rng, c, cfg, dtype),
                "res2": _res_init(rng, c, c, emb, cfg, dtype)}
    for lv in reversed(range(len(cfg.channels))):
        c_out = cfg.channels[lv]
        for i in range(cfg.num_res_blocks + 1):
            blk = {"res": _res_init(rng, c + skips.pop(), c_out, emb, cfg, dtype)}
            c = c_out
            if lv in cfg.attention_levels:
                blk["attn"] = _attention_init(rng, c, cfg, dtype)
            if lv != 0 and i == cfg.num_res_blocks:
                blk["upsample"] = _res_init(rng, c, c, emb, cfg, dtype) if cfg.resblock_updown \
                    else _conv_init(rng, c, c, 3, dtype)
            p["up"].append(blk)
    p["norm_out"] = _norm_init(c, dtype)
    p["conv_out"] = _conv_init(rng, c, cfg.in_channels, 3, dtype, zero=True)
    return p


def apply(params, x, t, y=None, config=UNetConfig()):
    """``x: (N, C, H, W)``, ``t: (N,)`` (or a scalar; the DDPM step index or any real time),
    ``y: (N,)`` int labels in ``0 .. num_classes`` (``num_classes`` = the null label; ``None``
    means all null), or with ``context_dim`` a text context (``check_context``; ``None`` = empty);
    with ``guidance_embedding`` the guidance scale rides along in ``y`` (``split_guidance``)
    -> ``(N, C, H, W)``."""
    cfg = config
    n = x.shape[0]
    t = check_images(x, t, cfg)
    emb = sinusoidal_embedding(t, cfg.channels[0], dtype=x.dtype)
    if cfg.guidance_embedding:  # Luo et al. 2023: embed 1000 w like a time, add before the MLP
        y, w = split_guidance(y, n)
        emb = emb + linear(params["guidance_emb"], sinusoidal_embedding(
            1000.0 * w, cfg.channels[0], dtype=x.dtype))
    emb = linear(params["time2"], silu(linear(params["time1"], emb)))  # (N, emb)
    if cfg.context_dim is not None:
        context, mask = check_context(y, n, cfg.context_dim)
        context = context.astype(x.dtype) if isinstance(context, onp.ndarray) else context
    elif cfg.num_classes is not None:
        y = labels_or_null(y, n, cfg.num_classes)
        emb = emb + params["class_emb"][y]
    emb = silu(emb)  # every block's embedding projection starts with SiLU (ADM)

    def attend(p, h):
        return _attn_block(p, h, cfg) if cfg.context_dim is None else \
            _transformer_block(p, h, context, mask, cfg)

    h = conv2d(x, params["conv_in"]["w"], params["conv_in"]["b"], padding=1)
    hs = [h]
    for blk in params["down"]:
        if "downsample" in blk:
            d = blk["downsample"]
            h = _res_block(d, h, emb, cfg, "down") if cfg.resblock_updown else \
                conv2d(h, d["w"], d["b"], stride=2, padding=1)
        else:
            h = _res_block(blk["res"], h, emb, cfg)
            if "attn" in blk:
                h = attend(blk["attn"], h)
        hs.append(h)
    h = _res_block(params["mid"]["res1"], h, emb, cfg)
    h = attend(params["mid"]["attn"], h)
    h = _res_block(params["mid"]["res2"], h, emb, cfg)
    for blk in params["up"]:
        skip = hs.pop()
        if h.shape[2] != skip.shape[2]:  # an odd size was rounded up going down (7 -> 4 -> 8)
            h = h[:, :, :skip.shape[2], :skip.shape[3]]
        h = np.concatenate([h, skip], axis=1)  # skip connection by concatenation
        h = _res_block(blk["res"], h, emb, cfg)
        if "attn" in blk:
            h = attend(blk["attn"], h)
        if "upsample" in blk:
            u = blk["upsample"]
            h = _res_block(u, h, emb, cfg, "up") if cfg.resblock_updown else \
                conv2d(upsample_nearest(h), u["w"], u["b"], padding=1)
    h = _norm_act(params["norm_out"], h, cfg.groups)
    return conv2d(h, params["conv_out"]["w"], params["conv_out"]["b"], padding=1)


