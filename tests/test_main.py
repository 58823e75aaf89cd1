"""The command line and the demo (run small), and the code-line budget of the chapter modules."""

import ast
from pathlib import Path

import pytest

from minidiff.__main__ import main

PACKAGE = Path(__file__).resolve().parent.parent / "minidiff"


def test_demo_runs_fast_and_reports_what_it_measured(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "weight of the heavy mode" in printed and "relative score error" in printed
    assert {p.name for p in tmp_path.iterdir()} >= {"01_langevin_weights.png", "01_ncsn_gmm8.png",
                                                    "06_unet_samples.png",
                                                    "09_dit_samples.png"}
    assert "U-Net: 20 samples" in printed and "DiT: 20 samples" in printed


def code_lines(path):
    """Lines of code: not blank, not comments, not docstrings."""
    source = path.read_text()
    doc_lines = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in doc_lines)


@pytest.mark.parametrize("module", ["score.py", "dsm.py", "ddpm.py", "sde.py", "samplers.py",
                                    "process.py", "targets.py", "datasets.py", "train.py"])
def test_chapter_modules_stay_within_the_line_budget(module):
    # STYLE.md: about 250 lines of code per module (docstrings and comments are free).
    assert code_lines(PACKAGE / module) <= 250


def test_train_dit_from_the_command_line_writes_loadable_weights(tmp_path, capsys):
    from minidiff import pipeline

    out, ckpt = tmp_path / "dit.npz", tmp_path / "dit_train.npz"
    assert main(["train", "dit", "--steps", "2", "--batch-size", "2", "--width", "16",
                 "--patch", "7", "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    apply, params, cfg, meta = pipeline.load_model(out)
    assert (cfg.patch, cfg.width) == (7, 16) and meta["steps"] == 2 and meta["model"] == "dit"
    assert "saved the EMA weights" in capsys.readouterr().out


def test_train_with_workers_cooldown_v_target_and_p_uncond_records_them(tmp_path):
    from minidiff import pipeline
    from minidiff.models import dit

    out, ckpt = tmp_path / "dit.npz", tmp_path / "dit_train.npz"
    assert main(["train", "dit", "--steps", "2", "--batch-size", "4", "--width", "16",
                 "--patch", "7", "--workers", "2", "--cooldown", "1", "--target", "v",
                 "--p-uncond", "0.5", "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    apply, _, _, meta = pipeline.load_model(out)
    assert (meta["workers"], meta["cooldown"], meta["steps"]) == (2, 1, 2)
    assert meta["p_uncond"] == 0.5 and meta["paired"] is False
    assert meta["target"] == "v" and apply is not dit.apply  # wrapped into a noise predictor


def test_train_paired_records_it_and_needs_half_dropped(tmp_path):
    from minidiff import pipeline

    out, ckpt = tmp_path / "dit.npz", tmp_path / "dit_train.npz"
    common = ["train", "dit", "--steps", "1", "--batch-size", "4", "--width", "16", "--patch", "7",
              "--paired", "--out", str(out), "--checkpoint", str(ckpt)]
    with pytest.raises(SystemExit, match="--paired .* needs --p-uncond 0.5 .got --p-uncond 0.1"):
        main(common)
    assert main(common + ["--p-uncond", "0.5"]) == 0
    _, _, _, meta = pipeline.load_model(out)
    assert meta["paired"] is True and meta["p_uncond"] == 0.5


def test_sample_with_workers_then_evaluate_from_the_command_line(tmp_path, capsys):
    # A tiny untrained 28x28 U-Net is enough to run the two commands end to end: the file
    # holds uint8 images and balanced labels, and evaluate prints FD, agreement, the spread and
    # FD with the class means aligned.
    import numpy as np

    from minidiff import pipeline
    from minidiff.models import unet

    cfg = unet.UNetConfig(channels=(4, 8), attention_levels=(1,), head_channels=4, groups=2)
    weights, samples = tmp_path / "tiny.npz", tmp_path / "s.npz"
    pipeline.save_model(weights, unet.init(np.random.default_rng(0), cfg), cfg)
    assert main(["sample", "--weights", str(weights), "--n", "20", "--steps", "2",
                 "--workers", "2", "--out", str(samples)]) == 0
    images, labels = pipeline.load_samples(samples)
    assert images.shape == (20, 28, 28) and list(np.bincount(labels)) == [2] * 10
    assert main(["evaluate", str(samples), "--classifier",
                 str(PACKAGE.parent / "data/weights/classifier_mnist.npz")]) == 0
    out = capsys.readouterr().out
    assert "20 samples: FD-MNIST" in out and "between classes" in out
    assert "mean moved onto the test digits' class mean: FD-MNIST" in out
    assert main(["sample", "--weights", str(weights), "--n", "10", "--steps", "2",
                 "--guidance-interval", "600", "1000", "--out", str(samples)]) == 0
    assert "guidance 2.0 at steps 600 <= i < 1000" in capsys.readouterr().out


def test_sample_ideal_copies_training_digits_and_refuses_workers(tmp_path):
    # `sample --ideal` samples the exact posterior mean of the training set (models/ideal.py):
    # with 10 DDIM steps the last posterior (sigma = 0.01) sits on one training digit, so every
    # sample is a training digit's exact pixels. It runs in one process only.
    import numpy as np

    from minidiff import pipeline
    from minidiff.datasets import mnist

    out = tmp_path / "ideal.npz"
    assert main(["sample", "--ideal", "--n", "10", "--steps", "10", "--guidance", "1",
                 "--out", str(out)]) == 0
    images, labels = pipeline.load_samples(out)
    train = pipeline.to_uint8(mnist("train")[0][:, 0]).reshape(60_000, -1).astype(np.int32)
    flat = images.reshape(10, -1).astype(np.int32)
    assert all(np.any(np.all(train == row, axis=1)) for row in flat)
    with pytest.raises(SystemExit, match="one process"):
        main(["sample", "--ideal", "--workers", "2", "--out", str(out)])
