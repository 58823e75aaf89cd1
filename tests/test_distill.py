"""Chapter 12 (in progress): progressive distillation's target, against the exact teacher."""

import numpy as np
import pytest

from minidiff import distill, process
from minidiff.datasets import GaussianMixture

pytestmark = pytest.mark.ch12
MIX = GaussianMixture.isotropic([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], 0.35)


@pytest.mark.parametrize("path", [process.VP(), process.GVP()], ids=["vp", "gvp"])
def test_one_student_step_with_the_target_lands_where_two_teacher_steps_do(path, rng):
    # Salimans & Ho 2022, Algorithm 2, with the exact mixture teacher (float64): the student's
    # DDIM step from t to t'' with x_tilde reproduces the teacher's t -> t' -> t'' (1e-12).
    teacher = process.oracle(MIX, path, "x0")
    z = rng.standard_normal((500, 2))
    for t, t_mid, t_next in ((0.9, 0.7, 0.5), (0.5, 0.4, 0.3), (0.2, 0.15, 0.1)):
        coef = [float(f(t)) for f in (path.alpha, path.sigma)]
        coef_next = [float(f(t_next)) for f in (path.alpha, path.sigma)]
        z_next = distill.teacher_two_steps(teacher, z, path, t, t_mid, t_next)
        x_tilde = distill.distillation_target(z, z_next, *coef, *coef_next)
        np.testing.assert_allclose(distill.ddim_step(x_tilde, z, *coef, *coef_next), z_next,
                                   rtol=1e-12, atol=1e-12)
        # and it is not the teacher's own prediction at t (two steps are not one)
        assert np.abs(x_tilde - teacher(z, t)).max() > 1e-3


def test_a_ddim_step_with_the_true_data_follows_the_path(rng):
    # With x_hat = x0 the implied noise is the true eps, so the step lands on the path's z_s.
    path = process.GVP()
    x0, eps = rng.standard_normal((2, 10, 2))
    z_t, z_s = path.marginal(x0, 0.8, eps), path.marginal(x0, 0.3, eps)
    np.testing.assert_allclose(
        distill.ddim_step(x0, z_t, path.alpha(0.8), path.sigma(0.8), path.alpha(0.3),
                          path.sigma(0.3)), z_s, atol=1e-12)
