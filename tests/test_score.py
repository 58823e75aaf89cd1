"""Chapter 1: the score as a field, Langevin dynamics, its failure, and annealed Langevin."""

import numpy as np
import pytest
from autograd.test_util import check_grads

from minidiff import datasets, score, train
from minidiff.models import mlp

pytestmark = pytest.mark.ch1


def test_score_from_log_prob_of_a_gaussian():
    # log N(x; mu, S) = -1/2 (x-mu)^T S^{-1} (x-mu) + const  =>  score = -S^{-1} (x - mu)
    mu, cov = np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 2.0]])
    prec = np.linalg.inv(cov)
    log_prob = lambda x: -0.5 * np.einsum("ni,ij,nj->n", x - mu, prec, x - mu) + 123.0
    x = np.random.default_rng(0).normal(size=(10, 2))
    np.testing.assert_allclose(score.score_from_log_prob(log_prob)(x), -(x - mu) @ prec,
                               rtol=1e-12)


@pytest.mark.exercise("1.2")
def test_ula_stationary_cov_closed_form_in_1d():
    s2, eps = 2.0, 0.3
    np.testing.assert_allclose(score.ula_stationary_cov([[s2]], eps), [[s2 / (1 - eps / (4 * s2))]])


@pytest.mark.exercise("1.1", "1.2")
def test_langevin_on_a_gaussian_reproduces_its_moments(rng):
    mu, cov = np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 2.0]])
    gauss = datasets.GaussianMixture([1.0], [mu], [cov])
    n, eps = 4000, 0.05
    # The slowest mode of the chain contracts by 1 - eps / (2 lambda_max(cov)) ≈ 0.989 per step:
    # 1500 steps forget the start by a factor e^-16.
    x = score.langevin(gauss.score, rng.uniform(-5, 5, (n, 2)), eps, 1500, rng)
    v = score.ula_stationary_cov(cov, eps)  # the chain's exact law is N(mu, v), v ≈ cov + O(eps)
    # Independent chains: the sample mean has standard error sqrt(v_ii / n), a Gaussian sample
    # covariance entry sqrt((v_ii v_jj + v_ij²) / n). 4 standard errors, fixed seed.
    assert np.all(np.abs(x.mean(0) - mu) < 4 * np.sqrt(np.diag(v) / n))
    se_cov = np.sqrt((np.outer(np.diag(v), np.diag(v)) + v**2) / n)
    assert np.all(np.abs(np.cov(x.T) - v) < 4 * se_cov)
    assert np.all(np.abs(v - cov) < se_cov)  # at this step the bias is below the noise ...
    assert np.all(np.abs(np.cov(x.T) - cov) < 5 * se_cov)  # ... so the target itself is matched


@pytest.mark.exercise("1.1", "1.2")
def test_langevin_step_size_bias_is_real(rng):
    # At a large step the chain is measurably too wide, exactly as ula_stationary_cov predicts.
    n, eps = 20_000, 0.5
    x = score.langevin(lambda x: -x, rng.standard_normal((n, 1)), eps, 200, rng)
    v = score.ula_stationary_cov([[1.0]], eps)[0, 0]  # 1 / (1 - 1/8) = 8/7
    se = v * np.sqrt(2 / n)  # standard error of a Gaussian sample variance
    assert abs(x.var() - v) < 4 * se
    assert x.var() - 1.0 > 8 * se


@pytest.mark.exercise("1.1", "1.3")
def test_plain_langevin_gets_mode_weights_wrong_and_annealing_fixes_them(rng):
    # Song & Ermon 2019, sec. 3.2.2: p = 0.2 N((-4,-4), I) + 0.8 N((4,4), I).
    gm = datasets.unequal_modes(weights=(0.2, 0.8))
    n = 4000
    se = np.sqrt(0.2 * 0.8 / n)  # binomial standard error of a mode fraction, ≈ 0.0063
    # Plain Langevin with the exact score from uniform starts: each chain falls into the nearer
    # mode and stays, so the split is that of the starts (1/2 by symmetry), not 0.2 / 0.8.
    path = score.langevin(gm.score, rng.uniform(-8, 8, (n, 2)), 0.1, 1000, rng, return_path=True)
    frac = score.mode_fractions(path[-1], gm.means)
    assert abs(frac[1] - 0.5) < 4 * np.sqrt(0.25 / n)
    assert abs(frac[1] - 0.8) > 40 * se
    # ... and slow between modes: after burn-in no chain crosses from one mode to the other.
    side = np.sign(path[100:, :, 0] + path[100:, :, 1])  # which side of the diagonal
    assert np.mean(np.any(side != side[0], axis=0)) < 0.001
    # Annealed Langevin with the exact noised scores (noise from 10 down to 0.1; the largest
    # level spans both modes) recovers the weights. Allowance: 4 standard errors plus 0.01 for
    # the finite step and finite number of steps per level.
    sigmas = score.geometric_sigmas(10.0, 0.1, 10)
    x = score.annealed_langevin(lambda x, s: gm.noised(1.0, s).score(x), sigmas,
                                rng.uniform(-8, 8, (n, 2)), rng, step_lr=5e-3, n_steps_each=100)
    frac = score.mode_fractions(x, gm.means)
    assert abs(frac[1] - 0.8) < 4 * se + 0.01


def test_ncsn_loss_is_the_paper_formula_and_differentiable(rng):
    params = mlp.init(rng, hidden=8, depth=1, emb_dim=4, dtype=np.float64)
    batch = {"x0": rng.normal(size=(6, 2)), "sigma": rng.uniform(0.1, 2, 6),
             "eps": rng.normal(size=(6, 2))}
    loss = score.ncsn_loss(mlp.apply)
    # Song & Ermon 2019 eq. (6) with lambda = sigma²: 1/2 mean sigma² |s + (x~ - x0)/sigma²|².
    x_noisy = batch["x0"] + batch["sigma"][:, None] * batch["eps"]
    s = score.ncsn_score(mlp.apply, params)(x_noisy, batch["sigma"])
    resid = s + (x_noisy - batch["x0"]) / batch["sigma"][:, None] ** 2
    ref = 0.5 * np.mean(batch["sigma"] ** 2 * np.sum(resid**2, axis=1))
    np.testing.assert_allclose(loss(params, batch), ref, rtol=1e-12)
    check_grads(lambda p: loss(p, batch), modes=["rev"], order=1)(params)


def test_ncsn_learns_the_noised_score_of_a_mixture():
    # Train a small NCSN by denoising score matching on gmm8 and compare its score with the
    # closed-form score of the noised mixture at sigma = 1 (relative root-mean-square error).
    rng = np.random.default_rng(0)
    gm = datasets.gmm8()
    sigmas = score.geometric_sigmas(4.0, 0.05, 10)
    params = mlp.init(rng, hidden=64, depth=2, emb_dim=16)
    state = train.init_state(params, 1)
    batch_fn = score.ncsn_batches(gm.sample(10_000, rng), sigmas, 256)
    noisy = gm.noised(1.0, 1.0)
    x = noisy.sample(4000, rng)

    def rel_err(p):
        return score.relative_score_error(score.ncsn_score(mlp.apply, p), noisy.score, x, 1.0)

    before = rel_err(state.ema)
    state, _ = train.fit(score.ncsn_loss(mlp.apply), state, batch_fn, 1500, lr=2e-3,
                         warmup=100, progress=False)
    after = rel_err(state.ema)
    # Measured here: about 1.0 at initialisation and 0.06-0.09 after 1,500 steps; 0.2 leaves
    # room for other BLAS builds while still failing a model that has not learned the field.
    assert before > 0.8 and after < 0.2


def test_bad_input_is_named(rng):
    f = lambda x: -x
    with pytest.raises(ValueError, match="`step_size` must be a positive number"):
        score.langevin(f, np.zeros((3, 2)), -0.1, 10, rng)
    with pytest.raises(ValueError, match=r"`x` must be a batch of points of shape \(N, D\)"):
        score.langevin(f, np.zeros(3), 0.1, 10, rng)
    with pytest.raises(ValueError, match="`sigmas` must be decreasing"):
        score.annealed_langevin(lambda x, s: -x, [0.1, 1.0], np.zeros((3, 2)), rng)
    with pytest.raises(ValueError, match="positive numbers"):
        score.annealed_langevin(lambda x, s: -x, [1.0, 0.0], np.zeros((3, 2)), rng)
    with pytest.raises(ValueError, match="`sigma_min` must be a positive number"):
        score.geometric_sigmas(1.0, 0.0, 5)
    with pytest.raises(ValueError, match="must exceed"):
        score.geometric_sigmas(0.1, 1.0, 5)
    with pytest.raises(ValueError, match="`batch_size`"):
        score.ncsn_batches(np.zeros((4, 2)), [1.0], 0)


def test_mode_fractions():
    x = np.array([[0.1, 0.0], [0.9, 1.0], [1.2, 0.8], [-3.0, 0.0]])
    np.testing.assert_allclose(score.mode_fractions(x, [[0, 0], [1, 1]]), [0.5, 0.5])


def test_geometric_sigmas_have_the_constant_ratio_of_song_ermon_2019():
    # sec. 4.2: sigma_1 > ... > sigma_L with sigma_{i-1} / sigma_i constant (a linspace grid fails)
    s = score.geometric_sigmas(10.0, 0.1, 10)
    assert s[0] == pytest.approx(10.0) and s[-1] == pytest.approx(0.1) and len(s) == 10
    np.testing.assert_allclose(s[:-1] / s[1:], (10.0 / 0.1) ** (1 / 9), rtol=1e-12)
