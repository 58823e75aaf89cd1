"""Chapter 7's home: classifier-free guidance as the samplers use it."""

import numpy as np
import pytest
from conftest import TINY_UNET as TINY  # the tiny U-Net and its `tiny_params` fixture

from minidiff import guidance, images
from minidiff.models import unet


def test_guidance_combines_conditional_and_unconditional(tiny_params, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)(x, 40)
    uncond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=0.0)(x, 40)
    guided = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5)(x, 40)
    np.testing.assert_allclose(uncond, unet.apply(tiny_params, x, 40.0, np.full(3, 10), TINY),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_a_guidance_interval_guides_inside_it_and_conditions_outside(tiny_params, rng):
    x = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    y = np.array([1, 5, 9])
    cond = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=1.0)
    full = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5)
    banded = guidance.guided_eps(unet.apply, tiny_params, TINY, y, guidance=2.5, interval=(30, 60))
    for i, inside in [(29, False), (30, True), (59, True), (60, False)]:  # lo <= i < hi
        assert np.array_equal(banded(x, i), (full if inside else cond)(x, i))
    assert not np.allclose(full(x, 30), cond(x, 30))  # the two differ, so the check has teeth
    # Sampling with an interval covering every step is plain guided sampling; an empty one is w = 1.
    labels, kw = np.arange(4), dict(steps=3, guidance=2.5)
    run = lambda **k: images.sample(unet.apply, tiny_params, TINY, labels,  # noqa: E731
                                      np.random.default_rng(0), **kw, **k)
    assert np.array_equal(run(guidance_interval=(0, 1000)), run())
    assert np.array_equal(run(guidance_interval=(500, 500)),
                          images.sample(unet.apply, tiny_params, TINY, labels,
                                          np.random.default_rng(0), steps=3, guidance=1.0))
    for bad in [(60, 30), (1, 2, 3), (-1, 5), (0.5, 2)]:
        with pytest.raises(ValueError, match="guidance interval must be two step indices"):
            run(guidance_interval=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", None, True])
def test_a_guidance_scale_that_is_not_a_finite_number_is_refused(bad, tiny_params):
    # `--guidance nan` used to write all-black images with exit status 0.
    with pytest.raises(ValueError, match="`guidance` must be a finite number"):
        guidance.guided_eps(unet.apply, tiny_params, TINY, np.arange(2), guidance=bad)
