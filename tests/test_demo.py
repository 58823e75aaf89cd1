"""`make demo`: every chapter's headline experiment, run small, through the command line."""

import pytest

from minidiff import demo
from minidiff.__main__ import main


@pytest.mark.exercise("1.1", "1.3", "8.1", "9.1", "9.2", "9.3", "9.4")  # chapters 1, 8 and 9
def test_demo_runs_fast_and_reports_what_it_measured(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "weight of the heavy mode" in printed and "relative score error" in printed
    assert {p.name for p in tmp_path.iterdir()} >= {"01_langevin_weights.png", "01_ncsn_gmm8.png",
                                                    "06_unet_samples.png", "08_prompts.png",
                                                    "09_dit_samples.png"}
    assert "U-Net: 20 samples" in printed and "DiT: 20 samples" in printed
    assert "24 samples of 6 prompts" in printed
    assert "SDE, w = sigma_t" in printed and (tmp_path / "11_sigma.png").exists()
    assert "consistency model, 1 evaluation" in printed and (tmp_path / "12_students.png").exists()
    assert "demo took" in printed


def test_run_refuses_an_output_path_that_is_a_file(tmp_path):
    # run() makes its folder; a file in the way is an error before any work
    blocker = tmp_path / "figures"
    blocker.write_text("not a folder")
    with pytest.raises(FileExistsError):
        demo.run(blocker, fast=True)
