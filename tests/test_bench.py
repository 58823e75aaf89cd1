"""The benchmark's pieces run (timings themselves are never asserted), and the PyTorch twins,
when PyTorch is installed, are the same models: the U-Net twin has exactly the numpy model's
parameter count, and the DiT twin loaded with the numpy weights computes the same function."""

import shutil

import numpy as np
import pytest

from minidiff import nn
from minidiff.models import dit, unet
from minidiff.tools import bench

DIT_EXERCISES = pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")  # what a DiT step runs


@pytest.mark.parametrize("model", ["unet", pytest.param("dit", marks=DIT_EXERCISES)])
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


def _random_params(arch, cfg, rng):
    # Random weights everywhere: the zero-initialised output layers and gates would hide the
    # blocks behind them.
    return nn.tree_map(lambda a: (0.1 * rng.standard_normal(a.shape)).astype(np.float32),
                       arch.init(rng, cfg))


def _same_function(ours, twin, rng, torch):
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    t, y = np.array([1.0, 500.0, 999.0], np.float32), np.array([0, 7, 10])
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    mine = ours(x, t, y)
    # float32 through the whole network: agreement to a few ulps of the output scale
    np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4 * np.abs(mine).max())


def test_torch_unet_twin_computes_the_same_function():
    torch = pytest.importorskip("torch")
    from minidiff.tools.torch_twins import TorchUNet

    rng, cfg = np.random.default_rng(0), unet.UNetConfig()
    params = _random_params(unet, cfg, rng)
    for blk in params["down"] + params["up"] + [params["mid"]]:  # GroupNorm scales near 1
        for p in (v for v in blk.values() if isinstance(v, dict)):
            for norm in (p.get(k) for k in ("norm1", "norm2", "norm")):
                if norm is not None:
                    norm["gamma"] = norm["gamma"] + np.float32(1.0)
    twin = TorchUNet().from_numpy(params)
    _same_function(lambda x, t, y: unet.apply(params, x, t, y, cfg), twin, rng, torch)


@DIT_EXERCISES
def test_export_writes_a_loadable_twin_of_a_model_file(tmp_path):
    torch = pytest.importorskip("torch")
    from minidiff import images
    from minidiff.tools import torch_twins

    cfg = dit.DiTConfig(patch=7, width=32, depth=1, heads=2)
    params = nn.tree_map(lambda a: a + np.float32(0.05), dit.init(np.random.default_rng(1), cfg))
    images.save_model(tmp_path / "d.npz", params, cfg, kind="dit")
    assert torch_twins.main(["export", str(tmp_path / "d.npz"), str(tmp_path / "d.pt")]) == 0
    saved = torch.load(tmp_path / "d.pt", weights_only=True)
    twin = torch_twins.TorchDiT(7, 32, 1, 2)
    twin.load_state_dict(saved["state_dict"])
    assert saved["model"] == "dit" and saved["schedule"] == {"name": "linear", "T": 1000}
    x = np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32)
    t, y = np.array([3.0, 900.0], np.float32), np.array([1, 10])
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(dit.apply(params, x, t, y, cfg), theirs, rtol=1e-4, atol=1e-5)
    wide = unet.UNetConfig(channels=(8, 16), attention_levels=(1,), head_channels=8)
    images.save_model(tmp_path / "u.npz", unet.init(np.random.default_rng(0), wide), wide)
    with pytest.raises(ValueError, match="TorchUNet mirrors"):
        torch_twins.to_torch(tmp_path / "u.npz")


@DIT_EXERCISES
def test_torch_dit_twin_computes_the_same_function():
    torch = pytest.importorskip("torch")
    from minidiff.tools.torch_twins import TorchDiT

    rng, cfg = np.random.default_rng(0), dit.DiTConfig()
    params = _random_params(dit, cfg, rng)
    pos = dit.sincos_2d(cfg.width, cfg.resolution // cfg.patch).astype(np.float32)
    twin = TorchDiT().from_numpy(params, pos)
    assert sum(p.numel() for p in twin.parameters()) == nn.tree_size(params)
    _same_function(lambda x, t, y: dit.apply(params, x, t, y, cfg), twin, rng, torch)


@DIT_EXERCISES
def test_interleaved_comparison_runs_its_step_servers():
    # The numpy step server in its own process answers turn by turn and reports its size and
    # peak memory; a broken protocol or child would print "failed" instead of this line.
    # The two-worker variant's server starts its own DataParallel workers and adds their peaks.
    line = bench._compare("dit", batch=2, repeats=1, have_torch=False, workers=(1, 2))
    assert line.startswith("batch    2: minidiff"), line
    assert "| minidiff, 2 workers " in line and "failed" not in line, line
    n_params = nn.tree_size(dit.init(np.random.default_rng(0), dit.DiTConfig()))
    assert f"{n_params / 1e6:.2f}M params" in line, line


def test_quality_benchmark_trains_for_its_budget_samples_and_scores_both_splits(tmp_path,
                                                                                capsys):
    # A tiny U-Net and 20 samples in 2 steps: the pipeline, not the numbers. `--steps 12` in the
    # recipe ends the run before the minute's budget, whatever this machine's speed.
    import json

    from minidiff.tools import bench_quality

    argv = ["quality", "--model", "unet", "--minutes", "1", "--n", "20", "--steps", "2",
            "--workers", "1", "--out", str(tmp_path), "--train-args",
            "--workers 1 --batch-size 4 --channels 8 16 32 --warmup 2 --steps 12"]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    (run,) = report["runs"]
    assert report["minutes"] == 1 and "--cooldown 20%" in report["recipe"]
    assert run["steps"] == run["planned_steps"] == 12 and run["images_seen"] == 48
    for split in ("validation", "test"):
        r = run[split]
        assert r["ratio"] == pytest.approx(r["fd"] / r["fd_real"], rel=1e-2)
        assert 0 <= r["agreement"] <= 1
    assert run["validation"] != run["test"]  # two different reference sets
    assert "validation FD-MNIST" in capsys.readouterr().out
    # a second call reuses the weights and samples (no training, no sampling); a seed run in
    # another call joins the report, which then holds both rows and their mean
    recipe = argv[-1]
    for suffix in (".npz", "_samples.npz"):
        shutil.copy(tmp_path / f"unet_seed0{suffix}", tmp_path / f"unet_seed1{suffix}")
    rows = bench_quality.quality("unet", 1, [1], tmp_path, recipe, n=20, steps=2)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0] == run
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["runs"] == rows
    assert report["mean"]["validation"]["ratio"] == pytest.approx(run["validation"]["ratio"])
    assert "mean of 2 seeds" in capsys.readouterr().out
    # the folder belongs to its recipe: another recipe must not reuse these weights
    with pytest.raises(ValueError, match="other settings: recipe"):
        bench_quality.quality("unet", 1, [0], tmp_path, n=20, steps=2)
    with pytest.raises(SystemExit):
        bench.main(argv[:-2] + ["--train-args", "--batch-size 8"])
    assert "give a new --out" in capsys.readouterr().err


def test_report_mean_averages_each_split_over_different_seeds():
    # Two seeds with different numbers: the mean is the arithmetic mean of each field, per
    # split (a first-row, max or pooled-split "mean" gives other values here).
    from minidiff.tools import bench_quality

    rows = [{"seed": s, "validation": {"fd": fd, "ratio": r, "agreement": a},
             "test": {"fd": fd + 1, "ratio": r + 0.5, "agreement": a - 0.01}}
            for s, (fd, r, a) in enumerate([(10.0, 2.0, 0.99), (12.0, 3.0, 0.96)])]
    mean = bench_quality.mean_of(rows)
    assert mean["validation"] == pytest.approx({"fd": 11.0, "ratio": 2.5, "agreement": 0.975})
    assert mean["test"] == pytest.approx({"fd": 12.0, "ratio": 3.0, "agreement": 0.965})
    assert bench_quality.format_mean(rows) == ("mean of 2 seeds | validation ratio 2.50, "
                                               "agreement 97.5% | test: ratio 3.00, 96.5%")
