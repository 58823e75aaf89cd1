"""The U-Net: identities at initialisation, gradients, configuration errors, dtype."""

import autograd
import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff import nn
from minidiff.models import unet

pytestmark = pytest.mark.ch6

TINY = unet.UNetConfig(resolution=8, channels=(4, 8), num_res_blocks=1, attention_levels=(1,),
                       head_channels=4, groups=2, num_classes=3)


def test_untrained_unet_outputs_zeros_and_keeps_the_shape(rng):
    for cfg in [TINY, unet.UNetConfig()]:
        params = unet.init(rng, cfg)
        x = rng.standard_normal((2, cfg.in_channels, cfg.resolution, cfg.resolution))
        out = unet.apply(params, x.astype(np.float32), np.array([3.0, 500.0]), None, cfg)
        assert out.shape == x.shape and np.all(out == 0)


@pytest.mark.parametrize("switches", [{}, {"resblock_updown": True}, {"adagn": False},
                                      {"rescale_skip": False}, {"num_classes": None}])
def test_whole_unet_gradients_at_tiny_size(switches, rng):
    cfg = unet.UNetConfig(**{**TINY.to_dict(), **switches})
    params = nn.tree_cast(unet.init(rng, cfg), np.float64)
    # Zero-initialised layers make many gradients vanish at init: perturb every weight.
    params = nn.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape), params)
    x, t = rng.standard_normal((2, 1, 8, 8)), np.array([1.0, 7.0])
    y = None if cfg.num_classes is None else np.array([0, 3])
    check_grads(lambda p: unet.apply(p, x, t, y, cfg), modes=["rev"], order=1)(params)
    check_grads(lambda x: unet.apply(params, x, t, y, cfg), modes=["rev"], order=1)(x)


def test_every_gradient_of_a_float32_step_is_float32(rng):
    params = unet.init(rng, TINY)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    loss = lambda p: nn.mean((unet.apply(p, x, np.array([1.0, 2.0], np.float32),
                                         np.array([0, 3]), TINY) - x) ** 2)
    grads = autograd.grad(loss)(params)
    assert {g.dtype for g in nn.tree_leaves(grads)} == {np.dtype(np.float32)}


def test_class_label_changes_the_output(rng):
    params = nn.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype),
                         unet.init(rng, TINY))
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    a = unet.apply(params, x, 1.0, np.array([0]), TINY)
    b = unet.apply(params, x, 1.0, np.array([3]), TINY)  # the null label
    assert np.abs(a - b).max() > 1e-4


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="divisible by `groups`"):
        unet.UNetConfig(channels=(30, 64), groups=8)
    with pytest.raises(ValueError, match="must be divisible by 2\\^\\(levels - 1\\) = 4"):
        unet.UNetConfig(resolution=30, channels=(32, 64, 64), resblock_updown=True)
    # without resblock_updown an odd size is fine: 15 -> 8 going down, 16 cropped to 15 coming up
    odd = unet.UNetConfig(resolution=15, channels=(8, 8), attention_levels=(), head_channels=8,
                          num_classes=None)
    assert unet.apply(unet.init(np.random.default_rng(0), odd), np.zeros((1, 1, 15, 15)), 0.0,
                      None, odd).shape == (1, 1, 15, 15)
    with pytest.raises(ValueError, match="head_channels"):
        unet.UNetConfig(channels=(32, 48, 48), head_channels=32)
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 1, 8, 8\)"):
        unet.apply(unet.init(np.random.default_rng(0), TINY), np.zeros((1, 1, 9, 9)), 0.0,
                   None, TINY)
    with pytest.raises(ValueError, match="integer labels in 0..3"):
        unet.apply(unet.init(np.random.default_rng(0), TINY), np.zeros((1, 1, 8, 8)), 0.0,
                   np.array([7]), TINY)
