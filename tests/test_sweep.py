"""The DiT scaling sweep (a tool): its rows, its table file and its shape syntax."""

from pathlib import Path

import numpy as np
import pytest

from minidiff.tools import sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")  # it trains DiTs
def test_dit_sweep_rows_and_table_round_trip(tmp_path, rng):
    from minidiff import nn
    from minidiff.datasets import mnist
    from minidiff.models import dit
    from minidiff.nn import checkpoint

    pics, labels = mnist("test")
    clf, _ = checkpoint.load(ROOT / "data/weights/classifier_mnist.npz")
    shapes = ((7, 16), (4, 16, "in_context", "min_snr"))
    rows = sweep.dit_sweep(pics[:256], labels[:256], clf, shapes, steps=3, batch_size=4,
                              n_eval=20, eval_steps=2, progress=False)
    assert [(r["patch"], r["width"], r["conditioning"], r["weighting"]) for r in rows] == \
        [(7, 16, "adaln_zero", "none"), (4, 16, "in_context", "min_snr")]
    for r in rows:
        cfg = dit.DiTConfig(patch=r["patch"], width=r["width"], conditioning=r["conditioning"])
        assert r["gflops"] == dit.gflops(cfg) and r["tokens"] == cfg.tokens
        assert r["params"] == nn.tree_size(dit.init(rng, cfg))
        assert np.isfinite(r["fd"]) and r["fd"] > 0 and 0 <= r["agreement"] <= 1
    assert rows[0]["fd_real"] == rows[1]["fd_real"]  # one evaluation set for every model
    sweep.save_sweep(tmp_path / "sweep.json", rows, steps=3)
    back, meta = sweep.load_sweep(tmp_path / "sweep.json")
    assert back == rows and meta == {"steps": 3}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a DiT sweep table"):
        sweep.load_sweep(tmp_path / "bad.json")


def test_shapes_parse_and_bad_ones_are_named():
    assert sweep.parse_shape("4x128") == (4, 128)
    assert sweep.parse_shape("4x64:adaln_zero:min_snr") == (4, 64, "adaln_zero", "min_snr")
    with pytest.raises(ValueError, match="expected PATCHxWIDTH"):
        sweep.parse_shape("4by64")
