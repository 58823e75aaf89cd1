"""Adam, parameter EMA, learning-rate warm-up and gradient clipping, all over parameter pytrees.

Written leaf by leaf with ``tree_map`` rather than through autograd's flattening optimisers, so the
optimiser state is a tree a checkpoint can store, and so float32 parameters stay float32 (every
hyper-parameter enters as a Python float).
"""

import math

import numpy as onp

from .tree import tree_leaves, tree_map


def adam_init(params):
    """Adam's state: first and second moment trees of zeros and the step count."""
    zeros = lambda p: onp.zeros_like(p)
    return {"m": tree_map(zeros, params), "v": tree_map(zeros, params), "count": onp.array(0)}


def adam_update(grads, state, params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step (Kingma & Ba 2015, Algorithm 1); returns ``(new_params, new_state)``.

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g²``;
    ``p <- p - lr * (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)``.
    """
    lr, b1, b2, eps = float(lr), float(b1), float(b2), float(eps)
    count = int(state["count"]) + 1
    m = tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state["m"], grads)
    v = tree_map(lambda v, g: b2 * v + (1.0 - b2) * (g * g), state["v"], grads)
    c1, c2 = 1.0 - b1**count, 1.0 - b2**count  # bias corrections, Python floats
    new = tree_map(lambda p, m, v: p - lr * (m / c1) / (onp.sqrt(v / c2) + eps), params, m, v)
    return new, {"m": m, "v": v, "count": onp.array(count)}


def global_norm(tree):
    """``sqrt(sum of squares over every leaf)`` as a Python float."""
    return math.sqrt(sum(float(onp.vdot(g, g)) for g in tree_leaves(tree)))


def clip_by_global_norm(grads, max_norm):
    """Rescale ``grads`` so their global norm is at most ``max_norm`` (Pascanu et al. 2013).

    Returns ``(clipped, norm_before)``; ``max_norm=None`` only measures.
    """
    norm = global_norm(grads)
    if max_norm is None or norm <= max_norm:
        return grads, norm
    scale = float(max_norm) / norm
    return tree_map(lambda g: g * scale, grads), norm


def warmup_lr(step, lr, warmup_steps):
    """Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` steps.

    ``step`` counts from 0; after the warm-up the rate stays at ``lr``.
    """
    if warmup_steps <= 0:
        return float(lr)
    return float(lr) * min(1.0, (step + 1) / warmup_steps)


def lr_schedule(step, lr, warmup_steps, total_steps, cooldown_steps=0):
    """``warmup_lr``, then constant, then (``cooldown_steps > 0``) a linear fall over the last
    ``cooldown_steps`` of ``total_steps``: ``lr (total - step) / cooldown``, whose last step
    (``step = total - 1``) still moves by ``lr / cooldown``. The warm-up-stable-decay shape (Hu et
    al. 2024, MiniCPM)."""
    rate = warmup_lr(step, lr, warmup_steps)
    if cooldown_steps > 0:
        rate *= min(1.0, (total_steps - step) / cooldown_steps)
    return rate


def ema_decay(step, decay=0.999, warmup=True):
    """The EMA decay at ``step`` (from 0): ``min(decay, (1 + step) / (10 + step))`` when warming up.

    The warm-up (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) matters on short
    CPU runs: a flat 0.999 still holds ``0.999**1500 ≈ 22%`` of the random initial weights after
    1,500 steps, while the warmed-up average has forgotten them.
    """
    if not warmup:
        return float(decay)
    return min(float(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay):
    """``ema <- decay * ema + (1 - decay) * params``, leaf by leaf."""
    decay = float(decay)
    return tree_map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)
