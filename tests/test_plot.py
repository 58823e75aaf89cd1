"""The shared figures draw what they say (headless backend)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minidiff import datasets, plot  # noqa: E402


def test_grid_covers_the_square():
    X, Y, pts = plot.grid(2.0, 5)
    assert pts.shape == (25, 2) and pts.min() == -2.0 and pts.max() == 2.0


def test_figures_draw_and_save(tmp_path, rng):
    gm = datasets.gmm8()
    fig, axes = plt.subplots(1, 3)
    plot.density(axes[0], gm.log_prob, n=20)
    plot.score_field(axes[1], gm.score, n=6)  # even n: no grid point at the origin, where s = 0
    plot.points(axes[2], gm.sample(50, rng))
    plot.paths(axes[2], rng.normal(size=(5, 3, 2)), n=2)
    assert len(axes[1].collections) == 1  # one quiver
    # Normalised arrows: every arrow has the same length, 80% of the grid spacing.
    u, v = axes[1].collections[0].U, axes[1].collections[0].V
    np.testing.assert_allclose(np.hypot(u, v), 0.8 * 6.0 / 5)
    plot.save(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_digit_grid_puts_one_class_per_column(rng):
    per_class = 3
    images = rng.uniform(-1, 1, (10 * per_class, 1, 4, 5))  # class-ordered, as sampled
    fig, ax = plt.subplots()
    plot.digits(ax, images, per_class, title="t")
    shown = np.asarray(ax.images[0].get_array())
    assert shown.shape == (per_class * 4, 10 * 5)
    for c in range(10):
        for r in range(per_class):  # row r of column c is the r-th sample of class c
            np.testing.assert_array_equal(shown[4 * r:4 * r + 4, 5 * c:5 * c + 5],
                                          images[c * per_class + r, 0])
    plt.close(fig)
