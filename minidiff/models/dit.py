"""Chapter 9 — a tiny Diffusion Transformer (DiT; Peebles & Xie 2023).

DiT drops the U-Net: the image is cut into ``p x p`` patches, each patch becomes a token
(``T = (H/p)(W/p)`` tokens), a plain transformer processes the sequence, and a linear layer turns
every token back into a patch of the prediction. Halving ``p`` quadruples ``T`` and roughly
quadruples the compute: the paper's scaling axis.

Conditioning (their sec. 3.2, fig. 3), a switch here:

- ``"adaln_zero"``: the summed timestep + class embedding ``c`` regresses, per block, a shift,
  a scale and a gate for each of the attention and MLP branches; the regression is
  zero-initialised, so every gate is 0 and every block starts as the identity map;
- ``"cross_attention"``: the tokens attend to the two-token sequence ``[t_emb, y_emb]``;
- ``"in_context"``: ``t_emb`` and ``y_emb`` are appended to the sequence as two extra tokens.

**Text (chapter 8)**, PixArt-alpha's placement (Chen et al. 2024, sec. 2.3 and fig. 4): with
``context_dim`` set, every adaLN-Zero block gets a cross-attention layer between its self-attention
and its MLP, queries from the image tokens, keys and values from the text encoder's token states
(``unet.cross_attention``, the same layer as Stable Diffusion's), added to the residual stream
without a norm or a gate, as PixArt's code does; its output projection is zero-initialised so the
block still starts as the identity. ``y`` is then a text context (``unet.check_context``).
PixArt also shares one adaLN regression across blocks ("adaLN-single"); minidiff keeps DiT's
per-block one.

Layer norms have no affine parameters (the modulation plays that role); the final layer is an
adaptive norm plus a zero-initialised linear, so the untrained model outputs zeros. GELU and the
modulated layer norm are fused primitives of ``minidiff.nn`` (their VJPs are written out there).
``params = init(rng, config)``; ``apply(params, x, t, y, config) -> (N, C, H, W)``.
"""

import dataclasses
import math

import autograd.numpy as np
import numpy as onp

from ..nn import gelu, init_linear, linear, modulated_layer_norm, silu, sinusoidal_embedding
from ..nn.attention import attention
from . import check_images, labels_or_null
from .unet import check_context, cross_attention

CONDITIONINGS = ("adaln_zero", "cross_attention", "in_context")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 1
    resolution: int = 28
    patch: int = 4
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    num_classes: int | None = 10
    conditioning: str = "adaln_zero"
    use_pos_embed: bool = True
    context_dim: int | None = None  # chapter 8: PixArt-alpha's cross-attention to text


    def __post_init__(self):
        if self.resolution % self.patch:
            raise ValueError(f"`resolution` {self.resolution} must be divisible by `patch` "
                             f"{self.patch}")
        if self.width % self.heads:
            raise ValueError(f"`width` {self.width} must be divisible by `heads` {self.heads}")
        if (self.width // 2) % 2:
            raise ValueError(f"`width` {self.width} must be divisible by 4 (2D sin-cos "
                             "position embedding)")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"`conditioning` must be one of {CONDITIONINGS} "
                             f"(got {self.conditioning!r})")
        if self.context_dim is not None and self.conditioning != "adaln_zero":
            raise ValueError("text cross-attention (`context_dim`) goes into adaLN-Zero blocks, "
                             f"as PixArt-alpha's (got conditioning={self.conditioning!r})")

    @property
    def tokens(self):
        return (self.resolution // self.patch) ** 2

    def to_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- patches

def patchify(x, p):
    """``(N, C, H, W) -> (N, T, p*p*C)``, tokens in row-major order of the patch grid."""
    n, c, h, w = x.shape
    # BEGIN EXERCISE 9.1: patchify: an image into a sequence of patch tokens (Dosovitskiy et al.
    #   2021; Peebles & Xie 2023, sec. 3.2); notebook 09, section 1
    x = np.reshape(x, (n, c, h // p, p, w // p, p))
    x = np.transpose(x, (0, 2, 4, 3, 5, 1))  # (N, H/p, W/p, p, p, C)
    return np.reshape(x, (n, (h // p) * (w // p), p * p * c))
    # END EXERCISE


def unpatchify(tokens, p, c):
    """``(N, T, p*p*C) -> (N, C, H, W)``: the inverse of ``patchify`` (square images)."""
    n, t, _ = tokens.shape
    # BEGIN EXERCISE 9.2: unpatchify: tokens back into an image; notebook 09, section 1
    g = int(round(math.sqrt(t)))
    x = np.reshape(tokens, (n, g, g, p, p, c))
    x = np.transpose(x, (0, 5, 1, 3, 2, 4))  # (N, C, H/p, p, W/p, p)
    return np.reshape(x, (n, c, g * p, g * p))
    # END EXERCISE


def sincos_2d(width, grid):
    """Fixed 2D sine-cosine position embedding ``(grid², width)``: half the channels encode the
    row, half the column, each with the 1D transformer encoding (as in DiT's code, after MAE)."""
    def one_d(pos, dim):
        omega = 1.0 / 10000 ** (onp.arange(dim // 2) / (dim / 2.0))  # (dim/2,)
        angles = pos[:, None] * omega[None]
        return onp.concatenate([onp.sin(angles), onp.cos(angles)], axis=1)
    # BEGIN EXERCISE 9.3: the fixed 2D sine-cosine position embedding (Vaswani et al. 2017, sec.
    #   3.5, per axis); notebook 09, section 2
    rows, cols = onp.meshgrid(onp.arange(grid), onp.arange(grid), indexing="ij")
    return onp.concatenate([one_d(rows.ravel().astype(float), width // 2),
                            one_d(cols.ravel().astype(float), width // 2)], axis=1)
    # END EXERCISE


# ----------------------------------------------------------------------------- layers

def layer_norm(x, eps=1e-6):
    """Layer norm over the last axis, no affine parameters (DiT's ``elementwise_affine=False``);
    the fused ``nn.modulated_layer_norm`` with zero shift and scale."""
    return modulated_layer_norm(x, 0.0, 0.0, eps)


def _attend(p, x, ctx, heads):
    """Multi-head attention of tokens ``x: (N, L, D)`` to ``ctx: (N, S, D)`` (self if ``ctx is
    x``); every projection on a flattened 2-D batch."""
    n, seq, d = x.shape
    s = ctx.shape[1]
    hd = d // heads
    if ctx is x:
        q, k, v = np.split(linear(p["qkv"], np.reshape(x, (n * seq, d))), 3, axis=1)
    else:
        q = linear(p["q"], np.reshape(x, (n * seq, d)))
        k, v = np.split(linear(p["kv"], np.reshape(ctx, (n * s, d))), 2, axis=1)

    def split_heads(z, length):  # (N*len, D) -> (N*heads, len, hd)
        return np.reshape(np.transpose(np.reshape(z, (n, length, heads, hd)), (0, 2, 1, 3)),
                          (n * heads, length, hd))

    o = attention(split_heads(q, seq), split_heads(k, s), split_heads(v, s))
    o = np.reshape(np.transpose(np.reshape(o, (n, heads, seq, hd)), (0, 2, 1, 3)), (n * seq, d))
    return np.reshape(linear(p["proj"], o), (n, seq, d))


def _mlp(p, x):
    n, seq, d = x.shape
    h = gelu(linear(p["fc1"], np.reshape(x, (n * seq, d))))
    return np.reshape(linear(p["fc2"], h), (n, seq, d))


def _block_init(rng, cfg, dtype):
    d = cfg.width
    p = {"attn": {"qkv": init_linear(rng, d, 3 * d, dtype), "proj": init_linear(rng, d, d, dtype)},
         "mlp": {"fc1": init_linear(rng, d, cfg.mlp_ratio * d, dtype),
                 "fc2": init_linear(rng, cfg.mlp_ratio * d, d, dtype)}}
    if cfg.conditioning == "adaln_zero":
        p["ada"] = init_linear(rng, d, 6 * d, dtype, zero=True)  # adaLN-Zero: gates start at 0
    if cfg.context_dim is not None:
        p["text"] = {"q": init_linear(rng, d, d, dtype),
                     "kv": init_linear(rng, cfg.context_dim, 2 * d, dtype),
                     "proj": init_linear(rng, d, d, dtype, zero=True)}
    if cfg.conditioning == "cross_attention":
        p["cross"] = {"q": init_linear(rng, d, d, dtype), "kv": init_linear(rng, d, 2 * d, dtype),
                      "proj": init_linear(rng, d, d, dtype, zero=True)}
    return p


def _block(p, x, c, cond_tokens, cfg, text=None):
    """One DiT block. adaLN-Zero (Peebles & Xie 2023, sec. 3.2):
    ``x = x + gate_a * attn(LN(x) (1 + scale_a) + shift_a)``, the same for the MLP; with a text
    ``(context, mask)``, PixArt-alpha's ``x = x + cross_attn(x, text)`` between the two."""
    if cfg.conditioning == "adaln_zero":
        mods = np.split(linear(p["ada"], silu(c))[:, None, :], 6, axis=2)  # 6 x (N, 1, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a * _self(p["attn"], modulated_layer_norm(x, shift_a, scale_a), cfg.heads)
        if text is not None:
            n, seq, d = x.shape
            o = cross_attention(p["text"], x, text[0], text[1], cfg.heads)  # (N, T, D)
            x = x + np.reshape(linear(p["text"]["proj"], np.reshape(o, (n * seq, d))),
                               (n, seq, d))
        return x + gate_m * _mlp(p["mlp"], modulated_layer_norm(x, shift_m, scale_m))
    x = x + _self(p["attn"], layer_norm(x), cfg.heads)
    if cfg.conditioning == "cross_attention":
        x = x + _attend(p["cross"], layer_norm(x), cond_tokens, cfg.heads)
    return x + _mlp(p["mlp"], layer_norm(x))


def _self(p, x, heads):
    return _attend(p, x, x, heads)


# ----------------------------------------------------------------------------- the DiT

def init(rng, config=DiTConfig(), dtype=onp.float32):
    cfg, d = config, config.width
    patch_dim = cfg.patch * cfg.patch * cfg.in_channels
    p = {"embed": init_linear(rng, patch_dim, d, dtype),
         "time1": init_linear(rng, 256, d, dtype), "time2": init_linear(rng, d, d, dtype),
         "blocks": [_block_init(rng, cfg, dtype) for _ in range(cfg.depth)],
         "final_ada": init_linear(rng, d, 2 * d, dtype, zero=True),
         "final": init_linear(rng, d, patch_dim, dtype, zero=True)}
    if cfg.num_classes is not None:
        # N(0, 1) rows (PyTorch's nn.Embedding default, as the chapter 6 U-Net): DiT's code starts
        # them at std 0.02, which in a short CPU run leaves the model weakly class-conditioned.
        p["class_emb"] = rng.standard_normal((cfg.num_classes + 1, d)).astype(dtype)
    return p


def apply(params, x, t, y=None, config=DiTConfig()):
    """``x: (N, C, H, W)``, ``t: (N,)`` or scalar, ``y: (N,)`` labels (``num_classes`` = null;
    ``None``: all null), or with ``context_dim`` a text context -> ``(N, C, H, W)``."""
    cfg = config
    n = x.shape[0]
    t = check_images(x, t, cfg)
    t_emb = linear(params["time2"], silu(linear(params["time1"],
                                                sinusoidal_embedding(t, 256, dtype=x.dtype))))
    text = None
    if cfg.context_dim is not None:
        text = check_context(y, n, cfg.context_dim)
        y_emb = 0.0 * t_emb
    elif cfg.num_classes is not None:
        y = labels_or_null(y, n, cfg.num_classes)
        y_emb = params["class_emb"][y]
    else:
        y_emb = 0.0 * t_emb
    c = t_emb + y_emb  # (N, D): the conditioning vector
    tokens = linear(params["embed"], patchify(x, cfg.patch))  # (N, T, D)
    if cfg.use_pos_embed:
        grid = cfg.resolution // cfg.patch
        tokens = tokens + sincos_2d(cfg.width, grid).astype(x.dtype)
    cond_tokens = np.stack([t_emb, y_emb], axis=1)  # (N, 2, D)
    if cfg.conditioning == "in_context":
        tokens = np.concatenate([tokens, cond_tokens], axis=1)  # two extra tokens
    for blk in params["blocks"]:
        tokens = _block(blk, tokens, c, cond_tokens, cfg, text)
    if cfg.conditioning == "in_context":
        tokens = tokens[:, :cfg.tokens]
    shift, scale = np.split(linear(params["final_ada"], silu(c))[:, None, :], 2, axis=2)
    out = linear(params["final"], modulated_layer_norm(tokens, shift, scale))  # (N, T, p*p*C)
    return unpatchify(out, cfg.patch, cfg.in_channels)


def gflops(config=DiTConfig()):
    """Forward multiply-adds per image, in billions (the DiT paper's "Gflops" count multiply-adds,
    as fvcore does). With ``T`` tokens, width ``D``, depth ``L``, patch dim ``P = p² C``, MLP
    ratio ``r`` and ``S`` extra context tokens:

        embed T P D + time (256 D + D²) + final (2 D² + T D P)
        per block: qkv 3 T D² + scores T² D + values T² D + proj T D² + MLP 2 r T D²
                   + adaLN 6 D²  |  cross-attention T D² + 2 S D² + 2 T S D + T D²

    For in-context conditioning ``T`` includes the two extra tokens inside the blocks."""
    cfg = config
    d, p_dim, r = cfg.width, cfg.patch**2 * cfg.in_channels, cfg.mlp_ratio
    t = cfg.tokens
    tb = t + 2 if cfg.conditioning == "in_context" else t
    block = 3 * tb * d * d + 2 * tb * tb * d + tb * d * d + 2 * r * tb * d * d
    if cfg.conditioning == "adaln_zero":
        block += 6 * d * d
    if cfg.conditioning == "cross_attention":
        block += tb * d * d + 2 * 2 * d * d + 2 * tb * 2 * d + tb * d * d
    macs = t * p_dim * d + 256 * d + d * d + 2 * d * d + t * d * p_dim + cfg.depth * block
    return macs / 1e9
