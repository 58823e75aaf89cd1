"""Sigma-grid samplers with the exact mixture denoiser: convergence and order."""

import numpy as np
import pytest
from scipy.stats import ks_2samp

from minidiff import datasets, process, samplers

pytestmark = pytest.mark.ch5


@pytest.fixture(scope="module")
def mixture():
    return datasets.GaussianMixture.isotropic([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.5, 0.4])


def denoiser(mixture):
    return lambda x, sigma: mixture.posterior_mean(x, 1.0, sigma)  # E[x0 | x0 + sigma eps = x]


def ks_min_pvalue(x, y):
    dirs = np.array([[1, 0], [0, 1], [1, 1], [1, -1]]) / np.array([1, 1, 2**0.5, 2**0.5])[:, None]
    return min(ks_2samp(x @ d, y @ d).pvalue for d in dirs)


@pytest.mark.exercise("5.2")
def test_karras_grid_is_eq5():
    s = samplers.karras_sigmas(5, 0.002, 80.0, rho=7.0)
    assert s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0
    np.testing.assert_allclose(np.diff(s[:-1] ** (1 / 7)), np.diff(s[:-1] ** (1 / 7))[0])


@pytest.mark.parametrize("name", [
    "euler", pytest.param("heun", marks=pytest.mark.exercise("5.3")),
    pytest.param("dpm_solver_pp_2m", marks=pytest.mark.exercise("5.4")), "euler_ancestral",
    pytest.param("heun_churn", marks=pytest.mark.exercise("5.3"))])
@pytest.mark.exercise("5.2")
def test_samplers_with_the_exact_denoiser_reproduce_the_mixture(mixture, name):
    rng = np.random.default_rng(11)
    sigmas = samplers.karras_sigmas(256 if name in ("euler", "euler_ancestral") else 64,
                                    0.002, 20.0)
    x = 20.0 * rng.standard_normal((2000, 2))
    D = denoiser(mixture)
    if name == "euler_ancestral":
        out = samplers.euler_ancestral(D, x, sigmas, rng)
    elif name == "heun_churn":
        out = samplers.heun(D, x, sigmas, rng=rng, churn=10.0)
    else:
        out = getattr(samplers, name)(D, x, sigmas)
    # Four KS tests at level 0.001 each against 2,000 exact draws.
    assert ks_min_pvalue(out, mixture.sample(2000, rng)) > 1e-3


@pytest.mark.exercise("5.2", "5.3", "5.4")
def test_orders_of_convergence(mixture):
    # Error at the end of the ODE against a 2,000-step Heun reference from the same noise, on
    # Karras grids that stop at sigma_min (the last step to 0 is a plain Euler step in every
    # method and would hide the order). Fit the log-log slope over 8..128 steps.
    rng = np.random.default_rng(12)
    D = denoiser(mixture)
    x = 20.0 * rng.standard_normal((300, 2))
    grid = lambda n: samplers.karras_sigmas(n, 0.05, 20.0)[:-1]
    ref = samplers.heun(D, x, grid(2000))
    steps = np.array([8, 16, 32, 64, 128])
    slopes = {}
    for name in ["euler", "heun", "dpm_solver_pp_2m", "dpm_solver_pp_3m"]:
        errs = [np.sqrt(np.mean(np.sum((getattr(samplers, name)(D, x, grid(n)) - ref) ** 2, 1)))
                for n in steps]
        slopes[name] = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    # Measured: -1.02, -2.16, -2.13, -3.34 (3M over 8..128; -3.1 over 32..128, where k-diffusion's
    # coefficient on the second difference, half of ours, gives -1.9).
    assert -1.2 < slopes["euler"] < -0.85, slopes
    assert -2.5 < slopes["heun"] < -1.8, slopes
    assert -2.5 < slopes["dpm_solver_pp_2m"] < -1.8, slopes
    assert slopes["dpm_solver_pp_3m"] < -2.8, slopes


def test_dpm_solver_pp_3m_is_third_order_on_gaussian_data_where_the_ode_is_solved_exactly():
    # Data N(0, 0.25 I): D(x, s) = 0.25 / (0.25 + s²) x and the ODE's solution is x(s) = x(s0)
    # sqrt((0.25 + s²) / (0.25 + s0²)), exact. On grids uniform in log sigma from 20 to 0.05 the
    # error at 32, 64, 128 steps falls at least 8x per doubling (measured slope -4.2, faster than
    # third order for this linear D; Heun -2.0).
    rng = np.random.default_rng(3)
    x = 20.0 * rng.standard_normal((50, 2))
    exact = x * np.sqrt((0.25 + 0.05**2) / (0.25 + 400.0))
    steps = np.array([32, 64, 128])
    errs = [np.abs(samplers.dpm_solver_pp_3m(lambda y, s: 0.25 / (0.25 + s * s) * y, x,
                                              np.geomspace(20.0, 0.05, n + 1)) - exact).max()
            for n in steps]
    assert np.polyfit(np.log(steps), np.log(errs), 1)[0] < -2.8, errs


@pytest.mark.exercise("5.2")
def test_ancestral_with_eta_zero_is_euler(mixture, rng):
    D, x = denoiser(mixture), rng.normal(size=(10, 2)) * 10
    sigmas = samplers.karras_sigmas(10, 0.01, 10.0)
    np.testing.assert_allclose(samplers.euler_ancestral(D, x, sigmas, rng, eta=0.0),
                               samplers.euler(D, x, sigmas))


def test_bad_input_is_named(rng):
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.euler(lambda x, s: x, np.zeros((2, 2)), [0.0, 1.0])
    with pytest.raises(ValueError, match="need 0 < `sigma_min` < `sigma_max`"):
        samplers.karras_sigmas(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="`rng` is needed"):
        samplers.heun(lambda x, s: x, np.zeros((2, 2)), [1.0, 0.0], churn=1.0)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
@pytest.mark.parametrize("path", [process.VP(), process.Linear()], ids=["vp", "linear"])
def test_any_path_model_becomes_a_sigma_frame_denoiser(mixture, path, kind, rng):
    # The exact model of a path, in any parametrisation, is the exact denoiser E[x0 | x0 + s eps].
    oracle = process.oracle(mixture, path, kind)
    D = samplers.denoiser_from_path(lambda xt, t: oracle(xt, np.float64(t)), kind, path)
    x = 3 * rng.normal(size=(20, 2))
    for s in [0.05, 0.7, 10.0]:
        np.testing.assert_allclose(D(x, s), mixture.posterior_mean(x, 1.0, s), atol=1e-9)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_eta0_is_euler_on_the_probability_flow_ode_in_the_sigma_frame(mixture, spacing):
    # DDIM's deterministic update x_j = alpha_j x0_hat + sigma_j eps, divided by alpha_j, is
    # y_j = x0_hat + s_j eps with y = x / alpha and s = sigma / alpha; Euler's step on
    # dy/ds = (y - D(y, s)) / s = eps is y_j = y_i + (s_j - s_i) eps: the same point (Song, Meng &
    # Ermon 2021, sec. 4.3; Karras et al. 2022, sec. 3). Both run here on one grid with the exact
    # mixture denoiser, through every conversion the image samplers use; they agree to float64.
    from minidiff import ddpm

    sched = ddpm.schedule("linear")
    path = sched.path
    tau = ddpm.ddim_timesteps(sched.T, 20, spacing)
    x_T = np.random.default_rng(3).standard_normal((200, 2))
    eps_oracle = process.oracle(mixture, path, "eps")
    ddim = ddpm.ddim_sample(lambda x, i: eps_oracle(x, i), sched, x_T, steps=20,
                            spacing=spacing)
    sigmas = np.append(path.ratios[tau[::-1]], 0.0)  # the same levels, high to low, then 0
    D = samplers.denoiser_from_path(process.oracle(mixture, path, "x0"), "x0", path)
    euler = samplers.euler(D, x_T / path.alpha(int(tau[-1])), sigmas)
    np.testing.assert_allclose(euler, ddim, rtol=0, atol=1e-9)


def test_euler_ancestral_with_eta_one_adds_ddpm_posterior_variance(rng):
    # DDPM's posterior q(x_{t-1} | x_t, x0) has variance beta~_t (Ho et al. 2020, eq. (7)); in the
    # sigma frame y = x / alpha_{t-1} that is beta~_t / alpha_bar_{t-1}, at the levels
    # s = sigma_t / alpha_t -> s_next = sigma_{t-1} / alpha_{t-1}.
    from minidiff import ddpm

    sched = ddpm.schedule("linear")
    for i in (1, 10, 300, 999):
        s, s_next = sched.path.ratios[i], sched.path.ratios[i - 1]
        down, up = samplers.ancestral_levels(s, s_next, eta=1.0)
        assert up**2 == pytest.approx(sched.beta_tilde[i] / sched.alpha_bar[i - 1], rel=1e-10)
        assert down**2 + up**2 == pytest.approx(s_next**2, rel=1e-12)
    # and the sampler adds exactly that noise: with D = x the slope is zero, x = up * z
    out = samplers.euler_ancestral(lambda x, s: x, np.zeros((5, 2)), np.array([2.0, 1.5]),
                                   np.random.default_rng(4))
    z = np.random.default_rng(4).standard_normal((5, 2))
    np.testing.assert_allclose(out, samplers.ancestral_levels(2.0, 1.5)[1] * z, rtol=1e-14)


@pytest.mark.exercise("5.4")
def test_dpm_solver_pp_2m_matches_lu_et_al_algorithm_2_worked_by_hand():
    # Algorithm 2 of Lu et al. 2022 (DPM-Solver++(2M)) with alpha = 1, lambda = -log sigma, on
    # the uneven grid 4 -> 2 -> 0.5 -> 0 (h1 = log 2, h2 = log 4, so r = h1 / h2 = 1/2: inverting
    # r changes the answer), for a denoiser that depends on x and sigma:
    #   x1 = (s1/s0) x0 - (e^{-h1} - 1) D(x0, s0)
    #   x2 = (s2/s1) x1 - (e^{-h2} - 1) ((1 + 1/(2r)) D(x1, s1) - 1/(2r) D(x0, s0))
    #   x3 = D(x2, s2)                                    (the step to sigma = 0)
    D = lambda x, s: 0.3 * x + np.sin(s)  # noqa: E731
    s0, s1, s2, x0 = 4.0, 2.0, 0.5, np.array([[1.7, -0.4]])
    h1, h2 = np.log(s0 / s1), np.log(s1 / s2)
    r = h1 / h2
    x1 = (s1 / s0) * x0 - (np.exp(-h1) - 1) * D(x0, s0)
    x2 = (s2 / s1) * x1 - (np.exp(-h2) - 1) * ((1 + 1 / (2 * r)) * D(x1, s1)
                                               - 1 / (2 * r) * D(x0, s0))
    expected = D(x2, s2)
    got = samplers.dpm_solver_pp_2m(D, x0, np.array([s0, s1, s2, 0.0]))
    np.testing.assert_allclose(got, expected, rtol=1e-14)
