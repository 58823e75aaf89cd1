"""The benchmark's pieces run (timings themselves are never asserted), and the PyTorch twins,
when PyTorch is installed, are the same models: the U-Net twin has exactly the numpy model's
parameter count, and the DiT twin loaded with the numpy weights computes the same function."""

import numpy as np
import pytest

from minidiff import nn
from minidiff.models import dit, unet
from minidiff.tools import bench


@pytest.mark.parametrize("model", ["unet", "dit"])
def test_numpy_step_runs_and_reports(model):
    arch, cfg = (unet, unet.UNetConfig()) if model == "unet" else (dit, dit.DiTConfig())
    res = bench._numpy_step(model, batch=2, repeats=1)
    assert res["seconds"] > 0 and res["peak_gb"] > 0
    assert res["params"] == nn.tree_size(arch.init(np.random.default_rng(0), cfg))


def test_torch_twin_has_the_same_architecture():
    pytest.importorskip("torch")
    from minidiff.tools.torch_twins import TorchUNet

    twin = TorchUNet()
    numpy_params = nn.tree_size(unet.init(np.random.default_rng(0), unet.UNetConfig()))
    assert sum(p.numel() for p in twin.parameters()) == numpy_params


def test_torch_dit_twin_computes_the_same_function():
    torch = pytest.importorskip("torch")
    from minidiff.tools.torch_twins import TorchDiT

    rng = np.random.default_rng(0)
    cfg = dit.DiTConfig()
    # Random weights everywhere (the zero-initialised gates would hide the blocks).
    params = nn.tree_map(lambda a: (0.1 * rng.standard_normal(a.shape)).astype(np.float32),
                         dit.init(rng, cfg))
    pos = dit.sincos_2d(cfg.width, cfg.resolution // cfg.patch).astype(np.float32)
    twin = TorchDiT().from_numpy(params, pos)
    assert sum(p.numel() for p in twin.parameters()) == nn.tree_size(params)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    t, y = np.array([1.0, 500.0, 999.0], np.float32), np.array([0, 7, 10])
    ours = dit.apply(params, x, t, y, cfg)
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    # float32 through four blocks: agreement to a few ulps of the output scale
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_interleaved_comparison_runs_its_step_servers():
    # The numpy step server in its own process answers turn by turn and reports its size and
    # peak memory; a broken protocol or child would print "failed" instead of this line.
    # The two-worker variant's server starts its own DataParallel workers and adds their peaks.
    line = bench._compare("dit", batch=2, repeats=1, have_torch=False, workers=(1, 2))
    assert line.startswith("batch    2: minidiff"), line
    assert "| minidiff, 2 workers " in line and "failed" not in line, line
    n_params = nn.tree_size(dit.init(np.random.default_rng(0), dit.DiTConfig()))
    assert f"{n_params / 1e6:.2f}M params" in line, line
