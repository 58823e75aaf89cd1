"""Chapter 8 — the text side of Stable Diffusion: captioned digits and a CLIP-style encoder.

Stable Diffusion borrows its text encoder (CLIP's, Radford et al. 2021) and never trains it.
minidiff has to make its own, so this module trains ``models/text.py`` the way CLIP was trained —
a batch of digits and their captions, the symmetric contrastive loss pulling each digit toward its
own caption and away from the others' — measures it by retrieval on held-out digits, and then
hands its token states, frozen, to the latent model (``latent.py``).

Captions are drawn afresh at every batch (``CaptionedDigits``): a digit is seen with many
phrasings of what it shows, which is the caption set's augmentation.
"""

import functools
import time

import numpy as onp

from . import train
from .models import text


def text_config():
    """The text encoder's architecture over the caption vocabulary (``captions.VOCABULARY``)."""
    from .captions import VOCABULARY

    return text.TextConfig(vocabulary=VOCABULARY)


class CaptionedDigits:
    """Digits with their tertile bins (``captions.bins``), captioned afresh at every draw.

    ``draw(rng, n)`` -> ``(indices, captions, mentioned)``: ``n`` digits drawn uniformly, one new
    caption each (``captions.describe``)."""

    def __init__(self, images, labels, thresholds, p_mention=0.75):
        from .captions import ATTRIBUTES, bins

        self.images, self.labels = onp.asarray(images, onp.float32), onp.asarray(labels)
        self.bins = bins(self.images, self.labels, thresholds)
        self.attributes, self.p_mention = ATTRIBUTES, p_mention

    def draw(self, rng, n):
        from .captions import describe

        idx = rng.integers(0, len(self.labels), size=n)
        out = [describe(int(self.labels[i]), {a: self.bins[a][i] for a in self.attributes}, rng,
                        self.p_mention) for i in idx]
        return idx, [c for c, _ in out], [m for _, m in out]


def clip_batches(data, config, batch_size):
    """``batch_fn(rng)`` of ``text.loss``: digits and their fresh captions, tokenized."""
    def batch_fn(rng):
        idx, caps, _ = data.draw(rng, batch_size)
        ids, mask = text.tokenize(caps, config)
        return {"x": data.images[idx], "ids": ids, "mask": mask}
    return batch_fn


def train_clip(data, steps=2000, batch_size=256, lr=1e-3, seed=0, progress=True):
    """The contrastive text encoder (``models/text.py``) on ``CaptionedDigits``; returns
    ``(ema_params, losses)``."""
    cfg = text_config()
    state = train.init_state(text.init(onp.random.default_rng(seed), cfg), seed)
    loss = functools.partial(text.loss, config=cfg)
    state, losses = train.fit(loss, state, clip_batches(data, cfg, batch_size), steps, lr=lr,
                              warmup=100, cooldown=steps // 5, clip=1.0, ema=0.999,
                              progress=progress, desc="clip")
    return state.ema, losses


def retrieval(params, data, n=1000, seed=0):
    """Retrieval on ``n`` digits of ``data`` with one caption each: ``{"caption_to_digit":
    {"top1", "top5"}, "digit_to_caption": {...}, "semantic_top1", "chance_top1", "n"}``.
    A hit is the caption's own digit ranked first (or in the first five) among the ``n``;
    ``semantic_top1``: the first-ranked digit has the caption's class and every bin it names
    (several digits fit most captions, so this is the fairer score); ``oracle_top1``: the exact
    top-1 of a reader of the named words alone, picking at random among the digits that fit them.
    The encoder can beat it: an unnamed attribute is evidence too (a middle-tertile thickness is
    never called thin or bold, so a caption silent about thickness favours it)."""
    cfg = text_config()
    rng = onp.random.default_rng(seed)
    idx = rng.choice(len(data.labels), size=n, replace=False)
    from .captions import describe

    drawn = [describe(int(data.labels[i]), {a: data.bins[a][i] for a in data.attributes}, rng,
                      data.p_mention) for i in idx]
    caps, wanted = [c for c, _ in drawn], [m for _, m in drawn]
    ids, mask = text.tokenize(list(caps), cfg)
    image, caption = embeddings_in_batches(params, data.images[idx], ids, mask, cfg)
    sim = caption @ image.T  # (captions, digits)

    def top(s, k):
        ranks = onp.argsort(-s, axis=1)[:, :k]
        return float(onp.mean(onp.any(ranks == onp.arange(n)[:, None], axis=1)))
    fits = onp.array([[data.labels[j] == data.labels[idx[i]] and all(
        data.bins[a][j] == b for a, b in wanted[i].items()) for j in idx] for i in range(n)])
    best = onp.argmax(sim, axis=1)
    return {"caption_to_digit": {"top1": top(sim, 1), "top5": top(sim, 5)},
            "digit_to_caption": {"top1": top(sim.T, 1), "top5": top(sim.T, 5)},
            "semantic_top1": float(onp.mean(fits[onp.arange(n), best])),
            "oracle_top1": float(onp.mean(1.0 / fits.sum(axis=1))),
            "chance_top1": 1.0 / n, "n": n}


def embeddings_in_batches(params, x, ids, mask, config, batch_size=500):
    parts = [text.embeddings(params, x[i:i + batch_size], ids[i:i + batch_size],
                             mask[i:i + batch_size], config)
             for i in range(0, len(x), batch_size)]
    return tuple(onp.concatenate([p[k] for p in parts]) for k in (0, 1))


def caption_thresholds():
    """The tertile thresholds of the first 50,000 training digits (``captions``)."""
    from .captions import tertile_thresholds
    from .datasets import mnist

    return tertile_thresholds(*mnist("fit"))


def train_command(out, steps, batch_size, lr, seed, extra):
    """``python -m minidiff train clip``: fit on the first 50,000 training digits; retrieval on
    validation and test digits; the weights record the architecture and the thresholds."""
    from .datasets import mnist
    from .nn import checkpoint

    thresholds = caption_thresholds()
    t0 = time.perf_counter()
    params, losses = train_clip(CaptionedDigits(*mnist("fit"), thresholds), steps, batch_size,
                                lr, seed=seed)
    seconds = time.perf_counter() - t0
    rep = {s: retrieval(params, CaptionedDigits(*mnist(s), thresholds)) for s in
           ("validation", "test")}
    checkpoint.save(out, params, model="clip", config=text_config().to_dict(), seed=seed,
                    steps=steps, batch_size=batch_size, lr=lr, retrieval=rep,
                    thresholds={k: v.tolist() for k, v in thresholds.items()},
                    final_loss=float(losses[-100:].mean()), train_seconds=round(seconds, 1),
                    trained_on="fit (the first 50,000 training digits)", **extra)
    v = rep["validation"]
    return (f"validation caption->digit top-1 {100 * v['caption_to_digit']['top1']:.1f}%, top-5 "
            f"{100 * v['caption_to_digit']['top5']:.1f}%, semantic top-1 "
            f"{100 * v['semantic_top1']:.1f}% (chance {100 * v['chance_top1']:.1f}%)")


def load_text_encoder(path):
    """``(params, config, thresholds)`` of a file written by ``train clip``."""
    from .nn import checkpoint

    params, meta = checkpoint.load_kind(path, "clip", "the text encoder", "train clip")
    cfg = meta["config"]
    return params, text.TextConfig(**cfg), {k: onp.asarray(v) for k, v in
                                            meta["thresholds"].items()}


def encode_captions(params, config, captions, batch_size=500, pooled=False):
    """The frozen text encoder's token states of ``captions``: ``{"context": (N, L, D) float32,
    "mask": (N, L) bool}``, what the denoiser's cross-attention reads (``unet.check_context``);
    with ``pooled``, also ``"pooled": (N, D)``, the state at ``<eos>`` (chapter 10's MMDiT adds it
    to the timestep embedding, as SD3 does with CLIP's pooled output)."""
    ids, mask = text.tokenize(list(captions), config)
    parts = [text.encode_text(params, ids[i:i + batch_size], mask[i:i + batch_size], config)
             for i in range(0, len(ids), batch_size)]
    out = {"context": onp.concatenate([p[0] for p in parts]).astype(onp.float32), "mask": mask}
    if pooled:
        out["pooled"] = onp.concatenate([p[1] for p in parts]).astype(onp.float32)
    return out


