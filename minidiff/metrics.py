"""Sample-quality measures, for 2D and for MNIST, each with its small-sample bias stated.

MNIST
- ``fd_mnist``: the Fréchet distance (Dowson & Landau 1982; Heusel et al. 2017) between Gaussians
  fitted to the penultimate features of minidiff's own MNIST classifier ("FD-MNIST"). It is
  **not** the Inception FID: numbers are comparable only with each other, and always reported
  beside the real-vs-real baseline (two disjoint sets of real digits of the same size). The
  estimate is biased upwards at finite n (the covariance estimates are noisy), roughly like 1/n:
  compare at equal sample sizes only.
- ``class_agreement``: the fraction of class-conditional samples the classifier assigns to the
  requested class.
- ``class_spread``: the features' total variance split by the law of total variance into the
  spread inside each class and the spread of the class means. Guidance moves FD's covariance
  term through both (less within, more between); this says which way and how far.
- ``precision_recall``: improved precision and recall (Kynkäänniemi et al. 2019): the share of
  samples inside the real digits' feature manifold (fidelity) and of real digits inside the
  samples' (coverage), each manifold the union of k-nearest-neighbour balls. FD mixes the two
  into one number; guidance trades one for the other. Both depend on n and k (the balls shrink
  as n grows): at n = 1000 and k = 3, real digits score about 0.88 against real digits, the
  baseline to read them against (``evaluate_samples`` reports it).
- ``fd_class_means_aligned``: FD once each class's features are moved so that the class mean sits
  on the reference's: what is left when only the shape inside each class differs. The drop from
  FD says how much of it is where the class means sit (guidance moves them). Biased upwards like
  FD, by less: compare it with real digits aligned the same way at the same n.

2D
- ``mmd2``: squared maximum mean discrepancy with an RBF kernel (Gretton et al. 2012), the
  unbiased U-statistic, bandwidth by the median heuristic. Unbiased: zero in expectation for equal
  laws (so it can come out negative).
- ``sliced_wasserstein``: mean over random directions of the 1D 2-Wasserstein distance of the
  projections. Biased upwards at finite n (two samples of one law are never identical).
- ``pf_ode_nll``: exact negative log-likelihood of points under a score model, through the
  probability-flow ODE (chapter 4).
"""

import numpy as onp


def frechet_distance(mu1, cov1, mu2, cov2):
    """``|mu1 - mu2|² + tr(C1 + C2 - 2 (C1 C2)^{1/2})``: the squared 2-Wasserstein distance of
    two Gaussians."""
    # tr (C1 C2)^{1/2} = sum of sqrt(eigenvalues of C1^{1/2} C2 C1^{1/2}), a symmetric PSD
    # matrix: stable where sqrtm(C1 @ C2) warns (singular covariances: ReLU features that are
    # always zero in a small sample).
    s1 = _psd_sqrt(cov1)
    ev = onp.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_covmean = onp.sum(onp.sqrt(onp.clip(ev, 0.0, None)))
    return float(onp.sum((mu1 - mu2) ** 2) + onp.trace(cov1) + onp.trace(cov2) - 2.0 * tr_covmean)


def _psd_sqrt(c):
    w, v = onp.linalg.eigh((c + c.T) / 2)
    return (v * onp.sqrt(onp.clip(w, 0.0, None))) @ v.T


def classifier_features(classifier_params, images, batch_size=500):
    """The classifier's penultimate features of ``images (N, 1, 28, 28)``: float64 ``(N, 128)``."""
    from .models import classifier

    return onp.concatenate([classifier.features(classifier_params, images[i:i + batch_size])
                            for i in range(0, len(images), batch_size)]).astype(onp.float64)


def feature_stats(classifier_params, images, batch_size=500):
    """Mean and covariance of the classifier's penultimate features of ``images (N, 1, 28, 28)``."""
    feats = classifier_features(classifier_params, images, batch_size)
    return feats.mean(0), onp.cov(feats.T)


def class_spread(features, labels):
    """The law of total variance for ``features (N, D)`` grouped by ``labels (N,)``, with every
    variance normalised by the count (1/N, not 1/(N-1)), so the split is exact:

        total   = mean_i |f_i - mu|²                          = trace of the features' covariance
        within  = sum_c (n_c / N) mean_{i in c} |f_i - mu_c|²  spread inside each class
        between = sum_c (n_c / N) |mu_c - mu|²                 spread of the class means

    and ``total = within + between``. Returns ``{"total", "within", "between"}``."""
    f = onp.asarray(features, dtype=onp.float64)
    labels = onp.asarray(labels)
    if f.ndim != 2 or labels.shape != f.shape[:1]:
        raise ValueError(f"`features` must be (N, D) and `labels` (N,) (got {f.shape} and "
                         f"{labels.shape})")
    mu = f.mean(0)
    within = between = 0.0
    for c in onp.unique(labels):
        fc = f[labels == c]
        weight = len(fc) / len(f)
        within += weight * onp.mean(onp.sum((fc - fc.mean(0)) ** 2, axis=1))
        between += weight * onp.sum((fc.mean(0) - mu) ** 2)
    total = onp.mean(onp.sum((f - mu) ** 2, axis=1))
    return {"total": float(total), "within": float(within), "between": float(between)}


def fd_class_means_aligned(features, labels, ref_features, ref_labels):
    """FD between ``features`` and ``ref_features`` (``(N, D)``, labelled by class) after each
    class of ``features`` is translated by ``mu_ref_c - mu_c``, so that every class mean sits on
    the reference's. The spread inside each class is untouched; what FD still measures is the
    difference in shape within the classes (and in the class proportions). FD is not additive,
    so ``FD - aligned`` is read as "how much the class means' placement costs", not as an exact
    term. A diagnostic of this project, not a published metric. Biased upwards at finite n like
    FD (the within-class covariances are estimates) but less (the sample's class means no longer
    add their noise), so it compares only with the same alignment of real digits at the same n
    (``evaluate_samples`` reports both). Every class in ``labels`` must occur in
    ``ref_labels``."""
    f = onp.asarray(features, dtype=onp.float64)
    ref = onp.asarray(ref_features, dtype=onp.float64)
    labels, ref_labels = onp.asarray(labels), onp.asarray(ref_labels)
    if f.ndim != 2 or labels.shape != f.shape[:1]:
        raise ValueError(f"`features` must be (N, D) and `labels` (N,) (got {f.shape} and "
                         f"{labels.shape})")
    if ref.ndim != 2 or ref.shape[1] != f.shape[1] or ref_labels.shape != ref.shape[:1]:
        raise ValueError(f"`ref_features` must be (M, {f.shape[1]}) and `ref_labels` (M,) (got "
                         f"{ref.shape} and {ref_labels.shape})")
    missing = sorted(set(onp.unique(labels).tolist()) - set(onp.unique(ref_labels).tolist()))
    if missing:
        raise ValueError(f"`ref_labels` has no example of the classes {missing} found in "
                         "`labels`: their features have no class mean to move onto")
    moved = f.copy()
    for c in onp.unique(labels):
        moved[labels == c] += ref[ref_labels == c].mean(0) - f[labels == c].mean(0)
    return frechet_distance(moved.mean(0), onp.cov(moved.T), ref.mean(0), onp.cov(ref.T))


def _distances(a, b):
    """Euclidean distances ``(len(a), len(b))``, by the expanded square (one matrix product)."""
    d2 = (a**2).sum(1)[:, None] - 2.0 * a @ b.T + (b**2).sum(1)[None]
    return onp.sqrt(onp.clip(d2, 0.0, None))


def knn_radii(features, k=3):
    """The distance from each row of ``features (N, D)`` to its ``k``-th nearest other row."""
    f = onp.asarray(features, dtype=onp.float64)
    if not (isinstance(k, int | onp.integer) and 1 <= k < len(f)):
        raise ValueError(f"`k` must be an integer in [1, {len(f) - 1}] for {len(f)} points "
                         f"(got {k!r})")
    d = _distances(f, f)
    return onp.sort(d, axis=1)[:, k]  # column 0 is the point itself, at distance 0


def precision_recall(real, fake, k=3):
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. (1)-(2)) of ``fake`` against
    ``real`` features (``(N, D)`` and ``(M, D)``). The real manifold is the union of balls around
    each real point with the radius of its ``k``-th nearest real neighbour; ``precision`` is the
    share of fake points inside it. ``recall`` swaps the roles: the share of real points inside the
    fake manifold. ``k = 3`` is the paper's. Returns ``{"precision", "recall"}``."""
    real, fake = onp.asarray(real, dtype=onp.float64), onp.asarray(fake, dtype=onp.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"`real` and `fake` must be (N, D) and (M, D) with the same D (got "
                         f"{real.shape} and {fake.shape})")
    d = _distances(fake, real)  # (M, N)
    precision = onp.mean((d <= knn_radii(real, k)[None]).any(axis=1))
    recall = onp.mean((d.T <= knn_radii(fake, k)[None]).any(axis=1))
    return {"precision": float(precision), "recall": float(recall)}


def fd_mnist(classifier_params, images_a, images_b):
    """FD-MNIST between two sets of images (float ``(N, 1, 28, 28)`` in ``[-1, 1]``)."""
    return frechet_distance(*feature_stats(classifier_params, images_a),
                            *feature_stats(classifier_params, images_b))


def class_agreement(classifier_params, images, labels):
    """Fraction of ``images`` the classifier labels as ``labels``."""
    from .models import classifier

    return float(onp.mean(classifier.predict(classifier_params, images) == onp.asarray(labels)))


def images_from_uint8(pixels):
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in ``[-1, 1]`` (the loader's scaling)."""
    return (onp.asarray(pixels, dtype=onp.float32)[:, None] * (1.0 / 127.5) - 1.0)


def balanced_subset(images, labels, per_class, rng):
    """``per_class`` images of each digit, drawn without replacement."""
    idx = onp.concatenate([rng.choice(onp.flatnonzero(labels == c), per_class, replace=False)
                           for c in range(10)])
    return images[idx], labels[idx]


def evaluate_samples(images, labels, classifier_params, rng, progress=None, reference="test"):
    """FD-MNIST of ``images`` (floats in ``[-1, 1]``) against as many test digits with the same
    class balance, the real-vs-real baseline (as many train digits against those test digits),
    the class agreement, the ``class_spread`` of the samples' features (by requested class) and
    of the test digits', both FDs again with the class means aligned on the test digits'
    (``fd_class_means_aligned``), and ``precision_recall`` of the samples and of the train
    digits against the test digits: ``{"fd", "fd_real", "agreement", "n", "spread",
    "spread_real", "fd_aligned", "fd_real_aligned", "precision", "recall", "precision_real",
    "recall_real", "reference"}``. ``progress(k)`` is called after each of the three feature
    passes (samples, test digits, training digits) with the images done.

    ``reference="validation"`` puts the last 10,000 training digits in the test digits' place
    (and draws the baseline's from the first 50,000): the split to choose between runs on,
    keeping the test digits for reporting (``datasets.HELD_OUT``)."""
    from .datasets import mnist

    if reference not in ("test", "validation"):
        raise ValueError(f"`reference` must be 'test' or 'validation' (got {reference!r})")
    per_class = len(labels) // 10
    test_x, test_y = balanced_subset(*mnist(reference), per_class, rng)
    train_x, train_y = balanced_subset(*mnist("train" if reference == "test" else "fit"),
                                       per_class, rng)
    feats = []
    for x in (images, test_x, train_x):
        feats.append(classifier_features(classifier_params, x))
        if progress is not None:
            progress(len(x))
    f_samples, f_test, f_train = feats
    moments = [(f.mean(0), onp.cov(f.T)) for f in (f_samples, f_test, f_train)]
    return {"fd": frechet_distance(*moments[0], *moments[1]),
            "fd_real": frechet_distance(*moments[2], *moments[1]),
            "agreement": class_agreement(classifier_params, images, labels),
            "n": len(labels),
            "spread": class_spread(f_samples, labels),
            "spread_real": class_spread(f_test, test_y),
            "fd_aligned": fd_class_means_aligned(f_samples, labels, f_test, test_y),
            "fd_real_aligned": fd_class_means_aligned(f_train, train_y, f_test, test_y),
            **precision_recall(f_test, f_samples),
            **{f"{k}_real": v for k, v in precision_recall(f_test, f_train).items()},
            "reference": reference}


def format_report(r):
    """``evaluate_samples``' result as the lines ``python -m minidiff evaluate`` prints."""
    sp, sr = r["spread"], r["spread_real"]
    ref = {"test": "test digits", "validation": "validation digits"}[r.get("reference", "test")]
    return "\n".join([
        f"{r['n']} samples: FD-MNIST {r['fd']:.2f} (real-vs-real baseline {r['fd_real']:.2f}, "
        f"ratio {r['fd'] / r['fd_real']:.2f}); classifier agrees with the requested class on "
        f"{100 * r['agreement']:.1f}%",
        f"feature spread (law of total variance): between classes {sp['between']:.0f} ({ref} "
        f"{sr['between']:.0f}), within a class {sp['within']:.0f} ({sr['within']:.0f})",
        f"with each class's mean moved onto the {ref}' class mean: FD-MNIST "
        f"{r['fd_aligned']:.2f} (real-vs-real {r['fd_real_aligned']:.2f}); the rest of the FD "
        "is where the class means sit",
        f"against the {ref}: precision {r['precision']:.3f}, recall {r['recall']:.3f} (k = 3; "
        "training digits "
        f"{r['precision_real']:.3f}, {r['recall_real']:.3f})",
        "FD-MNIST is the Frechet distance on minidiff's MNIST classifier's features, not the "
        "Inception FID."])


def mmd2(x, y, bandwidth=None):
    """Unbiased squared MMD with ``k(a, b) = exp(-|a - b|² / (2 h²))``; ``h`` defaults to the
    median pairwise distance of the pooled sample (the median heuristic)."""
    x, y = onp.asarray(x, dtype=float), onp.asarray(y, dtype=float)
    z = onp.concatenate([x, y])
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    if bandwidth is None:
        bandwidth = onp.sqrt(0.5 * onp.median(d2[onp.triu_indices(len(z), 1)]))
    k = onp.exp(-d2 / (2 * bandwidth**2))
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return float((kxx.sum() - onp.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - onp.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def sliced_wasserstein(x, y, rng, n_proj=128):
    """Mean over ``n_proj`` random unit directions of the 1D W2 distance between the projected
    samples (equal sizes: sorted samples are matched)."""
    x, y = onp.asarray(x, dtype=float), onp.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"sliced_wasserstein needs samples of equal size (got {len(x)}, "
                         f"{len(y)})")
    dirs = rng.standard_normal((n_proj, x.shape[1]))
    dirs /= onp.linalg.norm(dirs, axis=1, keepdims=True)
    px, py = onp.sort(x @ dirs.T, axis=0), onp.sort(y @ dirs.T, axis=0)
    return float(onp.sqrt(onp.mean((px - py) ** 2, axis=0)).mean())


def pf_ode_nll(score, path, x, t_eps=1e-5, rtol=1e-5, atol=1e-5):
    """Mean exact ``-log p_{t_eps}(x)`` in nats for 2D points under a score model
    ``score(x, t)`` that autograd can trace (``sde.log_likelihood`` with the exact divergence).
    The prior is ``N(0, (alpha(1)² + sigma(1)²) I)``: the law of ``x_1 = alpha(1) x0 +
    sigma(1) eps`` for data of unit variance, so ``N(0, I)`` on VP paths and nearly
    ``N(0, sigma_max²)`` on VE, where ``alpha = 1`` (a prior of variance ``sigma(1)²`` alone would
    drop the signal VP keeps at ``t = 1`` and VE always keeps)."""
    from . import sde

    drift = sde.pf_ode_drift(score, path)
    prior_var = float(path.sigma(1.0)) ** 2 + float(path.alpha(1.0)) ** 2
    logp, _, _ = sde.log_likelihood(drift, sde.exact_divergence(drift), x,
                                    lambda z: sde.gaussian_logp(z, prior_var), t_eps=t_eps,
                                    rtol=rtol, atol=atol)
    return float(-logp.mean())
