"""The command line and the demo, run small: what they write, and the clear one-line errors
they give for every mistake a new user made when trying them."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from minidiff import datasets, images
from minidiff.__main__ import main
from minidiff.models import unet

PACKAGE = Path(__file__).resolve().parent.parent / "minidiff"
# The command line's own tests train a tiny U-Net (chapter 6's real code, no exercise of its own
# on that path), so that a course's student copy of chapter 9 still runs them.
TINY_UNET = ["unet", "--steps", "1", "--batch-size", "2", "--channels", "8", "16", "32"]


@pytest.mark.exercise("9.1", "9.2", "9.3", "9.4")  # it trains a DiT
def test_train_dit_from_the_command_line_writes_loadable_weights(tmp_path, capsys):

    out, ckpt = tmp_path / "dit.npz", tmp_path / "dit_train.npz"
    assert main(["train", "dit", "--steps", "2", "--batch-size", "2", "--width", "16",
                 "--patch", "7", "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    apply, params, cfg, meta = images.load_model(out)
    assert (cfg.patch, cfg.width) == (7, 16) and meta["steps"] == 2 and meta["model"] == "dit"
    assert "saved the EMA weights" in capsys.readouterr().out


def test_train_with_workers_cooldown_v_target_and_p_uncond_records_them(tmp_path):

    out, ckpt = tmp_path / "dit.npz", tmp_path / "dit_train.npz"
    assert main(["train", "unet", "--steps", "2", "--batch-size", "4", "--channels", "8", "16",
                 "32", "--workers", "2", "--cooldown", "1", "--target", "v",
                 "--p-uncond", "0.5", "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    apply, _, _, meta = images.load_model(out)
    assert (meta["workers"], meta["cooldown"], meta["steps"]) == (2, 1, 2)
    assert meta["p_uncond"] == 0.5 and meta["paired"] is False
    assert meta["target"] == "v" and apply is not unet.apply  # wrapped into a noise predictor


def test_train_for_minutes_plans_the_run_records_it_and_refuses_a_spent_budget(tmp_path,
                                                                              capsys,
                                                                              monkeypatch):
    # A fake clock, one second a reading (one at the start, one after each step), so that the
    # numbers do not depend on this machine's speed: --minutes 0.5 is 30 seconds; after 10
    # steps (steps 2-10 took 9 s) 20 s are left, so the plan is 30 steps, a fifth of them the
    # cool-down, and the budget runs out exactly at the plan's end.
    from minidiff import train

    ticks = iter(range(1, 10_000))
    monkeypatch.setattr(train, "_clock", lambda: float(next(ticks)))
    out, ckpt = tmp_path / "u.npz", tmp_path / "u_train.npz"
    argv = ["train", *TINY_UNET[:1], *TINY_UNET[3:], "--minutes", "0.5", "--cooldown", "20%",
            "--warmup", "2", "--out", str(out), "--checkpoint", str(ckpt)]
    assert main(argv) == 0
    _, _, _, meta = images.load_model(out)
    assert (meta["minutes"], meta["steps"], meta["planned_steps"]) == (0.5, 30, 30)
    assert (meta["cooldown"], meta["train_seconds"], meta["images_seen"]) == (6, 30.0, 60)
    # resumed with a budget smaller than what it has trained already: refused, and it says so
    argv[argv.index("--minutes") + 1] = "0.25"
    assert main(argv + ["--overwrite"]) == 2
    assert "has already trained 0.5 min, the whole --minutes 0.25" in _one_error_line(capsys)
    assert main(["train", "classifier", "--minutes", "1", "--out", str(tmp_path / "c.npz")]) == 2
    assert "--minutes is a budget for unet and dit" in _one_error_line(capsys)


def test_train_paired_records_it_and_needs_half_dropped(tmp_path, capsys):

    out, ckpt = tmp_path / "dit.npz", tmp_path / "dit_train.npz"
    common = ["train", "unet", "--steps", "1", "--batch-size", "4", "--channels", "8", "16", "32",
              "--paired", "--out", str(out), "--checkpoint", str(ckpt)]
    assert main(common) == 2
    assert main(common + ["--p-uncond", "0.5"]) == 0
    _, _, _, meta = images.load_model(out)
    assert meta["paired"] is True and meta["p_uncond"] == 0.5
    assert "--paired drops exactly half of the labels: it needs --p-uncond 0.5 (got --p-uncond " \
        "0.1)" in capsys.readouterr().err


def test_sample_with_workers_then_evaluate_from_the_command_line(tmp_path, capsys):
    # A tiny untrained 28x28 U-Net is enough to run the two commands end to end: the file
    # holds uint8 images and balanced labels, and evaluate prints FD, agreement, the spread and
    # FD with the class means aligned.

    cfg = unet.UNetConfig(channels=(4, 8), attention_levels=(1,), head_channels=4, groups=2)
    weights, samples = tmp_path / "tiny.npz", tmp_path / "s.npz"
    images.save_model(weights, unet.init(np.random.default_rng(0), cfg), cfg)
    assert main(["sample", "--weights", str(weights), "--n", "20", "--steps", "2",
                 "--workers", "2", "--out", str(samples)]) == 0
    pics, labels = datasets.load_samples(samples)
    assert pics.shape == (20, 28, 28) and list(np.bincount(labels)) == [2] * 10
    assert main(["evaluate", str(samples), "--classifier",
                 str(PACKAGE.parent / "data/weights/classifier_mnist.npz")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "evaluating" in captured.err  # the progress bar
    assert "images/s -> " in out  # the sampling speed
    assert "20 samples: FD-MNIST" in out and "between classes" in out
    assert "mean moved onto the test digits' class mean: FD-MNIST" in out
    assert main(["sample", "--weights", str(weights), "--n", "10", "--steps", "2",
                 "--guidance-interval", "600", "1000", "--out", str(samples), "--overwrite"]) == 0
    assert "guidance 2.0 at steps 600 <= i < 1000" in capsys.readouterr().out


def test_sample_ideal_copies_training_digits_and_refuses_workers(tmp_path, capsys):
    # `sample --ideal` samples the exact posterior mean of the training set (models/ideal.py):
    # with 10 DDIM steps the last posterior (sigma = 0.01) sits on one training digit, so every
    # sample is a training digit's exact pixels. It runs in one process only.
    from minidiff.datasets import mnist

    out = tmp_path / "ideal.npz"
    assert main(["sample", "--ideal", "--n", "10", "--steps", "10", "--guidance", "1",
                 "--out", str(out)]) == 0
    pics, labels = datasets.load_samples(out)
    train = datasets.to_uint8(mnist("train")[0][:, 0]).reshape(60_000, -1).astype(np.int32)
    flat = pics.reshape(10, -1).astype(np.int32)
    assert all(np.any(np.all(train == row, axis=1)) for row in flat)
    assert main(["sample", "--ideal", "--workers", "2", "--out", str(tmp_path / "o.npz")]) == 2
    assert "runs in one process" in capsys.readouterr().err


# ----------------------------------------------------------------------------- safe to use

def _tiny_unet_file(path):
    cfg = unet.UNetConfig(channels=(4, 8), attention_levels=(1,), head_channels=4, groups=2)
    images.save_model(path, unet.init(np.random.default_rng(0), cfg), cfg)
    return str(path)


def _one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if "it/s]" not in line and "s/it]" not in line]  # progress bars of earlier commands
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_train_without_out_writes_under_out_and_never_the_shipped_weights(tmp_path,
                                                                          monkeypatch):
    # The README's recipes used to overwrite data/weights/ when --out was left out.
    shipped = {name: _digest(path) for name, path in images.SHIPPED.items()}
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY_UNET]) == 0
    assert (tmp_path / "out" / "unet_mnist.npz").exists()
    assert (tmp_path / "out" / "unet_mnist.train.npz").exists()  # its own checkpoint
    assert {name: _digest(path) for name, path in images.SHIPPED.items()} == shipped


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "dit.npz"
    out.write_bytes(b"keep me")
    assert main(["train", *TINY_UNET, "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in _one_error_line(capsys)
    assert out.read_bytes() == b"keep me"
    assert main(["train", *TINY_UNET, "--out", str(out), "--overwrite"]) == 0
    assert images.load_model(out)[3]["steps"] == 1


def test_an_out_folder_that_does_not_exist_fails_before_any_work(tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")
    monkeypatch.setattr(images, "train_mnist", no_training)
    assert main(["train", *TINY_UNET, "--out", str(tmp_path / "nope" / "w.npz")]) == 2
    assert "the folder" in _one_error_line(capsys)
    assert main(["sample", "--n", "10", "--out", str(tmp_path / "nope" / "s.npz")]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_a_checkpoint_refuses_to_resume_a_run_with_other_arguments(tmp_path, capsys):
    # One shared default checkpoint used to let a second run "resume" the first: zero steps
    # trained, and weights whose header recorded the second run's seed (false provenance).
    out, ckpt = tmp_path / "a.npz", tmp_path / "run.npz"
    assert main(["train", *TINY_UNET, "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY_UNET, "--seed", "3", "--lr", "2e-3", "--out",
                 str(tmp_path / "b.npz"), "--checkpoint", str(ckpt)]) == 2
    line = _one_error_line(capsys)
    assert "--seed 0 there, 3 here" in line and "--lr 0.001 there, 0.002 here" in line
    assert not (tmp_path / "b.npz").exists()
    # the same arguments with more steps resume it
    more_steps = [*TINY_UNET[:1], *TINY_UNET[3:], "--steps", "2"]  # the same run, continued
    assert main(["train", *more_steps, "--out", str(tmp_path / "c.npz"),
                 "--checkpoint", str(ckpt)]) == 0
    assert "resuming from" in capsys.readouterr().out


def test_a_run_removes_the_temporary_files_a_killed_save_left(tmp_path):
    out, ckpt = tmp_path / "w.npz", tmp_path / "run.npz"
    stale = tmp_path / ".run.npz.k1ll3d.tmp"  # what atomic_write leaves when killed mid-save
    stale.write_bytes(b"\0" * 1000)
    other = tmp_path / ".other.npz.abc.tmp"  # another file's: not ours to delete
    other.write_bytes(b"x")
    assert main(["train", *TINY_UNET, "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    assert not stale.exists() and other.exists()


def test_ctrl_c_during_training_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(images, "train_mnist", interrupted)
    assert main(["train", *TINY_UNET, "--out", str(tmp_path / "w.npz")]) == 130
    assert "the same command resumes from it" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["sample", "--n", "8"], "multiple of 10"),
    (["sample", "--n", "25"], "multiple of 10"),
    (["sample", "--steps", "2000"], "at most 1000"),
])
def test_sample_counts_that_cannot_be_honoured_are_one_line_errors(argv, message, tmp_path,
                                                                   capsys):
    assert main(argv + ["--out", str(tmp_path / "s.npz")]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "unet", "--target", "velocity"], "--target velocity is not a target of unet"),
    (["train", "mmdit", "--target", "v"], "--target v is not a target of mmdit"),
    (["train", "flow-dit", "--path", "gvp", "--discrete-time"], "defined on the 'vp' path"),
])
def test_a_formulation_that_does_not_exist_is_a_one_line_error(argv, message, tmp_path, capsys):
    # chapter 11's --path / --target / --discrete-time, refused before any work
    assert main(argv + ["--out", str(tmp_path / "m.npz")]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("argv, message", [
    (["sample", "--n", "0"], "expected a positive integer, got '0'"),
    (["sample", "--n", "-10"], "expected a positive integer"),
    (["sample", "--workers", "0"], "expected a positive integer"),
    (["sample", "--guidance", "nan"], "expected a finite number, got 'nan'"),
    (["sample", "--guidance", "inf"], "expected a finite number"),
    (["train", "unet", "--batch-size", "0"], "expected a positive integer"),
    (["train", "unet", "--lr", "-1"], "expected a positive number"),
    (["train", "unet", "--p-uncond", "1.5"], "expected a probability in [0, 1]"),
])
def test_out_of_range_options_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--out", "never-written.npz"])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_files_that_are_not_what_they_claim_get_one_line_errors(tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    assert main(["sample", "--weights", str(text), "--n", "10", "--out",
                 str(tmp_path / "s.npz")]) == 2
    assert "not an .npz (zip) archive" in _one_error_line(capsys)  # was "holds pickled objects"
    assert main(["evaluate", str(text)]) == 2
    assert "not an .npz archive" in _one_error_line(capsys)
    assert main(["sample", "--weights", str(tmp_path / "missing.npz"), "--n", "10",
                 "--out", str(tmp_path / "s.npz")]) == 2
    assert "no checkpoint at" in _one_error_line(capsys)
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) / 2)
    assert main(["evaluate", str(floats)]) == 2
    assert "integer labels" in _one_error_line(capsys)  # used to be truncated silently
    weights = _tiny_unet_file(tmp_path / "unet.npz")
    good = tmp_path / "good.npz"
    datasets.save_samples(good, np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10)
    assert main(["evaluate", str(good), "--classifier", weights]) == 2
    assert "not the MNIST classifier" in _one_error_line(capsys)  # was a KeyError


def test_evaluate_refuses_too_few_images_and_warns_below_a_thousand(tmp_path, capsys):
    few = tmp_path / "few.npz"
    for n in (1, 10):
        datasets.save_samples(few, np.zeros((n, 28, 28), np.uint8), np.arange(n) % 10)
        assert main(["evaluate", str(few)]) == 2
        assert "at least 20" in _one_error_line(capsys)
    datasets.save_samples(few, np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10)
    assert main(["evaluate", str(few)]) == 0
    assert "warning: FD-MNIST from 20 images is biased" in capsys.readouterr().err


def test_debug_shows_the_traceback_instead_of_one_line(tmp_path):
    with pytest.raises(ValueError, match="not an .npz"):
        text = tmp_path / "t.npz"
        text.write_text("x")
        main(["evaluate", str(text), "--debug"])


def test_the_shipped_weights_are_found_from_any_folder_and_sampling_shows_progress(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the repository: the defaults still find data/weights/
    assert main(["sample", "--n", "10", "--steps", "1", "--out", "s.npz"]) == 0
    assert "sampling" in capsys.readouterr().err  # the progress bar
    pics, labels = datasets.load_samples(tmp_path / "s.npz")
    assert pics.shape == (10, 28, 28)


def test_help_shows_each_option_with_its_default_and_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    assert "number of images, a multiple of 10 (equal per class) (default: 1000)" \
        in " ".join(text.split())
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "sample digits from a model file" in text
