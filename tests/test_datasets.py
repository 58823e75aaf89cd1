"""The Gaussian-mixture oracle, the toy sets and the shipped MNIST."""

import gzip
import shutil

import autograd
import numpy as np
import pytest

from minidiff import datasets


@pytest.fixture
def mixture():
    # Three components in 2D with full, different covariances and unequal weights.
    covs = [[[1.0, 0.3], [0.3, 0.5]], [[0.2, -0.1], [-0.1, 0.4]], [[2.0, 0.0], [0.0, 0.1]]]
    return datasets.GaussianMixture([0.5, 0.3, 0.2], [[0, 0], [2, -1], [-2, 1.5]], covs)


def test_log_prob_matches_scipy(mixture, rng):
    from scipy.stats import multivariate_normal

    x = rng.normal(size=(50, 2)) * 2
    ref = np.log(sum(w * multivariate_normal(m, c).pdf(x)
                     for w, m, c in zip(mixture.weights, mixture.means, mixture.covs, strict=True)))
    np.testing.assert_allclose(mixture.log_prob(x), ref, rtol=1e-12, atol=1e-12)


def test_closed_form_score_equals_autograd_of_log_prob(mixture, rng):
    x = rng.normal(size=(200, 2)) * 3
    by_autograd = autograd.elementwise_grad(lambda x: np.sum(mixture.log_prob(x)))(x)
    np.testing.assert_allclose(mixture.score(x), by_autograd, rtol=1e-10, atol=1e-12)


def test_noised_matches_monte_carlo_moments(mixture, rng):
    alpha, sigma, n = 0.7, 0.9, 400_000
    noisy = mixture.noised(alpha, sigma)
    samples = alpha * mixture.sample(n, rng) + sigma * rng.standard_normal((n, 2))
    # Exact moments of the closed-form noised mixture.
    mean = noisy.weights @ noisy.means
    second = np.einsum("k,kij->ij", noisy.weights, noisy.covs + np.einsum(
        "ki,kj->kij", noisy.means, noisy.means))
    cov = second - np.outer(mean, mean)
    # Standard error of a sample mean is sqrt(var / n); of a sample covariance entry
    # sqrt((C_ii C_jj + C_ij²) / n) up to the excess kurtosis of a mixture, which is bounded by
    # a small factor here; 5 standard errors (with a factor 2 for kurtosis) is a fixed-seed
    # bound that a wrong formula (e.g. alpha instead of alpha²) breaks by > 100 SE.
    se_mean = np.sqrt(np.diag(cov) / n)
    se_cov = 2 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * se_mean)
    assert np.all(np.abs(np.cov(samples.T) - cov) < 5 * se_cov)


def test_sample_frequencies_match_weights(mixture, rng):
    n = 100_000
    _, labels = mixture.sample(n, rng, return_labels=True)
    freq = np.bincount(labels, minlength=3) / n
    se = np.sqrt(mixture.weights * (1 - mixture.weights) / n)  # binomial standard error
    assert np.all(np.abs(freq - mixture.weights) < 4 * se)


def test_posterior_mean_matches_brute_force_bayes_on_a_grid():
    # 1D mixture; E[x0 | xt] = ∫ x0 p(x0) N(xt; alpha x0, sigma²) dx0 / ∫ p(x0) N(...) dx0.
    gm = datasets.GaussianMixture([0.3, 0.7], [[-1.0], [1.5]], [[[0.25]], [[0.5]]])
    alpha, sigma = 0.8, 0.6
    grid = np.linspace(-8, 8, 200_001)[:, None]
    prior = np.exp(gm.log_prob(grid))
    xt = np.array([[-2.0], [-0.3], [0.4], [1.9]])
    like = np.exp(-0.5 * ((xt[:, 0][:, None] - alpha * grid[:, 0][None]) / sigma) ** 2)
    brute = (like * prior * grid[:, 0]).sum(1) / (like * prior).sum(1)
    np.testing.assert_allclose(gm.posterior_mean(xt, alpha, sigma)[:, 0], brute, rtol=1e-8)


def test_mixture_rejects_bad_input():
    with pytest.raises(ValueError, match="weights"):
        datasets.GaussianMixture([0.5, 0.6], [[0, 0], [1, 1]], np.stack([np.eye(2)] * 2))
    with pytest.raises(ValueError, match="covs"):
        datasets.GaussianMixture([1.0], [[0, 0]], [[[1, 0], [0, -1]]])
    with pytest.raises(ValueError, match="means"):
        datasets.GaussianMixture([1.0], [0, 0], [np.eye(2)])
    gm = datasets.gmm8()
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 2\)"):
        gm.score(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="sigma"):
        gm.noised(1.0, -0.1)


@pytest.mark.parametrize("name", ["swissroll", "moons", "checkerboard", "rings", "gmm8"])
def test_toy_sets_are_seeded_and_shaped(name):
    a = datasets.toy(name, 1000, np.random.default_rng(1))
    b = datasets.toy(name, 1000, np.random.default_rng(1))
    assert a.shape == (1000, 2) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert np.all(np.abs(a) < 4) and np.all(a.std(0) > 0.5)


def test_checkerboard_occupies_alternate_squares(rng):
    x = datasets.toy("checkerboard", 10_000, rng)
    cells = np.floor(x).astype(int)
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)  # only "black" squares


def test_toy_rejects_unknown_name(rng):
    with pytest.raises(ValueError, match="unknown toy set 'spiral'"):
        datasets.toy("spiral", 10, rng)


# ----------------------------------------------------------------------------- MNIST

def test_mnist_shapes_ranges_and_counts():
    x, y = datasets.mnist("train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert x.min() == -1.0 and x.max() == 1.0
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    np.testing.assert_array_equal(np.bincount(y), counts)
    xt, yt = datasets.mnist("test")
    assert xt.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(yt),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first labels


def test_mnist_refuses_tampered_data(tmp_path):
    for f in datasets.DATA_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(gzip.decompress(path.read_bytes()))
    blob[100] = (blob[100] + 1) % 10  # change one label
    path.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(ValueError, match="does not match its canonical checksum"):
        datasets.mnist("test", data_dir=tmp_path)
    path.write_bytes(b"not gzip at all")
    datasets._mnist_uint8.cache_clear()
    with pytest.raises(ValueError, match="not a valid gzip file"):
        datasets.mnist("test", data_dir=tmp_path)


def test_mnist_rejects_bad_split():
    with pytest.raises(ValueError, match="`split` must be 'train', 'test', 'fit' or 'validation'"):
        datasets.mnist("val")


def test_the_training_split_cut_in_two():
    # 'fit' and 'validation' are the training split's first 50,000 and last 10,000 digits: no
    # digit in both, none left out, every class in the validation part.
    train_x, train_y = datasets.mnist("train")
    fit_x, fit_y = datasets.mnist("fit")
    val_x, val_y = datasets.mnist("validation")
    assert len(fit_x) == datasets.HELD_OUT == 50_000 and len(val_x) == 10_000
    assert np.array_equal(np.concatenate([fit_x, val_x]), train_x)
    assert np.array_equal(np.concatenate([fit_y, val_y]), train_y)
    assert set(np.unique(val_y)) == set(range(10))


def test_sample_files_round_trip_and_refuse_bad_content(tmp_path, rng):
    pics = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    datasets.save_samples(tmp_path / "s.npz", pics, np.arange(5))
    back, labels = datasets.load_samples(tmp_path / "s.npz")
    assert np.array_equal(back, pics) and labels.dtype == np.int64
    with pytest.raises(ValueError, match="must be uint8"):
        datasets.save_samples(tmp_path / "t.npz", pics.astype(np.float32), np.arange(5))
    np.savez(tmp_path / "bad.npz", pictures=pics)
    with pytest.raises(ValueError, match="must hold `images` and `labels`"):
        datasets.load_samples(tmp_path / "bad.npz")
