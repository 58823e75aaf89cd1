"""Chapter 3: schedules, the forward chain, the posterior, the bound, and the samplers."""

import numpy as np
import pytest
from scipy.stats import ks_2samp

from minidiff import datasets, ddpm, process, train
from minidiff.models import mlp

pytestmark = pytest.mark.ch3


@pytest.fixture(scope="module")
def mixture():
    return datasets.GaussianMixture.isotropic([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [0.3, 0.5])


@pytest.fixture(scope="module")
def sched():
    return ddpm.schedule("linear")


def exact_eps(mixture, sched):
    eps = process.oracle(mixture, sched.path, "eps")
    return lambda x, i: eps(x, np.int64(i))


def ks_pvalues(x, y):
    """Two-sample Kolmogorov-Smirnov p-values of four 1D projections (axes and diagonals)."""
    dirs = np.array([[1, 0], [0, 1], [1, 1], [1, -1]]) / np.array([1, 1, 2**0.5, 2**0.5])[:, None]
    return np.array([ks_2samp(x @ d, y @ d).pvalue for d in dirs])


# Tolerance of the sampler tests: each of the four projections must pass a KS test at level
# 0.001 (family-wise 0.004) against 2,000 exact samples; a 10-step DDIM, visibly wrong, fails it.
ALPHA = 1e-3


@pytest.mark.parametrize("name", ["linear", "scaled_linear",
                                  pytest.param("cosine", marks=pytest.mark.exercise("3.1"))])
def test_alpha_bar_is_strictly_decreasing_in_0_1(name):
    s = ddpm.schedule(name)
    assert np.all(np.diff(s.alpha_bar) < 0) and 0 < s.alpha_bar[-1] and s.alpha_bar[0] <= 1
    assert np.all(np.diff(s.snr) < 0)


def test_linear_schedule_matches_ho_et_al():
    s = ddpm.schedule("linear")
    assert s.betas[0] == 1e-4 and s.betas[-1] == 0.02 and s.T == 1000
    np.testing.assert_allclose(s.alpha_bar[-1], 4.04e-5, rtol=2e-3)  # 4.0358e-5


def test_scaled_linear_is_linear_in_sqrt_beta():
    s = ddpm.schedule("scaled_linear")
    np.testing.assert_allclose(np.diff(np.sqrt(s.betas)), np.diff(np.sqrt(s.betas))[0], rtol=1e-9)
    np.testing.assert_allclose(s.betas[[0, -1]], [0.00085, 0.012])


@pytest.mark.exercise("3.1")
def test_cosine_schedule_matches_nichol_dhariwal_eq17_within_its_clip():
    s, T, eps = ddpm.schedule("cosine"), 1000, 0.008
    f = lambda t: np.cos((t / T + eps) / (1 + eps) * np.pi / 2) ** 2
    t = np.arange(1, T + 1)
    clipped = s.betas >= 0.999
    assert s.betas.max() <= 0.999 and 0 < clipped.sum() <= 5  # only the last steps are clipped
    np.testing.assert_allclose(s.alpha_bar[~clipped], (f(t) / f(0))[~clipped], rtol=1e-9)


def test_one_shot_marginal_equals_iterating_the_chain(mixture, sched, rng):
    # Ho et al. 2020 eq. (4) vs eq. (2) applied i + 1 times; compare moments of 200,000 samples.
    n, i = 200_000, 299
    x0 = mixture.sample(n, rng)
    x = x0
    for j in range(i + 1):
        x = ddpm.q_step(sched, x, j, rng.standard_normal(x.shape))
    one_shot = ddpm.q_sample(sched, x0, i, rng.standard_normal(x0.shape))
    # Both are samples of the same law; each mean has standard error sqrt(var / n), so their
    # difference has sqrt(2 var / n); a covariance entry ~ sqrt(2 (c_ii c_jj + c_ij²) / n).
    c = np.cov(one_shot.T)
    assert np.all(np.abs(x.mean(0) - one_shot.mean(0)) < 4 * np.sqrt(2 * np.diag(c) / n))
    se_c = np.sqrt(2 * (np.outer(np.diag(c), np.diag(c)) + c**2) / n)
    assert np.all(np.abs(np.cov(x.T) - c) < 4 * se_c)
    # ... and both match the closed-form law of x_t (the noised mixture).
    ab = sched.alpha_bar[i]
    law = mixture.noised(np.sqrt(ab), np.sqrt(1 - ab))
    assert np.all(np.abs(one_shot.mean(0) - law.weights @ law.means)
                  < 4 * np.sqrt(np.diag(c) / n))


@pytest.mark.exercise("3.2")
def test_posterior_matches_brute_force_bayes_on_a_grid(sched):
    # q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), in 1D on a fine grid.
    for i in [1, 10, 500, 999]:
        x0, xt = 0.7, -0.4
        ab_prev, b = sched.alpha_bar[i - 1], sched.betas[i]
        grid = np.linspace(-6, 6, 400_001)
        log_post = (-0.5 * (xt - np.sqrt(1 - b) * grid) ** 2 / b
                    - 0.5 * (grid - np.sqrt(ab_prev) * x0) ** 2 / (1 - ab_prev))
        w = np.exp(log_post - log_post.max())
        w /= w.sum()
        mean, var = (w * grid).sum(), (w * grid**2).sum() - (w * grid).sum() ** 2
        mu, v = ddpm.q_posterior(sched, np.array([[x0]]), np.array([[xt]]), i)
        np.testing.assert_allclose(mu[0, 0], mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(v, var, rtol=1e-4)


@pytest.mark.exercise("3.2", "3.3")
def test_p_mean_eq11_is_the_posterior_mean_at_the_predicted_x0(sched, rng):
    xt, eps_hat = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    for i in [0, 3, 700]:
        ab = sched.alpha_bar[i]
        x0_hat = (xt - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab)
        np.testing.assert_allclose(ddpm.p_mean(sched, xt, i, eps_hat),
                                   ddpm.q_posterior(sched, x0_hat, xt, i)[0], rtol=1e-10)


@pytest.mark.exercise("3.2", "3.3")
def test_variational_bound_is_above_the_true_nll(mixture, sched, rng):
    # With the exact noise prediction the bound must still hold: E[L_vlb] >= E[-log p(x0)].
    x0 = mixture.sample(1000, rng)
    total, terms = ddpm.vlb(exact_eps(mixture, sched), sched, x0, rng)
    gap = total - (-mixture.log_prob(x0))
    assert terms.shape == (1000, sched.T + 1)
    assert gap.mean() > -4 * gap.std() / np.sqrt(len(gap))
    assert terms[:, 1:].min() >= -1e-9  # every KL term is non-negative
    # Measured: a gap of about 0.8 nats, almost all of it in the first few steps, where the fixed
    # reverse variance beta~_t is far from the true one.
    assert gap.mean() < 1.5


def _gaussian_posterior_mean(sched, i, x0_hat, xt):
    """Ho et al. 2020, eq. (7), written out here (not ddpm.q_posterior)."""
    ab, ab_prev, b = sched.alpha_bar[i], sched.alpha_bar_prev[i], sched.betas[i]
    return (np.sqrt(ab_prev) * b / (1 - ab) * x0_hat
            + np.sqrt(1 - b) * (1 - ab_prev) / (1 - ab) * xt)


@pytest.mark.exercise("3.2", "3.3")
def test_every_term_of_the_bound_matches_its_closed_form_on_gaussian_data():
    # x0 ~ N(0, v I): the exact noise prediction is E[eps | x_t] = sigma x_t / (alpha² v + sigma²),
    # and every term of Ho et al. 2020, eq. (5) is closed form given the draws of x_t, which are
    # replayed from the same seed. T = 10, so that L_T (the prior term) is far from zero.
    sched, v, d = ddpm.schedule("linear", T=10), 0.5, 3
    x0 = np.random.default_rng(1).normal(0, np.sqrt(v), (50, d))

    def eps_fn(xt, i):
        a, s = np.sqrt(sched.alpha_bar[i]), np.sqrt(1 - sched.alpha_bar[i])
        return s * xt / (a * a * v + s * s)

    total, terms = ddpm.vlb(eps_fn, sched, x0, np.random.default_rng(9))
    replay = np.random.default_rng(9)
    expected = np.empty((50, sched.T + 1))
    ab_T = sched.alpha_bar[-1]  # L_T = KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, 1))
    expected[:, -1] = 0.5 * (d * ((1 - ab_T) - 1 - np.log(1 - ab_T)) + ab_T * (x0**2).sum(1))
    for i in range(sched.T):
        a, s = np.sqrt(sched.alpha_bar[i]), np.sqrt(1 - sched.alpha_bar[i])
        xt = a * x0 + s * replay.standard_normal(x0.shape)
        mu_p = _gaussian_posterior_mean(sched, i, a * v * xt / (a * a * v + s * s), xt)
        if i == 0:  # L_0 = -log N(x0; mu(x_1), beta_1 I)
            b1 = sched.betas[0]
            expected[:, 0] = 0.5 * (((x0 - mu_p) ** 2).sum(1) / b1 + d * np.log(2 * np.pi * b1))
            continue
        mu_q, var = _gaussian_posterior_mean(sched, i, x0, xt), sched.beta_tilde[i]
        expected[:, i] = 0.5 * ((mu_q - mu_p) ** 2).sum(1) / var  # equal variances: no log term
    np.testing.assert_allclose(terms, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total, expected.sum(1), rtol=1e-10)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.exercise("3.3", "3.4")
def test_ancestral_sampling_has_the_reverse_chains_variance_at_every_step(sched, variance):
    # Gaussian data x0 ~ N(0, v): with the exact eps the reverse mean is linear, mu = c_t x_t, so
    # from x_T ~ N(0, 1) the variance follows V_{t-1} = c_t² V_t + sigma_t² exactly (no noise at
    # the last step). Compared at nine steps with 4,000 chains: the sample variance has a relative
    # standard deviation sqrt(2 / 3999) = 2.2%, the tolerance is five of them (11%); a reverse
    # variance of 1.3 beta_t moves V by 26-30% from step 900 down.
    v, n = 0.25, 4000
    ab = sched.alpha_bar

    def eps_fn(xt, i):
        a, s = np.sqrt(ab[i]), np.sqrt(1 - ab[i])
        return s * xt / (a * a * v + s * s)

    rng = np.random.default_rng(5)
    path = ddpm.ancestral_sample(eps_fn, sched, rng.standard_normal((n, 1)), rng,
                                 variance=variance, return_path=True)  # (T + 1, n, 1)
    var_p = sched.betas if variance == "beta" else sched.beta_tilde
    predicted, V = {}, 1.0
    for i in reversed(range(sched.T)):
        a, s = np.sqrt(ab[i]), np.sqrt(1 - ab[i])
        c = _gaussian_posterior_mean(sched, i, a * v / (a * a * v + s * s), 1.0)
        V = c * c * V + (var_p[i] if i > 0 else 0.0)
        predicted[i] = V
    for i in (900, 700, 500, 300, 100, 50, 10, 1, 0):
        got = path[sched.T - i].var()  # path[k] is x after k steps, i.e. at index T - k
        assert got == pytest.approx(predicted[i], rel=5 * np.sqrt(2 / (n - 1))), (i, got)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.exercise("3.3", "3.4")
def test_ancestral_sampling_with_the_exact_eps_reproduces_the_mixture(mixture, sched, variance):
    rng = np.random.default_rng(7)
    x = ddpm.ancestral_sample(exact_eps(mixture, sched), sched, rng.standard_normal((2000, 2)),
                              rng, variance=variance)
    assert ks_pvalues(x, mixture.sample(2000, rng)).min() > ALPHA


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_the_exact_eps_reproduces_the_mixture(mixture, sched, spacing):
    rng = np.random.default_rng(8)
    ref = mixture.sample(2000, rng)
    eps = exact_eps(mixture, sched)
    x = ddpm.ddim_sample(eps, sched, rng.standard_normal((2000, 2)), steps=200, spacing=spacing)
    assert ks_pvalues(x, ref).min() > ALPHA
    few = ddpm.ddim_sample(eps, sched, rng.standard_normal((2000, 2)), steps=10, spacing=spacing)
    assert ks_pvalues(few, ref).min() < ALPHA  # the statistic detects a 10-step sampler's error


def test_ddim_eta_one_is_stochastic_and_correct(mixture, sched):
    rng = np.random.default_rng(9)
    x = ddpm.ddim_sample(exact_eps(mixture, sched), sched, rng.standard_normal((2000, 2)), rng,
                         steps=100, eta=1.0)
    assert ks_pvalues(x, mixture.sample(2000, rng)).min() > ALPHA


@pytest.mark.exercise("3.3", "3.4")
def test_ddim_eta_one_with_every_step_is_ancestral_with_beta_tilde(sched, rng):
    # Song et al. 2021, sec. 4.1: eta = 1 over all T steps is DDPM with sigma_t² = beta~_t.
    eps = lambda x, i: np.sin(x + i)  # any deterministic network
    x = rng.standard_normal((4, 2))
    a = ddpm.ddim_sample(eps, sched, x, np.random.default_rng(0), steps=sched.T, eta=1.0)
    b = ddpm.ancestral_sample(eps, sched, x, np.random.default_rng(0), variance="beta_tilde")
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_ddim_eta_zero_is_deterministic_and_inverts(mixture, sched, rng):
    eps = exact_eps(mixture, sched)
    x0 = mixture.sample(500, rng)
    z = rng.standard_normal((500, 2))
    np.testing.assert_array_equal(ddpm.ddim_sample(eps, sched, z, steps=50),
                                  ddpm.ddim_sample(eps, sched, z, steps=50))
    errors = []
    for steps in (50, 200, 1000):
        back = ddpm.ddim_sample(eps, sched, ddpm.ddim_invert(eps, sched, x0, steps), steps=steps)
        errors.append(np.sqrt(np.mean(np.sum((back - x0) ** 2, axis=1))))
    # Root-mean-square round-trip error, measured 0.07, 0.017, 0.003: it falls like 1/steps.
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors


def test_ddim_timestep_spacings():
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 4, "leading"), [0, 250, 500, 750])
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 4, "trailing"), [249, 499, 749, 999])
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 4, "linspace"), [0, 333, 666, 999])


def test_training_an_eps_mlp_lowers_l_simple(mixture, sched):
    rng = np.random.default_rng(0)
    batch_fn = ddpm.ddpm_batches(sched, mixture.sample(5000, rng), 128)
    model = lambda p, x, i: mlp.apply(p, x, i)
    loss = ddpm.l_simple(model)
    held_out = batch_fn(np.random.default_rng(5))
    state = train.init_state(mlp.init(rng, hidden=32, depth=2, emb_dim=16), 0)
    before = loss(state.params, held_out)
    state, _ = train.fit(loss, state, batch_fn, 400, lr=2e-3, progress=False)
    assert loss(state.params, held_out) < 0.8 * before


def test_bad_input_is_named(sched, rng):
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        ddpm.schedule("quadratic")
    with pytest.raises(ValueError, match=r"step index must be an integer in \[0, 999\]"):
        ddpm.q_sample(sched, np.zeros((2, 2)), 1000, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="`variance` must be 'beta' or 'beta_tilde'"):
        ddpm.ancestral_sample(lambda x, i: x, sched, np.zeros((2, 2)), rng, variance="learned")
    with pytest.raises(ValueError, match="`eta` must lie in"):
        ddpm.ddim_sample(lambda x, i: x, sched, np.zeros((2, 2)), rng, eta=2.0)
    with pytest.raises(ValueError, match="`spacing` must be"):
        ddpm.ddim_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="`betas` must be"):
        ddpm.Schedule(np.array([0.1, 1.5]))
