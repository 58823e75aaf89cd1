"""An example hidden test: Langevin on a Gaussian the visible tests do not use."""

import numpy as np
import pytest

from minidiff import score

pytestmark = pytest.mark.ch1


@pytest.mark.exercise("1.1")
def test_langevin_on_a_shifted_narrow_gaussian_has_its_mean_and_ula_variance():
    # target N(3, 0.5²): 4,000 chains, 600 steps of eps = 0.01; the stationary variance is ULA's
    # s² / (1 - eps / (4 s²)) (score.ula_stationary_cov), the standard error of the sample mean
    # 0.5 / sqrt(4000) = 0.008 and of the variance 0.25 sqrt(2 / 4000) = 0.0056: the tolerance
    # is five of each.
    rng = np.random.default_rng(11)
    x = score.langevin(lambda x: -(x - 3.0) / 0.25, rng.standard_normal((4000, 1)), 0.01, 600,
                       rng)
    assert x.mean() == pytest.approx(3.0, abs=5 * 0.008)
    assert x.var() == pytest.approx(0.25 / (1 - 0.01 / (4 * 0.25)), abs=5 * 0.0056)
