"""Score networks: each module is an ``init(rng, ...) -> params``, ``apply(params, ...)`` pair."""

import numpy as onp


def labels_or_null(y, n, num_classes):
    """Class labels for a batch of ``n``: ``y`` checked to lie in ``0 .. num_classes`` (the last
    value is the null label of classifier-free guidance), or all null when ``y`` is None."""
    y = onp.full(n, num_classes) if y is None else onp.asarray(y)
    if y.shape != (n,) or not onp.issubdtype(y.dtype, onp.integer) or y.min() < 0 \
            or y.max() > num_classes:
        raise ValueError(f"`y` must be {n} integer labels in 0..{num_classes} "
                         f"({num_classes} = null), got {y!r}")
    return y


def check_images(x, t, config):
    """Validate an image batch ``x: (N, C, H, W)`` against ``config`` (``in_channels``,
    ``resolution``) and broadcast the time ``t`` to ``(N,)`` in ``x``'s dtype."""
    c, r = config.in_channels, config.resolution
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, r, r):
        raise ValueError(f"`x` must have shape (N, {c}, {r}, {r}) (got {tuple(x.shape)})")
    return onp.broadcast_to(onp.asarray(t, dtype=x.dtype), (x.shape[0],))
