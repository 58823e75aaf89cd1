"""Chapter 10: rectified flow — the velocity target and its weighting, SD3's time densities, the
flow ODE's samplers against the sigma frame, straightness and reflow."""

import math

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from minidiff import flow, process, samplers, targets
from minidiff.datasets import GaussianMixture, gmm8

pytestmark = pytest.mark.ch10
PATH = process.Linear()


def coefficients(t):
    return PATH.alpha(t), PATH.sigma(t), PATH.dalpha(t), PATH.dsigma(t)


# ----------------------------------------------------------------------------- the target

def test_velocity_target_is_the_time_derivative_of_the_linear_path(rng):
    # u = d/dt [(1 - t) x0 + t eps] = eps - x0 (Liu et al. 2023, eq. (1) with time reversed).
    x0, eps = rng.standard_normal((2, 5, 3))
    for t in (0.1, 0.5, 0.9):
        h = 1e-6  # central difference: exact for a path linear in t, up to rounding
        dxdt = (PATH.marginal(x0, t + h, eps) - PATH.marginal(x0, t - h, eps)) / (2 * h)
        u = targets.target("velocity", x0, eps, *coefficients(t))
        np.testing.assert_allclose(u, dxdt, atol=1e-8)
        np.testing.assert_allclose(u, eps - x0, atol=1e-12)


def test_flow_loss_is_the_x0_loss_over_t2_and_the_eps_loss_over_one_minus_t_squared(rng):
    # Per example, exact: convert the same velocity prediction to x0 and eps (targets.convert)
    # and compare the three squared errors (the seed's "equals v-prediction up to weighting").
    n = 64
    x0, eps, u_hat = rng.standard_normal((3, n, 4))
    t = rng.uniform(0.02, 0.98, n)
    a, s, da, ds = coefficients(t)
    xt = PATH.marginal(x0, t, eps)
    x0_hat = targets.convert(u_hat, "velocity", "x0", xt, a, s, da, ds)
    eps_hat = targets.convert(u_hat, "velocity", "eps", xt, a, s, da, ds)
    err_u = targets.squared_error(u_hat, targets.target("velocity", x0, eps, a, s, da, ds))
    w = flow.error_factors(t)
    np.testing.assert_allclose(err_u, w["x0"] * targets.squared_error(x0_hat, x0), rtol=1e-10)
    np.testing.assert_allclose(err_u, w["eps"] * targets.squared_error(eps_hat, eps), rtol=1e-10)
    np.testing.assert_allclose(w["x0"], 1 / t**2, rtol=1e-12)
    np.testing.assert_allclose(w["eps"], 1 / (1 - t) ** 2, rtol=1e-12)


# ----------------------------------------------------------------------------- time densities

N_DRAWS = 20000
# Kolmogorov-Smirnov at the 0.1% level: the statistic stays below 1.95 / sqrt(n) for a right CDF.
KS = 1.95 / math.sqrt(N_DRAWS)


def mode_cdf(t, scale):
    # P(f(U) <= t) = P(U >= f^-1(t)) = 1 - f^-1(t), f decreasing (Esser et al. 2024, eq. (20)).
    inv = [optimize.brentq(lambda u, tt=tt: flow._f_mode(u, scale) - tt, 0, 1) for tt in t]
    return 1 - np.asarray(inv)


@pytest.mark.parametrize("name, cdf", [
    ("logit_normal", lambda t: stats.norm.cdf(special.logit(t))),  # eq. (19), m = 0, s = 1
    ("mode", lambda t: mode_cdf(t, 1.29)),  # eq. (20)
    ("cosmap", lambda t: 2 / np.pi * np.arctan(t / (1 - t))),  # eq. (21)
    ("uniform", lambda t: t),
])
def test_time_densities_sample_esser_et_al_section_3_1_and_their_pdfs_are_the_cdfs_slopes(
        name, cdf, rng):
    draws = flow.sample_times(name, N_DRAWS, rng, t_min=0.0)
    assert stats.kstest(draws, cdf).statistic < KS
    sample, pdf = flow.DENSITIES[name]
    assert integrate.quad(pdf, 0, 1, limit=200)[0] == pytest.approx(1.0, abs=1e-4)
    t = np.linspace(0.05, 0.95, 19)
    h = 1e-5
    np.testing.assert_allclose(pdf(t), (cdf(t + h) - cdf(t - h)) / (2 * h), rtol=1e-4)


def test_logit_normal_and_mode_put_more_mass_in_the_middle_than_uniform(rng):
    for name in ("logit_normal", "mode"):
        t = flow.sample_times(name, N_DRAWS, rng)
        assert np.mean((t > 0.25) & (t < 0.75)) > 0.5 + 4 * 0.5 / math.sqrt(N_DRAWS)
    # the mode density stays positive at the ends (its "heavy tails"); the logit-normal's vanishes
    assert flow.mode_pdf(np.array([1e-6, 1 - 1e-6])).min() > 0.1
    assert flow.logit_normal_pdf(np.array([1e-6, 1 - 1e-6])).max() < 1e-10


# ----------------------------------------------------------------------------- sampling

def test_time_grid_is_uniform_and_shifted_by_esser_eq23():
    np.testing.assert_allclose(flow.time_grid(4), [1, 0.75, 0.5, 0.25, 0])
    g = flow.time_grid(2, shift=3.0)
    np.testing.assert_allclose(g, [1, 0.75, 0])  # 3 * 0.5 / (1 + 2 * 0.5)


def test_flow_euler_is_sigma_frame_euler_on_the_mapped_grid(rng):
    # Euler in t on dx/dt = v and chapter 5's Euler in sigma on x / alpha, on s = t / (1 - t):
    # the same steps (both keep x0_hat and eps_hat and move the level), so the same endpoint.
    mix = gmm8()
    x = rng.standard_normal((50, 2))
    ts = np.linspace(0.95, 0.0, 9)
    v = process.oracle(mix, PATH, "velocity")
    end = flow.euler(v, x, ts)
    denoiser = samplers.denoiser_from_path(v, "velocity", PATH)
    np.testing.assert_allclose(samplers.euler(denoiser, x / (1 - ts[0]), flow.sigma_grid(ts)),
                               end, atol=1e-10)


def test_heun_on_the_flow_is_second_order(rng):
    # the error against solve_ivp falls about 4x per doubling of the steps (log-log slope ~ 2)
    mix = gmm8()
    v = process.oracle(mix, PATH, "velocity")
    x1 = rng.standard_normal((20, 2))
    ends = {"t_max": 0.98, "t_min": 0.02}  # the exact velocity is singular at t = 0 and 1
    ref = np.stack([integrate.solve_ivp(lambda t, y: v(y[None], t)[0], (0.98, 0.02), p,
                                        rtol=1e-10, atol=1e-10).y[:, -1] for p in x1])
    errs = [np.abs(flow.heun(v, x1, flow.time_grid(n, **ends)) - ref).max()
            for n in (16, 32, 64)]
    slopes = -np.diff(np.log2(errs))
    assert np.all(slopes > 1.7), slopes


# ----------------------------------------------------------------------------- straightness

@pytest.mark.exercise("10.4")
def test_straightness_of_a_constant_velocity_is_zero_and_of_a_gaussian_flow_is_closed_form(rng):
    x1 = rng.standard_normal((200, 3))
    s0, _ = flow.straightness(lambda x, t: np.ones_like(x), x1, steps=10)
    assert s0 == pytest.approx(0.0, abs=1e-24)
    # Data N(0, c² I): the exact flow is x(t) = sigma_t x1 with sigma_t² = (1-t)² c² + t², so
    # S = D int (1 - c - sigma_t')² dt (Liu et al. 2023, sec. 2.2) with E|x1|² = D.
    c, d = 0.3, 3
    mix = GaussianMixture.isotropic(np.ones(1), np.zeros((1, d)), c)
    v = process.oracle(mix, PATH, "velocity")

    def sigma_dot(t):
        return (t - (1 - t) * c * c) / math.sqrt((1 - t) ** 2 * c * c + t * t)
    exact = d * integrate.quad(lambda t: (1 - c - sigma_dot(t)) ** 2, 0, 1)[0]
    big = rng.standard_normal((20000, d))
    s, x0 = flow.straightness(v, big, ts=flow.time_grid(400, t_max=1 - 1e-6, t_min=1e-6))
    # Monte Carlo over E|x1|²: relative std sqrt(2 / (D n)) = 0.006; Euler's bias O(1/steps)
    assert s == pytest.approx(exact, rel=0.03)
    np.testing.assert_allclose(x0, c * big, atol=2e-2)


def test_reflow_straightens_the_exact_flow_of_a_mixture(rng):
    # The 1-rectified flow is the exact one (the oracle); its coupling (Heun, 100 steps), then a
    # 2-rectified MLP trained on the pairs: S falls, and so does one Euler step's distance to
    # the exact ODE's endpoint (the coupling itself).
    mix = gmm8()
    exact = process.oracle(mix, PATH, "velocity")
    ends = {"t_max": 1 - 1e-4, "t_min": 1e-4}  # the exact velocity is singular at t = 0 and 1
    grid = flow.time_grid(100, **ends)
    x1 = rng.standard_normal((4000, 2))
    x0 = flow.reflow_pairs(exact, x1, ts=grid)
    s_before, _ = flow.straightness(exact, x1[:1000], ts=grid)
    params, _ = flow.fit_toy(flow.batches(x0, 256, pairs=x1), 1000, seed=0)
    student = lambda x, t: flow.toy_net(params, x, np.float32(t))  # noqa: E731
    x1_new = rng.standard_normal((1000, 2))
    s_after, _ = flow.straightness(student, x1_new)
    target = flow.reflow_pairs(exact, x1_new, ts=grid)
    one_before = flow.one_step_error(exact, x1_new, target, **ends)
    one_after = flow.one_step_error(student, x1_new, target)
    assert s_after < 0.25 * s_before, (s_before, s_after)
    assert one_after < 0.25 * one_before, (one_before, one_after)


def test_a_flow_trained_on_the_mixture_learns_its_exact_velocity(rng):
    # Flow matching's minimiser is the marginal velocity u* = E[eps - x0 | x_t] (process.oracle),
    # and its loss exceeds the floor E|u - u*|² by exactly E|v - u*|². A 1,000-step MLP's excess
    # stays below 10% of the floor at every t (measured: 0.1-5.3%, floors 1.9-5.9); predicting 0
    # instead costs E|u*|² (0.08-4.2).
    mix = gmm8()
    params, _ = flow.fit_toy(flow.batches(mix.sample(20000, rng), 256), 1000, seed=0)
    exact = process.oracle(mix, PATH, "velocity")
    x0 = mix.sample(4000, rng)
    learned = flow.velocity_error(lambda x, t: flow.toy_net(params, x, np.float32(t)), exact, x0,
                                  np.random.default_rng(1))
    noise = np.random.default_rng(1)  # the same draws as velocity_error's
    for t in learned:
        eps = noise.standard_normal(x0.shape)
        floor = np.mean(np.sum((eps - x0 - exact(PATH.marginal(x0, t, eps), t)) ** 2, axis=1))
        assert learned[t] < 0.1 * floor, (t, learned[t], floor)


# ----------------------------------------------------------------------------- bad input

def test_bad_flow_arguments_are_refused_by_name(rng):
    with pytest.raises(ValueError, match="`density`"):
        flow.sample_times("gamma", 3, rng)
    with pytest.raises(ValueError, match="`steps`"):
        flow.time_grid(0)
    with pytest.raises(ValueError, match="`shift`"):
        flow.time_grid(4, shift=0.0)
    with pytest.raises(ValueError, match="`scale`"):
        flow.mode_sample(3, rng, scale=2.0)
    with pytest.raises(ValueError, match="t < 1"):
        flow.sigma_grid([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="`pairs`"):
        flow.batches(np.zeros((4, 2)), 2, pairs=np.zeros((3, 2)))
