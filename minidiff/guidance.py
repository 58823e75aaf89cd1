"""Chapter 7 — conditioning and guidance (this module is the chapter's home; chapter 7 grows it).

Bayes' rule for scores is the whole chapter in one line,

    grad log p_t(x | c) = grad log p_t(x) + grad log p_t(c | x),

and, since ``score = -eps / sigma`` on a Gaussian path (Tweedie), a network that predicts the
noise with a label, ``eps_c``, and without one, ``eps_u``, carries an implicit classifier:
``eps_c - eps_u = -sigma grad log p_t(c | x)``. Classifier-free guidance (Ho & Salimans 2022)
scales that classifier's pull by ``w``.

**Convention.** minidiff's guidance scale ``w`` multiplies the conditional-minus-unconditional
difference: ``eps_u + w (eps_c - eps_u)``, so ``w = 1`` is the plain conditional model and
``w = 0`` the unconditional one (diffusers' ``guidance_scale`` is the same number). Ho & Salimans
(2022, eq. (6)) write ``(1 + w') eps_c - w' eps_u``: their ``w'`` is minidiff's ``w - 1``.
"""

import math

import numpy as onp


def check_interval(interval):
    """A guidance interval ``(lo, hi)`` of step indices with ``0 <= lo <= hi``, or None."""
    if interval is None:
        return None
    pair = isinstance(interval, (tuple, list)) and len(interval) == 2
    if not (pair and all(isinstance(v, (int, onp.integer)) for v in interval)
            and 0 <= interval[0] <= interval[1]):
        raise ValueError(f"the guidance interval must be two step indices (lo, hi) with "
                         f"0 <= lo <= hi (got {interval!r})")
    return int(interval[0]), int(interval[1])


def check_scale(guidance):
    """The guidance scale ``w``: a finite real number (``w = 1`` is no guidance)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, onp.floating,
                                                               onp.integer)) \
            or not math.isfinite(guidance):
        raise ValueError(f"`guidance` must be a finite number (got {guidance!r}); 1 is the "
                         "plain conditional model, 0 the unconditional one")
    return float(guidance)


def guided_eps(apply, params, config, labels, guidance=2.0, null_label=10, interval=None):
    """``eps_fn(x, i)`` for the samplers: classifier-free guidance, ``eps_u + w (eps_c - eps_u)``
    (Ho & Salimans 2022, eq. (6), whose scale is ``w - 1`` in this notation: module docstring).
    ``w = 1`` is the plain conditional model, ``w = 0`` the unconditional one. Both halves run as
    one batch of ``2N``.

    ``interval = (lo, hi)`` guides only at steps ``lo <= i < hi`` and uses the conditional model
    (``w = 1``) at the others: a guidance interval (Kynkäänniemi et al. 2024, who find
    guidance harmful at the highest noise levels of ImageNet models and unnecessary at the
    lowest). ``None`` guides at every step."""
    labels = onp.asarray(labels)
    interval = check_interval(interval)
    guidance = check_scale(guidance)

    def eps_fn(x, i):
        x = x.astype(onp.float32)
        n = x.shape[0]
        if guidance == 1.0 or (interval is not None and not interval[0] <= i < interval[1]):
            return apply(params, x, onp.full(n, i, onp.float32), labels, config)
        both = apply(params, onp.concatenate([x, x]), onp.full(2 * n, i, onp.float32),
                     onp.concatenate([labels, onp.full(n, null_label)]), config)
        eps_c, eps_u = both[:n], both[n:]  # (N, C, H, W) each
        return eps_u + guidance * (eps_c - eps_u)
    return eps_fn
