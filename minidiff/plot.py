"""The figures the notebooks and the demo share: densities, score fields and samples in 2D, and
grids of generated digits."""

import matplotlib.pyplot as plt
import numpy as onp


def grid(lim, n):
    """An ``n x n`` grid over ``[-lim, lim]²``: returns ``(X, Y, points)``, ``points: (n², 2)``."""
    ticks = onp.linspace(-lim, lim, n)
    X, Y = onp.meshgrid(ticks, ticks)
    return X, Y, onp.stack([X.ravel(), Y.ravel()], axis=1)


def density(ax, log_prob, lim=3.0, n=150, cmap="Greys", **kw):
    """Filled contours of ``exp(log_prob)`` on ``[-lim, lim]²``."""
    X, Y, pts = grid(lim, n)
    ax.contourf(X, Y, onp.exp(onp.asarray(log_prob(pts))).reshape(X.shape), levels=12, cmap=cmap,
                **kw)
    _square(ax, lim)


def score_field(ax, score, lim=3.0, n=15, color="C0", normalise=True, **kw):
    """The score as arrows on an ``n x n`` grid. With ``normalise``, arrows have unit length and
    their colour intensity follows ``log(1 + |s|)``, so both the direction far from the data and the
    strength near it stay readable."""
    X, Y, pts = grid(lim, n)
    s = onp.asarray(score(pts))
    norm = onp.linalg.norm(s, axis=1, keepdims=True)
    spacing = 2 * lim / (n - 1)
    if normalise:
        s = s / onp.maximum(norm, 1e-12) * (0.8 * spacing)  # arrows 80% of the grid spacing
        kw = {"angles": "xy", "scale_units": "xy", "scale": 1.0, "width": 0.006, **kw}
        ax.quiver(X, Y, s[:, 0], s[:, 1], onp.log1p(norm[:, 0]), cmap="viridis", **kw)
    else:
        ax.quiver(X, Y, s[:, 0], s[:, 1], color=color, **kw)
    _square(ax, lim)


def points(ax, x, lim=3.0, s=2, alpha=0.5, **kw):
    """A scatter of 2D points."""
    x = onp.asarray(x)
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, linewidths=0, **kw)
    _square(ax, lim)


def paths(ax, path, lim=3.0, n=10, **kw):
    """The first ``n`` chains of a path ``(steps, N, 2)`` as lines, with their ends marked."""
    path = onp.asarray(path)
    for i in range(min(n, path.shape[1])):
        line, = ax.plot(path[:, i, 0], path[:, i, 1], lw=0.6, alpha=0.8, **kw)
        ax.plot(*path[-1, i], "o", ms=3, color=line.get_color())
    _square(ax, lim)


def _square(ax, lim):
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def digits(ax, images, per_class, title=None):
    """Class-ordered samples ``(10 * per_class, [1,] H, W)`` in ``[-1, 1]`` as one image with one
    class per column (``per_class`` rows), as the samplers return them."""
    imgs = onp.asarray(images).reshape(10, per_class, *onp.shape(images)[-2:])
    h, w = imgs.shape[-2:]
    ax.imshow(imgs.transpose(1, 2, 0, 3).reshape(per_class * h, 10 * w), cmap="gray",
              vmin=-1, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)


def save(fig, path, dpi=80):
    """Save a figure (PNG, small) and close it."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def prompt_rows(images, prompts, per_prompt=None):
    """Chapter 8: one row of ``per_prompt`` samples per prompt, the prompt at its left; ``images``
    ``(len(prompts) * per_prompt, [1,] H, W)`` in prompt order. Returns the figure."""
    per_prompt = per_prompt or len(images) // len(prompts)
    h, w = onp.shape(images)[-2:]
    imgs = onp.asarray(images).reshape(len(prompts), per_prompt, h, w)
    fig, axes = plt.subplots(len(prompts), 1, figsize=(0.5 * per_prompt + 2.5,
                                                       0.55 * len(prompts) + 0.2), squeeze=False)
    for ax, row, prompt in zip(axes[:, 0], imgs, prompts, strict=True):
        ax.imshow(row.transpose(1, 0, 2).reshape(h, per_prompt * w), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(prompt, rotation=0, ha="right", va="center", fontsize=8)
    return fig
