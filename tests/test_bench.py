"""The benchmark's pieces run (timings themselves are never asserted), and the PyTorch twin of
the U-Net, when PyTorch is installed, has exactly the numpy model's parameter count."""

import numpy as np
import pytest

from minidiff import bench, nn
from minidiff.models import unet


def test_numpy_step_runs_and_reports():
    res = bench._numpy_step(batch=2, repeats=1)
    assert res["seconds"] > 0 and res["peak_gb"] > 0
    assert res["params"] == nn.tree_size(unet.init(np.random.default_rng(0), unet.UNetConfig()))


def test_torch_twin_has_the_same_architecture():
    pytest.importorskip("torch")
    from minidiff.bench_torch import TorchUNet

    twin = TorchUNet()
    numpy_params = nn.tree_size(unet.init(np.random.default_rng(0), unet.UNetConfig()))
    assert sum(p.numel() for p in twin.parameters()) == numpy_params
