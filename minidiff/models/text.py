"""Chapter 8 — a tiny text encoder trained like CLIP, and the image encoder it is trained against.

Stable Diffusion does not learn what words mean: it borrows a text encoder trained elsewhere and
keeps it frozen (CLIP's, Radford et al. 2021; Imagen freezes T5, Saharia et al. 2022). minidiff
trains its own on caption/digit pairs (``captions.py``) the way CLIP was trained, then freezes it:

- a **word-level tokenizer** over the caption vocabulary: ``<bos> words <eos> <pad>...``;
- a **text transformer**: token + learned position embeddings, ``depth`` pre-norm blocks of
  multi-head self-attention (with a key padding mask) and a GELU MLP, a final layer norm. Its
  token states ``(N, L, D)`` are what the denoiser's cross-attention reads; the state at
  ``<eos>`` is the pooled caption (CLIP pools there too);
- a small **image encoder** (three stride-2 convolutions and a mean over positions);
- both pooled vectors projected to a shared space and L2-normalised; the **symmetric contrastive
  loss** (InfoNCE; Radford et al. 2021, fig. 3's pseudocode) is the mean of the cross-entropies of
  the similarity matrix ``exp(t) I T^T`` over its rows (image -> caption) and its columns (caption
  -> image), where the true pairs sit on the diagonal and ``t`` is a learned log-temperature
  (initialised at ``log(1 / 0.07)`` and clipped at ``log 100``, as CLIP).

Two departures from CLIP's text transformer, both for a 37-word vocabulary on a CPU: its
self-attention is causal (each token sees those before it) where minidiff's is bidirectional (so
``<eos>`` and every other token see the whole caption), and it is 12 layers of width 512 with
byte-pair tokens where minidiff's is 2 layers of width 64 over whole words.

``params = init(rng, config)``; ``encode_text(params, ids, mask, config) -> (states, pooled)``.
"""

import dataclasses
import math

import autograd.numpy as np
import numpy as onp

from ..nn import gelu, init_linear, linear, logsumexp, modulated_layer_norm
from ..nn.attention import attention
from ..nn.conv import conv2d, group_norm_act

SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocabulary: tuple  # the words, after the three special tokens
    max_len: int = 16
    width: int = 64
    depth: int = 2
    heads: int = 4
    embed_dim: int = 64  # the shared caption/image space of the contrastive loss

    def __post_init__(self):
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if self.width % self.heads:
            raise ValueError(f"`width` {self.width} must be divisible by `heads` {self.heads}")

    @property
    def tokens(self):
        return SPECIALS + self.vocabulary

    def to_dict(self):
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- the tokenizer

def split_words(text):
    """``"7, thin and wide"`` -> ``["7", ",", "thin", "and", "wide"]``: lower case, the comma a
    word of its own."""
    return text.lower().replace(",", " , ").split()


def tokenize(texts, config):
    """Caption strings -> ``ids: (N, max_len)`` ints and ``mask: (N, max_len)`` bool (True at
    ``<bos>``, the words and ``<eos>``). A word outside the vocabulary is an error that names it."""
    index = {w: i for i, w in enumerate(config.tokens)}
    ids = onp.zeros((len(texts), config.max_len), dtype=int)
    for n, text in enumerate(texts):
        words = split_words(text)
        unknown = [w for w in words if w not in index or w in SPECIALS]
        if unknown:
            raise ValueError(f"the caption {text!r} has words outside the vocabulary: {unknown} "
                             f"(known: {', '.join(config.vocabulary)})")
        if len(words) + 2 > config.max_len:
            raise ValueError(f"the caption {text!r} has {len(words)} words; at most "
                             f"{config.max_len - 2} fit")
        row = [index["<bos>"]] + [index[w] for w in words] + [index["<eos>"]]
        ids[n, :len(row)] = row
    return ids, ids != index["<pad>"]


# ----------------------------------------------------------------------------- the encoders

def _ln_init(d, dtype):
    return {"shift": onp.zeros(d, dtype), "scale": onp.zeros(d, dtype)}


def _ln(p, x):
    """Layer norm with a learned affine map, ``LN(x) (1 + scale) + shift``."""
    return modulated_layer_norm(x, p["shift"], p["scale"])


def init(rng, config, dtype=onp.float32):
    cfg, d = config, config.width
    blocks = [{"ln1": _ln_init(d, dtype), "qkv": init_linear(rng, d, 3 * d, dtype),
               "proj": init_linear(rng, d, d, dtype), "ln2": _ln_init(d, dtype),
               "fc1": init_linear(rng, d, 4 * d, dtype), "fc2": init_linear(rng, 4 * d, d, dtype)}
              for _ in range(cfg.depth)]

    def conv(c_in, c_out):
        bound = 1.0 / math.sqrt(c_in * 9)
        return {"w": rng.uniform(-bound, bound, (c_out, c_in, 3, 3)).astype(dtype),
                "b": onp.zeros(c_out, dtype)}
    return {"tok_emb": (0.02 * rng.standard_normal((len(cfg.tokens), d))).astype(dtype),
            "pos_emb": (0.01 * rng.standard_normal((cfg.max_len, d))).astype(dtype),
            "blocks": blocks, "ln_final": _ln_init(d, dtype),
            "text_proj": init_linear(rng, d, cfg.embed_dim, dtype),
            "image": [conv(1, 32), conv(32, 64), conv(64, 128)],
            "image_proj": init_linear(rng, 128, cfg.embed_dim, dtype),
            "log_temp": onp.asarray(math.log(1 / 0.07), dtype)}


def _self_attention(p, x, mask, heads):
    n, seq, d = x.shape
    hd = d // heads
    q, k, v = np.split(linear(p["qkv"], np.reshape(x, (n * seq, d))), 3, axis=1)

    def split_heads(z):  # (N*L, D) -> (N*heads, L, hd)
        return np.reshape(np.transpose(np.reshape(z, (n, seq, heads, hd)), (0, 2, 1, 3)),
                          (n * heads, seq, hd))
    o = attention(split_heads(q), split_heads(k), split_heads(v),
                  mask=onp.repeat(mask, heads, axis=0))  # (N*heads, L, hd)
    o = np.reshape(np.transpose(np.reshape(o, (n, heads, seq, hd)), (0, 2, 1, 3)), (n * seq, d))
    return np.reshape(linear(p["proj"], o), (n, seq, d))


def encode_text(params, ids, mask, config):
    """``ids, mask: (N, L)`` -> token states ``(N, L, D)`` and the pooled caption ``(N, D)``
    (the state at ``<eos>``, the last kept token). Padded positions attend to the real tokens
    but no token attends to them."""
    n, seq = ids.shape
    h = params["tok_emb"][ids] + params["pos_emb"][:seq]  # (N, L, D)
    for p in params["blocks"]:
        h = h + _self_attention(p, _ln(p["ln1"], h), mask, config.heads)
        z = np.reshape(_ln(p["ln2"], h), (n * seq, config.width))
        h = h + np.reshape(linear(p["fc2"], gelu(linear(p["fc1"], z))), (n, seq, config.width))
    h = _ln(params["ln_final"], h)
    eos = mask.sum(axis=1) - 1  # (N,)
    return h, h[onp.arange(n), eos]


def encode_image(params, x):
    """``x: (N, 1, 28, 28)`` -> ``(N, 128)``: three stride-2 convolutions (28 -> 14 -> 7 -> 4)
    with GroupNorm and SiLU, then the mean over positions."""
    h = x
    for c in params["image"]:
        h = conv2d(h, c["w"], c["b"], stride=2, padding=1)
        shape = (h.shape[0], h.shape[1])  # (N, C): a norm without a learned affine map
        h = group_norm_act(h, onp.ones(shape, h.dtype), onp.zeros(shape, h.dtype), 8)
    return np.mean(h, axis=(2, 3))


def _unit(z):
    return z / np.sqrt(np.sum(z * z, axis=1, keepdims=True) + 1e-12)


def embeddings(params, x, ids, mask, config):
    """The L2-normalised image and caption embeddings, each ``(N, embed_dim)``."""
    image = _unit(linear(params["image_proj"], encode_image(params, x)))
    caption = _unit(linear(params["text_proj"], encode_text(params, ids, mask, config)[1]))
    return image, caption


def contrastive_loss(image, caption, log_temp):
    """The symmetric InfoNCE loss of paired unit vectors ``image, caption: (N, E)``:
    ``logits = exp(t) image caption^T``; the mean of the cross-entropy of each row against its
    diagonal entry (image -> caption) and of each column (caption -> image)."""
    # BEGIN EXERCISE 8.4: CLIP's symmetric contrastive loss (Radford et al. 2021, fig. 3);
    #   notebook 08, section 2
    logits = np.exp(np.minimum(log_temp, math.log(100.0))) * (image @ caption.T)  # (N, N)
    diagonal = np.sum(image * caption, axis=1) * np.exp(np.minimum(log_temp, math.log(100.0)))
    rows = np.mean(logsumexp(logits, axis=1) - diagonal)  # image -> caption
    cols = np.mean(logsumexp(logits, axis=0) - diagonal)  # caption -> image
    return 0.5 * (rows + cols)
    # END EXERCISE


def loss(params, batch, config):
    """``contrastive_loss`` of a batch ``{"x", "ids", "mask"}`` of digits and their captions."""
    image, caption = embeddings(params, batch["x"], batch["ids"], batch["mask"], config)
    return contrastive_loss(image, caption, params["log_temp"])
