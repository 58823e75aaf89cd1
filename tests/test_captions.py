"""Chapter 8's captions: the attribute measures on shapes with known answers, the tertiles'
balance within every class, and captions that cover the vocabulary and say what they mean."""

import numpy as np
import pytest

from minidiff import captions
from minidiff.datasets import mnist

pytestmark = pytest.mark.ch8


def canvas():
    return -np.ones((1, 1, 28, 28))  # background -1 (intensity 0)


@pytest.mark.parametrize("w", [1, 2, 3, 4])
def test_thickness_of_a_bar_is_area_over_half_perimeter(w):
    # A w x 20 bar of full ink: mass 20 w, perimeter 2 (20 + w) edges -> 2A/P = 20 w / (20 + w),
    # close to the stroke width w when the bar is long.
    x = canvas()
    x[0, 0, 4:24, 10:10 + w] = 1.0
    assert captions.thickness(x)[0] == pytest.approx(20 * w / (20 + w), rel=1e-12)


@pytest.mark.parametrize("s", [-0.3, 0.0, 0.25, 0.5])
def test_slant_of_a_sheared_line_is_its_shear(s):
    # One unit of ink per row, split between two columns so that its centre is exactly
    # x = 14 + s y (y up): the weighted second moments give cov(x, y) / var(y) = s exactly.
    x = canvas()
    for row in range(4, 24):
        y = 14 - row
        centre = 14 + s * y
        c, f = int(np.floor(centre)), centre - np.floor(centre)
        x[0, 0, row, c] = 2 * (1 - f) - 1
        x[0, 0, row, c + 1] = 2 * f - 1
    assert captions.slant(x)[0] == pytest.approx(s, abs=1e-12)


@pytest.mark.parametrize("w", [2, 5, 9])
def test_width_of_an_upright_block_is_four_standard_deviations(w):
    # w full columns: the std of a uniform over w integers is sqrt((w^2 - 1) / 12).
    x = canvas()
    x[0, 0, 4:24, 8:8 + w] = 1.0
    assert captions.width(x)[0] == pytest.approx(4 * np.sqrt((w * w - 1) / 12), rel=1e-12)


def test_width_does_not_grow_with_the_slant():
    # The same one-pixel line, upright and sheared by 0.5: the bounding box widens by 10 pixels,
    # the de-slanted width stays within the rounding of the shear to whole pixels.
    up, sheared = canvas(), canvas()
    for row in range(4, 24):
        up[0, 0, row, 14] = 1.0
        sheared[0, 0, row, 14 + round(0.5 * (14 - row))] = 1.0
    assert captions.width(up)[0] == pytest.approx(0.0, abs=1e-12)
    assert captions.width(sheared)[0] < 4 * 0.5  # residual spread of a half-pixel rounding


@pytest.fixture(scope="module")
def digits():
    x, y = mnist("train")
    return x[:6000], y[:6000]


def test_tertiles_split_every_class_into_thirds(digits):
    # Thresholds from the same digits: each bin holds a third of each class, up to one digit
    # per threshold (quantiles of n values) -- 2 / n_c of slack for ~600 digits per class.
    x, y = digits
    bins = captions.bins(x, y, captions.tertile_thresholds(x, y))
    for name in captions.ATTRIBUTES:
        for c in range(10):
            n_c = np.sum(y == c)
            frac = np.bincount(bins[name][y == c], minlength=3) / n_c
            assert np.all(np.abs(frac - 1 / 3) <= 2 / n_c), (name, c, frac)


def test_an_attribute_is_not_a_stand_in_for_the_class(digits):
    # Raw width separates the ones from the rest; the within-class bins do not: "narrow" is a
    # third of every class, where a global tertile would be mostly ones.
    x, y = digits
    w = captions.width(x)
    globally_narrow = w <= np.quantile(w, 1 / 3)
    assert np.mean(y[globally_narrow] == 1) > 0.3
    narrow = captions.bins(x, y, captions.tertile_thresholds(x, y))["width"] == 0
    assert abs(np.mean(y[narrow] == 1) - np.mean(y == 1)) < 0.01


def test_captions_cover_the_vocabulary_and_parse_back(digits):
    x, y = digits
    th = captions.tertile_thresholds(x, y)
    caps, index, mentioned = captions.caption_dataset(x[:3000], y[:3000], th,
                                                      np.random.default_rng(0))
    words = {w for c in caps for w in c.replace(",", " , ").split()}
    assert words == set(captions.VOCABULARY)
    for c, i, m in zip(caps, index, mentioned, strict=True):
        assert captions.parse(c) == (y[i], m), c
    # every class is captioned with every word of every attribute
    for name in captions.ATTRIBUTES:
        for b, word in enumerate(captions.WORDS[name]):
            if word is not None:
                named = {int(y[i]) for i, m in zip(index, mentioned, strict=True)
                         if m.get(name) == b}
                assert named == set(range(10)), (name, word)


def test_captions_are_reproducible_from_the_seed(digits):
    x, y = digits
    th = captions.tertile_thresholds(x, y)
    a = captions.caption_dataset(x[:50], y[:50], th, np.random.default_rng(3))[0]
    b = captions.caption_dataset(x[:50], y[:50], th, np.random.default_rng(3))[0]
    assert a == b


def test_bad_images_are_refused_by_name():
    with pytest.raises(ValueError, match="`images` must have shape"):
        captions.thickness(np.zeros((2, 28, 28)))
