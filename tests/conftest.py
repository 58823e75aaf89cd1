"""Shared fixtures: a fixed-seed generator per test, so every statistical check is repeatable,
and the tiny class-conditional U-Net the image-glue and guidance tests run."""

import numpy as np
import pytest

from minidiff.models import unet
from minidiff.nn import tree_map

TINY_UNET = unet.UNetConfig(resolution=8, channels=(4, 8), num_res_blocks=1,
                            attention_levels=(1,), head_channels=4, groups=2, num_classes=10)


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)


@pytest.fixture
def tiny_params(rng):
    # Perturbed away from the zero-initialised output so that predictions are not all zero.
    return tree_map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(p.dtype),
                    unet.init(rng, TINY_UNET))
