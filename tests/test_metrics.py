"""Sample-quality measures: exact cases and their small-sample bias."""

import numpy as np
import pytest

from minidiff import datasets, metrics, process

pytestmark = pytest.mark.ch6


def test_frechet_distance_of_gaussians_in_closed_form(rng):
    # For commuting (here diagonal) covariances, FD = |dmu|² + sum (sqrt(a) - sqrt(b))².
    a, b = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    fd = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    np.testing.assert_allclose(fd, np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b))
                                                                    ** 2), rtol=1e-10)
    assert metrics.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-9)


def test_fd_of_two_real_samples_is_small_and_shrinks_with_n(rng):
    # The FD estimator's bias at finite n: two samples of one law give FD > 0, falling ~ 1/n.
    # Stand-in features: 16-D Gaussians (the same estimator as on classifier features).
    cov = np.diag(np.linspace(0.5, 2, 16))
    fds = {}
    for n in (200, 800, 3200):
        vals = []
        for _ in range(5):
            a = rng.multivariate_normal(np.zeros(16), cov, n)
            b = rng.multivariate_normal(np.zeros(16), cov, n)
            vals.append(metrics.frechet_distance(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)))
        fds[n] = np.mean(vals)
    assert fds[200] > fds[800] > fds[3200] > 0
    assert 2.5 < fds[200] / fds[800] < 6  # about 4x per 4x more samples: the 1/n bias


def test_class_spread_is_the_law_of_total_variance(rng):
    # total = within + between exactly, for unequal class sizes; total is the trace of the
    # count-normalised covariance; pulling every point onto its class mean leaves only
    # `between`, and moving the class means onto the grand mean leaves only `within`.
    labels = np.repeat([0, 1, 2, 5], [3, 7, 11, 19])
    f = rng.normal(size=(40, 6)) + 3.0 * rng.normal(size=(6, 6))[labels % 6]
    sp = metrics.class_spread(f, labels)
    assert sp["total"] == pytest.approx(sp["within"] + sp["between"], rel=1e-12)
    assert sp["total"] == pytest.approx(np.trace(np.cov(f.T, bias=True)), rel=1e-12)
    means = {c: f[labels == c].mean(0) for c in np.unique(labels)}
    collapsed = metrics.class_spread(np.array([means[c] for c in labels]), labels)
    assert collapsed["within"] == pytest.approx(0, abs=1e-12)
    assert collapsed["between"] == pytest.approx(sp["between"], rel=1e-12)
    centred = f - np.array([means[c] for c in labels])
    only_within = metrics.class_spread(centred, labels)
    assert only_within["between"] == pytest.approx(0, abs=1e-12)
    assert only_within["within"] == pytest.approx(sp["within"], rel=1e-12)
    with pytest.raises(ValueError, match="`labels`"):
        metrics.class_spread(f, labels[:-1])


def test_fd_with_class_means_aligned_sees_only_the_shape_inside_each_class(rng):
    # The reference: four classes of unequal size. Samples that are the reference's own points
    # with every class moved by its own offset have FD well above zero, but once the class means
    # are aligned they coincide with the reference: aligned FD 0, up to the rounding of one
    # eigendecomposition (1e-9 of the trace is thousands of times that rounding). Moving one
    # class of any sample set leaves the aligned FD unchanged (the mean it is moved onto is the
    # same); a set whose class means already sit on the reference's is not changed by aligning.
    labels = np.repeat([0, 1, 2, 5], [30, 70, 110, 190])
    ref = rng.normal(size=(400, 6)) + 3.0 * rng.normal(size=(6, 6))[labels % 6]
    trace = np.trace(np.cov(ref.T))
    offsets = 2.0 * rng.normal(size=(6, 6))[labels % 6]
    shifted = ref + offsets
    fd = metrics.frechet_distance(shifted.mean(0), np.cov(shifted.T), ref.mean(0), np.cov(ref.T))
    assert fd > 0.1 * trace
    aligned = metrics.fd_class_means_aligned(shifted, labels, ref, labels)
    assert aligned == pytest.approx(0.0, abs=1e-9 * trace)

    other_labels = rng.permutation(labels)
    other = 1.5 * rng.normal(size=(400, 6)) + 3.0 * rng.normal(size=(6, 6))[other_labels % 6]
    base = metrics.fd_class_means_aligned(other, other_labels, ref, labels)
    moved = other + np.where((other_labels == 2)[:, None], 7.0 * rng.normal(size=6), 0.0)
    assert metrics.fd_class_means_aligned(moved, other_labels, ref, labels) == pytest.approx(
        base, rel=1e-9)
    assert base > 0.01 * trace  # the wider spread inside each class is still measured

    centred = other.copy()
    for c in np.unique(labels):
        centred[other_labels == c] += ref[labels == c].mean(0) - other[other_labels == c].mean(0)
    fd_centred = metrics.frechet_distance(centred.mean(0), np.cov(centred.T), ref.mean(0),
                                          np.cov(ref.T))
    assert metrics.fd_class_means_aligned(centred, other_labels, ref, labels) == pytest.approx(
        fd_centred, rel=1e-9)


def test_fd_with_class_means_aligned_is_biased_like_fd_and_below_it(rng):
    # Two samples of one ten-class mixture (16-D, class means 3 apart): with the class means
    # aligned FD is still > 0 (the within-class covariances are estimates) and falls ~ 1/n like
    # FD, and it is below FD (aligning removes the noise of the sample's class means): compare it
    # only with the same alignment applied to real data, as `evaluate_samples` does.
    means = 3.0 * rng.normal(size=(10, 16))
    scale = np.sqrt(np.linspace(0.5, 2, 16))
    aligned, plain = {}, {}
    for n in (200, 800, 3200):
        vals, vals_plain = [], []
        for _ in range(5):
            la, lb = np.arange(n) % 10, rng.permutation(np.arange(n) % 10)
            a = means[la] + scale * rng.normal(size=(n, 16))
            b = means[lb] + scale * rng.normal(size=(n, 16))
            vals.append(metrics.fd_class_means_aligned(a, la, b, lb))
            vals_plain.append(metrics.frechet_distance(a.mean(0), np.cov(a.T), b.mean(0),
                                                       np.cov(b.T)))
        aligned[n], plain[n] = np.mean(vals), np.mean(vals_plain)
    assert aligned[200] > aligned[800] > aligned[3200] > 0
    assert 2.5 < aligned[200] / aligned[800] < 6  # about 4x per 4x more samples: the 1/n bias
    assert all(aligned[n] < plain[n] for n in aligned)


def test_fd_with_class_means_aligned_rejects_bad_input(rng):
    labels = np.repeat([0, 1, 2], 10)
    f = rng.normal(size=(30, 4))
    with pytest.raises(ValueError, match="`labels`"):
        metrics.fd_class_means_aligned(f, labels[:-1], f, labels)
    with pytest.raises(ValueError, match=r"`ref_features` must be \(M, 4\)"):
        metrics.fd_class_means_aligned(f, labels, f[:, :3], labels)
    with pytest.raises(ValueError, match=r"`ref_labels` has no example of the classes \[2\]"):
        metrics.fd_class_means_aligned(f, labels, f[:20], labels[:20])


def test_mmd_is_unbiased_under_the_null_and_detects_a_shift(rng):
    gm = datasets.gmm8()
    null = [metrics.mmd2(gm.sample(200, rng), gm.sample(200, rng)) for _ in range(30)]
    se = np.std(null) / np.sqrt(len(null))
    assert abs(np.mean(null)) < 4 * se  # zero in expectation: the U-statistic is unbiased
    # A shift of half the mode spacing stands far outside the null spread (measured ~10x).
    shifted = metrics.mmd2(gm.sample(200, rng), gm.sample(200, rng) + 0.8)
    assert shifted > np.mean(null) + 5 * np.std(null)


def test_sliced_wasserstein_bias_shrinks_and_a_shift_is_measured(rng):
    gm = datasets.gmm8()
    small = np.mean([metrics.sliced_wasserstein(gm.sample(100, rng), gm.sample(100, rng), rng)
                     for _ in range(5)])
    large = np.mean([metrics.sliced_wasserstein(gm.sample(3000, rng), gm.sample(3000, rng), rng)
                     for _ in range(5)])
    assert small > large > 0
    # A pure translation by d moves every 1D projection by (d . u): the mean |d . u| over
    # directions u uniform on the circle is 2|d|/pi.
    x = gm.sample(3000, rng)
    sw = metrics.sliced_wasserstein(x, x + np.array([1.0, 0.0]), rng, n_proj=4000)
    np.testing.assert_allclose(sw, 2 / np.pi, rtol=0.03)


@pytest.mark.exercise("4.2")
def test_pf_ode_nll_of_a_standard_gaussian(rng):
    # Data N(0, I) is invariant under the VP path: the score is -x at every t and the NLL is
    # the Gaussian entropy-like average, checked against the analytic log-density.
    import autograd.numpy as anp

    x = rng.standard_normal((30, 2))
    nll = metrics.pf_ode_nll(lambda z, t: -z * anp.ones_like(z), process.VP(), x, rtol=1e-8,
                             atol=1e-8)
    exact = np.mean(0.5 * np.sum(x**2, 1) + np.log(2 * np.pi))
    np.testing.assert_allclose(nll, exact, rtol=1e-5)


def test_images_from_uint8_inverts_the_loader():
    x, _ = datasets.mnist("test")
    pixels = np.round((x[:10, 0] + 1) * 127.5).astype(np.uint8)
    np.testing.assert_allclose(metrics.images_from_uint8(pixels), x[:10], atol=1e-6)


# ----------------------------------------------------------------------------- precision, recall

@pytest.mark.ch7
def test_precision_and_recall_by_hand():
    # Four real points on a line, k = 1: every real ball has radius 1 and covers [x-1, x+1], so
    # 0.5 is inside and 10 is not (precision 1/2). The two fake points are each other's nearest
    # neighbour, 9.5 apart: their balls cover every real point (recall 1).
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    np.testing.assert_allclose(metrics.knn_radii(real, 1), [1.0, 1.0, 1.0, 1.0])
    assert metrics.precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0}
    # Swapping the roles swaps the answers' meaning: now one real point of two is covered.
    assert metrics.precision_recall(fake, real, k=1)["recall"] == 0.5
    with pytest.raises(ValueError, match="`k` must be an integer"):
        metrics.knn_radii(real, 4)


@pytest.fixture(scope="module")
def digit_features():
    from minidiff import images

    clf = images.load_classifier(images.SHIPPED["classifier"])
    rng = np.random.default_rng(0)
    test = metrics.balanced_subset(*datasets.mnist("test"), 100, rng)
    val = metrics.balanced_subset(*datasets.mnist("validation"), 100, rng)
    noise = rng.uniform(-1, 1, (1000, 1, 28, 28)).astype(np.float32)
    return {"test": metrics.classifier_features(clf, test[0]), "test_y": test[1],
            "val": metrics.classifier_features(clf, val[0]), "val_y": val[1],
            "noise": metrics.classifier_features(clf, noise), "clf": clf}


@pytest.mark.ch7
def test_precision_and_recall_of_real_digits_one_class_and_noise(digit_features):
    # 1,000 test digits (100 per class) as the real set, with the classifier's features.
    # Real against real (1,000 validation digits): both high. At n = 1000 and k = 3 the
    # measured value is 0.88 (not 1: a fresh point falls outside the union of 3-NN balls of
    # 1,000 points about one time in eight in 128 dimensions); with k = 10, 0.99.
    f = digit_features
    pr = metrics.precision_recall(f["test"], f["val"])
    assert pr["precision"] > 0.85 and pr["recall"] > 0.85
    pr10 = metrics.precision_recall(f["test"], f["val"], k=10)
    assert pr10["precision"] > 0.97 and pr10["recall"] > 0.97
    # Samples of one class only (the 100 validation threes): faithful, but they cover about a
    # tenth of the real digits. Measured 0.79 and 0.12.
    one = metrics.precision_recall(f["test"], f["val"][f["val_y"] == 3])
    assert one["precision"] > 0.7 and 0.05 < one["recall"] < 0.2
    # Uniform noise images: none of them look like a digit to the classifier's features.
    assert metrics.precision_recall(f["test"], f["noise"])["precision"] < 0.02
