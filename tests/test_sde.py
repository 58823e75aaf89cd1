"""Chapter 4: SDE coefficients, reverse SDE / PF-ODE / PC samplers, exact likelihood."""

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.stats import ks_2samp

from minidiff import datasets, ddpm, process, sde
from minidiff.models import mlp

pytestmark = pytest.mark.ch4

PATHS = {"vp": process.VP(), "subvp": process.SubVP(), "ve": process.VE(0.01, 50.0)}


def exact_score(mixture, path):
    return process.oracle(mixture, path, "score")


def ks_min_pvalue(x, y):
    """Smallest two-sample KS p-value over four 1D projections (axes and diagonals)."""
    dirs = np.array([[1, 0], [0, 1], [1, 1], [1, -1]]) / np.array([1, 1, 2**0.5, 2**0.5])[:, None]
    return min(ks_2samp(x @ d, y @ d).pvalue for d in dirs)


@pytest.fixture(scope="module")
def mixture():
    return datasets.GaussianMixture.isotropic([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [0.3, 0.5])


def test_f_and_g2_match_each_papers_closed_form():
    t = np.linspace(0.01, 1, 50)
    vp, subvp, ve = PATHS["vp"], PATHS["subvp"], PATHS["ve"]
    beta = 0.1 + t * (20 - 0.1)
    big_b = 0.1 * t + 0.5 * (20 - 0.1) * t**2
    # Song et al. 2021, eqs. (11)-(12) and (9): VP f = -beta/2, g² = beta; sub-VP the same drift
    # and g² = beta (1 - exp(-2 B)); VE f = 0, g² = d sigma²/dt = 2 sigma² log(smax / smin).
    np.testing.assert_allclose(vp.f(t), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(vp.g2(t), beta, rtol=1e-10)
    np.testing.assert_allclose(subvp.f(t), -0.5 * beta, rtol=1e-12)
    np.testing.assert_allclose(subvp.g2(t), beta * (1 - np.exp(-2 * big_b)), rtol=1e-10)
    np.testing.assert_allclose(ve.f(t), 0.0)
    np.testing.assert_allclose(ve.g2(t), 2 * ve.sigma(t) ** 2 * np.log(50 / 0.01), rtol=1e-12)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_path_derivatives_match_finite_differences(name):
    path, t, h = PATHS[name], np.array([0.1, 0.5, 0.9]), 1e-6
    np.testing.assert_allclose(path.dalpha(t), (path.alpha(t + h) - path.alpha(t - h)) / (2 * h),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(path.dsigma(t), (path.sigma(t + h) - path.sigma(t - h)) / (2 * h),
                               rtol=1e-6)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_marginals_match_numerical_integration_of_the_sde_moments(name):
    # For dx = f x dt + g dw, the mean coefficient m and variance v obey m' = f m, v' = 2 f v + g².
    path = PATHS[name]
    t0 = 1e-4
    y0 = [float(path.alpha(t0)), float(path.sigma(t0)) ** 2]
    sol = solve_ivp(lambda t, y: [path.f(t) * y[0], 2 * path.f(t) * y[1] + path.g2(t)],
                    (t0, 1.0), y0, rtol=1e-11, atol=1e-13, dense_output=True)
    ts = np.linspace(0.05, 1, 20)
    m, v = sol.sol(ts)
    np.testing.assert_allclose(m, path.alpha(ts), rtol=1e-7)
    np.testing.assert_allclose(v, path.sigma(ts) ** 2, rtol=1e-7)
    if name == "vp":  # alpha = exp(-1/2 int beta) in closed form
        np.testing.assert_allclose(m, np.exp(-0.5 * (0.1 * ts + 0.5 * 19.9 * ts**2)), rtol=1e-7)


def test_ddpm_chain_is_the_discretised_vp_sde():
    # beta_i = beta(t_i) / T with t_i = (i+1)/T; then -log alpha_bar_i = sum -log(1 - beta_j),
    # which exceeds B(t_i) ≈ sum beta_j by at most sum beta_j² (as beta - log(1 - beta) ... <= beta²
    # for beta <= 1/2), plus the Riemann-sum error of the linear beta, at most beta_max / T.
    sched, vp = ddpm.schedule("linear"), process.VP()
    t = np.arange(1, 1001) / 1000
    gap = np.abs(np.log(sched.alpha_bar) - np.log(vp.alpha(t) ** 2))
    bound = np.cumsum(sched.betas**2) + 20 / 1000
    assert np.all(gap <= bound)
    np.testing.assert_allclose(sched.betas * 1000, vp.beta(np.linspace(0, 1, 1000)), rtol=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.exercise("4.1")
def test_reverse_sde_with_the_exact_score_reproduces_the_mixture(mixture, name):
    rng, path = np.random.default_rng(1), PATHS[name]
    t_end = 1e-3
    x = sde.euler_maruyama(exact_score(mixture, path), path,
                           float(path.sigma(1.0)) * rng.standard_normal((2000, 2)), rng,
                           steps=1000, t_end=t_end)
    target = mixture.noised(float(path.alpha(t_end)), float(path.sigma(t_end)))
    # KS on four projections against 2,000 exact draws, each at level 0.001.
    assert ks_min_pvalue(x, target.sample(2000, rng)) > 1e-3


@pytest.mark.exercise("4.1", "4.3")
def test_predictor_corrector_reproduces_the_mixture(mixture):
    rng, path = np.random.default_rng(2), PATHS["vp"]
    x = sde.predictor_corrector(exact_score(mixture, path), path, rng.standard_normal((2000, 2)),
                                rng, steps=500, snr=0.16)
    assert ks_min_pvalue(x, mixture.noised(float(path.alpha(1e-3)),
                                           float(path.sigma(1e-3))).sample(2000, rng)) > 1e-3


@pytest.mark.exercise("4.3")
def test_one_corrector_step_has_score_sdes_step_size():
    # With the exact score the corrector leaves p_t unchanged whatever its step size, so the
    # distribution test above cannot see a wrong one. One step, replayed by hand: Song et al.
    # 2021, Algorithm 5 (score_sde's LangevinCorrector), e = 2 alpha_i (snr |z| / |s|)^2 with
    # alpha_i = 1 - beta_i = exp(-int_{t_prev}^t beta) on the VP path.
    path, t, t_prev, snr = process.VP(), 0.5, 0.498, 0.16
    x = np.random.default_rng(0).standard_normal((64, 2))
    score = lambda x, t: -1.3 * x + 0.2  # noqa: E731  (any fixed field)
    out = sde.langevin_corrector(score, path, x, t, t_prev, np.random.default_rng(7), snr)
    z = np.random.default_rng(7).standard_normal(x.shape)
    s = score(x, t)
    big_b = lambda u: 0.1 * u + 0.5 * 19.9 * u * u  # noqa: E731  int_0^u beta, written out
    alpha_i = np.exp(-(big_b(t) - big_b(t_prev)))
    assert alpha_i == pytest.approx(1 - 10.05 * 0.002, abs=5e-4)  # 1 - beta(t) dt = 0.9799
    ratio = np.linalg.norm(z, axis=1).mean() / np.linalg.norm(s, axis=1).mean()
    e = 2 * alpha_i * (snr * ratio) ** 2
    np.testing.assert_allclose(out, x + e * s + np.sqrt(2 * e) * z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", ["heun", "rk45"])
@pytest.mark.exercise("4.2")
def test_pf_ode_reproduces_the_mixture(mixture, solver):
    rng, path = np.random.default_rng(3), PATHS["vp"]
    drift = sde.pf_ode_drift(exact_score(mixture, path), path)
    z = rng.standard_normal((2000, 2))
    if solver == "heun":
        x = sde.heun(drift, z, np.linspace(1.0, 1e-3, 200))
    else:
        x, _ = sde.solve_ode(drift, z, 1.0, 1e-3, rtol=1e-5, atol=1e-5)
    target = mixture.noised(float(path.alpha(1e-3)), float(path.sigma(1e-3)))
    assert ks_min_pvalue(x, target.sample(2000, rng)) > 1e-3


@pytest.mark.exercise("4.2")
def test_pf_ode_maps_data_to_noise_and_back(mixture, rng):
    path = PATHS["vp"]
    drift = sde.pf_ode_drift(exact_score(mixture, path), path)
    x0 = mixture.sample(200, rng)
    z, _ = sde.solve_ode(drift, x0, 1e-3, 1.0, rtol=1e-8, atol=1e-8)
    back, _ = sde.solve_ode(drift, z, 1.0, 1e-3, rtol=1e-8, atol=1e-8)
    assert np.abs(back - x0).max() < 1e-5  # within (a few hundred times) the solver tolerance
    assert np.abs(z).std() > 0.5  # ... and the forward map really went somewhere


@pytest.mark.exercise("4.2")
def test_pf_ode_likelihood_of_a_gaussian_matches_the_analytic_density(rng):
    mu, cov = np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]])
    gauss = datasets.GaussianMixture([1.0], [mu], [cov])
    path, t_eps = PATHS["vp"], 1e-5
    score = exact_score(gauss, path)
    drift = sde.pf_ode_drift(score, path)

    def divergence(x, t):  # div h = D f - ½ g² div s, with the closed-form div s
        noisy = gauss.noised(float(path.alpha(t)), float(path.sigma(t)))
        return 2 * path.f(t) - 0.5 * path.g2(t) * noisy.score_divergence(x)

    x = gauss.sample(50, rng)
    prior = gauss.noised(float(path.alpha(1.0)), float(path.sigma(1.0))).log_prob
    logp, _, _ = sde.log_likelihood(drift, divergence, x, prior, t_eps=t_eps, rtol=1e-9,
                                    atol=1e-9)
    exact = gauss.noised(float(path.alpha(t_eps)), float(path.sigma(t_eps))).log_prob(x)
    assert np.abs(logp - exact).max() < 1e-4
    # The usual standard-normal prior in place of the exact p_1 costs a little (measured 0.015
    # nats here: p_1 still carries alpha(1) = 0.0066 of the data's mean and covariance).
    logp_std, _, _ = sde.log_likelihood(drift, divergence, x, lambda z: sde.gaussian_logp(z, 1.0),
                                        t_eps=t_eps, rtol=1e-9, atol=1e-9)
    assert 1e-4 < np.abs(logp_std - exact).max() < 0.05


def test_exact_divergence_by_autograd_matches_closed_form(rng):
    gm = datasets.gmm8().noised(0.8, 0.5)
    score = lambda x, t: autograd.elementwise_grad(lambda y: anp.sum(gm.log_prob(y)))(x)
    x = rng.normal(size=(20, 2))
    np.testing.assert_allclose(sde.exact_divergence(score)(x, 0.5), gm.score_divergence(x),
                               rtol=1e-9)


@pytest.mark.exercise("4.4")
def test_hutchinson_estimator_is_unbiased(rng):
    params = mlp.init(rng, dim=16, hidden=32, depth=1, emb_dim=4, dtype=np.float64)
    fn = lambda x, t: mlp.apply(params, x, t) - 2.0 * x  # divergence near -32, far from 0
    x = rng.normal(size=(3, 16))
    exact = sde.exact_divergence(fn)(x, 0.3)
    estimates = np.stack([sde.hutchinson_divergence(fn, sde.rademacher((1, 3, 16), rng))(x, 0.3)
                          for _ in range(2000)])  # (2000, 3): 2000 single-probe estimates
    se = estimates.std(0) / np.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(0) - exact) < 4 * se)
    assert np.all(se < 0.01 * np.abs(exact))  # the estimate is informative


def test_bits_per_dim_and_dequantisation(rng):
    # A uniform density on [-1, 1]^D has log p = -D log 2; the dequantised 8-bit data then costs
    # exactly 8 bits per dimension.
    d = 784
    assert np.isclose(sde.bits_per_dim(-d * np.log(2.0), d), 8.0)
    u = rng.integers(0, 256, size=(10, d))
    x = sde.dequantize(u, rng)
    assert np.all(np.floor((x + 1) * 128) == u) and x.min() >= -1 and x.max() < 1


def test_bad_input_is_named(mixture, rng):
    with pytest.raises(ValueError, match=r"`t` must lie in \[0, 1\]"):
        process.VP().alpha(1.5)
    with pytest.raises(ValueError, match="need 0 <= t_end < t_start <= 1"):
        sde.euler_maruyama(lambda x, t: x, process.VP(), np.zeros((2, 2)), rng, t_end=1.0)
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        sde.predictor_corrector(lambda x, t: x, process.VP(), np.zeros((2, 2)), rng, steps=0)
