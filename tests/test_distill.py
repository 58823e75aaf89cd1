"""Chapter 12 (in progress): progressive distillation's target against the exact teacher; the
consistency function's boundary condition and the multistep consistency sampler."""

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


def test_the_consistency_function_meets_its_boundary_condition_exactly(rng):
    # f(x, sigma_min) = x for any network and any weights: c_skip = 1 and c_out = 0 there.
    f = distill.consistency_function(lambda p, x, c: p * np.tanh(x) + np.reshape(c, (-1, 1)),
                                     sigma_min=0.002)
    x = rng.standard_normal((7, 3))
    assert np.array_equal(f(123.0, x, 0.002), x)
    assert np.array_equal(f(-4.0, x, np.full(7, 0.002)), x)
    c_skip, c_out, _ = distill.consistency_scalings(np.array([0.002, 0.5, 80.0]))
    assert c_skip[0] == 1.0 and c_out[0] == 0.0 and c_skip[2] < 1e-4 and c_out[2] > 0.49
    with pytest.raises(ValueError, match="sigma_min"):
        distill.consistency_scalings(0.001)


def test_multistep_consistency_sampling_with_the_exact_function_keeps_the_data_law(rng):
    # Gaussian data N(0, s² I): the ODE's end at sigma_min of the trajectory through x at sigma is
    # f*(x, sigma) = x sqrt((s² + sigma_min²) / (s² + sigma²)), the exact consistency function.
    # One step from N(0, (s² + 80²) I) gives N(0, s² + sigma_min²) exactly, and each re-noising
    # to tau and f* keeps it. Sample variance of n = 40,000 draws (x 2 coordinates): standard
    # error var sqrt(2 / 80,000) = 0.5%; tolerance 5 standard errors.
    s2, smin = 0.3, 0.002
    f_exact = lambda x, sigma: x * np.sqrt((s2 + smin**2) / (s2 + sigma**2))  # noqa: E731
    x_T = 80.0 * rng.standard_normal((40_000, 2))
    for taus in ([], [2.0], [5.0, 1.0, 0.2]):
        out = distill.multistep_sample(f_exact, x_T, 80.0, taus, rng, smin)
        assert np.var(out) == pytest.approx(s2 + smin**2, rel=5 * np.sqrt(2 / out.size))
    with pytest.raises(ValueError, match="taus"):
        distill.multistep_sample(f_exact, x_T, 80.0, [1.0, 2.0], rng)
