"""Data with exact answers (a Gaussian mixture), 2D toy sets, and MNIST from ``data/``.

The Gaussian mixture is the oracle of the whole book. For ``p(x) = sum_k w_k N(x; mu_k, S_k)``
everything a diffusion model estimates has a closed form:

- the score ``grad log p(x) = sum_k r_k(x) S_k^{-1} (mu_k - x)`` with responsibilities
  ``r_k(x) = w_k N(x; mu_k, S_k) / p(x)``;
- the law of ``x_t = alpha x0 + sigma eps`` (``eps ~ N(0, I)``) is again a mixture, with means
  ``alpha mu_k`` and covariances ``alpha² S_k + sigma² I`` (``noised``);
- the posterior mean ``E[x0 | x_t]`` (``posterior_mean``), the quantity a denoiser learns.

For a *finite* set of clean points the posterior is a weighting of the points themselves
(``posterior_weights``): the ideal denoiser of a training set (``models/ideal.py``) and the
importance-sampling check on Tweedie's formula (``dsm.posterior_mean_importance``).

Samples of the image models are written as ``.npz`` files of uint8 pixels and int64 labels
(``save_samples`` / ``load_samples``), readable by any tool.
"""

import functools
import gzip
import hashlib
import math
from pathlib import Path

import autograd.numpy as np
import numpy as onp

from .nn import logsumexp
from .nn.checkpoint import atomic_write


class GaussianMixture:
    """``sum_k weights[k] * N(means[k], covs[k])`` in ``D`` dimensions, with exact answers.

    ``weights: (K,)`` positive, summing to 1; ``means: (K, D)``; ``covs: (K, D, D)`` symmetric
    positive definite. Arrays are stored as float64.
    """

    def __init__(self, weights, means, covs):
        weights = onp.asarray(weights, dtype=onp.float64)
        means = onp.asarray(means, dtype=onp.float64)
        covs = onp.asarray(covs, dtype=onp.float64)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"`weights` must have shape (K,) (got {weights.shape})")
        if onp.any(weights <= 0) or abs(weights.sum() - 1.0) > 1e-9:
            raise ValueError(f"`weights` must be positive and sum to 1 (got {weights})")
        k = weights.size
        if means.ndim != 2 or means.shape[0] != k:
            raise ValueError(f"`means` must have shape ({k}, D) (got {means.shape})")
        d = means.shape[1]
        if covs.shape != (k, d, d):
            raise ValueError(f"`covs` must have shape ({k}, {d}, {d}) (got {covs.shape})")
        if not onp.allclose(covs, onp.swapaxes(covs, 1, 2)):
            raise ValueError("`covs` must be symmetric")
        try:
            chol = onp.linalg.cholesky(covs)  # (K, D, D)
        except onp.linalg.LinAlgError:
            raise ValueError("`covs` must be positive definite") from None
        self.weights, self.means, self.covs, self.chol = weights, means, covs, chol
        self.precisions = onp.linalg.inv(covs)  # (K, D, D)
        self.log_dets = 2.0 * onp.log(onp.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)  # (K,)

    @classmethod
    def isotropic(cls, weights, means, std):
        """Components ``N(mu_k, std_k² I)``; ``std`` is a scalar or one value per component."""
        means = onp.asarray(means, dtype=onp.float64)
        k, d = means.shape
        std = onp.broadcast_to(onp.asarray(std, dtype=onp.float64), (k,))
        return cls(weights, means, std[:, None, None] ** 2 * onp.eye(d))

    @property
    def dim(self):
        return self.means.shape[1]

    def __repr__(self):
        return f"GaussianMixture(K={self.weights.size}, D={self.dim})"

    def _check_x(self, x):
        if onp.ndim(x) != 2 or onp.shape(x)[1] != self.dim:
            raise ValueError(f"`x` must have shape (N, {self.dim}) (got {onp.shape(x)})")

    def sample(self, n, rng, return_labels=False):
        """``n`` draws (``(n, D)`` float64) and, optionally, the component of each."""
        if not (isinstance(n, int | onp.integer) and n >= 0):
            raise ValueError(f"`n` must be a non-negative integer (got {n!r})")
        labels = rng.choice(self.weights.size, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        x = self.means[labels] + onp.einsum("nij,nj->ni", self.chol[labels], z)
        return (x, labels) if return_labels else x

    def component_log_probs(self, x):
        """``log w_k + log N(x; mu_k, S_k)`` for every point and component: ``(N, K)``.

        Written in autograd NumPy, so ``autograd.grad`` of ``log_prob`` is available as a check.
        """
        self._check_x(x)
        diff = x[:, None, :] - self.means[None]  # (N, K, D)
        maha = np.einsum("nki,kij,nkj->nk", diff, self.precisions, diff)  # (N, K)
        log_norm = -0.5 * (self.dim * math.log(2 * math.pi) + self.log_dets)  # (K,)
        return np.log(self.weights) + log_norm - 0.5 * maha

    def log_prob(self, x):
        """``log p(x)``, shape ``(N,)``."""
        return logsumexp(self.component_log_probs(x), axis=1)

    def responsibilities(self, x):
        """Posterior component probabilities ``r_k(x)``, shape ``(N, K)``, rows summing to 1."""
        lp = onp.asarray(self.component_log_probs(x))
        return onp.exp(lp - lp.max(axis=1, keepdims=True)) / onp.exp(
            lp - lp.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)

    def score(self, x):
        """Closed-form ``grad_x log p(x) = sum_k r_k(x) S_k^{-1} (mu_k - x)``, shape ``(N, D)``."""
        x = onp.asarray(x, dtype=onp.float64)
        r = self.responsibilities(x)  # (N, K)
        diff = self.means[None] - x[:, None, :]  # (N, K, D)
        return onp.einsum("nk,kij,nkj->ni", r, self.precisions, diff)

    def score_divergence(self, x):
        """Closed-form ``div s(x) = tr(grad_x s)``, shape ``(N,)``. With
        ``a_k = S_k^{-1}(mu_k - x)``, ``s = sum_k r_k a_k`` and ``grad r_k = r_k (a_k - s)``, so
        ``div s = sum_k r_k (|a_k|² - tr S_k^{-1}) - |s|²``. The probability-flow likelihood
        (chapter 4) integrates it."""
        x = onp.asarray(x, dtype=onp.float64)
        r = self.responsibilities(x)  # (N, K)
        a = onp.einsum("kij,nkj->nki", self.precisions, self.means[None] - x[:, None, :])
        s = onp.einsum("nk,nki->ni", r, a)  # the score
        traces = onp.trace(self.precisions, axis1=1, axis2=2)  # (K,)
        return onp.einsum("nk,nk->n", r, (a**2).sum(-1) - traces) - (s**2).sum(-1)

    def noised(self, alpha, sigma):
        """The law of ``alpha * x0 + sigma * eps``, ``x0 ~ self``, ``eps ~ N(0, I)``: a mixture with
        means ``alpha mu_k`` and covariances ``alpha² S_k + sigma² I``."""
        alpha, sigma = float(alpha), float(sigma)
        if not alpha > 0:
            raise ValueError(f"`alpha` must be positive (got {alpha}): it scales the data")
        if not sigma >= 0:
            raise ValueError(f"`sigma` must be non-negative (got {sigma}): it is a standard "
                             "deviation")
        covs = alpha**2 * self.covs + sigma**2 * onp.eye(self.dim)
        return GaussianMixture(self.weights, alpha * self.means, covs)

    def posterior_mean(self, xt, alpha, sigma):
        """``E[x0 | x_t]`` for ``x_t = alpha x0 + sigma eps``, in closed form, shape ``(N, D)``.

        Given component ``k``, ``(x0, x_t)`` is jointly Gaussian, so
        ``E[x0 | x_t, k] = mu_k + alpha S_k (alpha² S_k + sigma² I)^{-1} (x_t - alpha mu_k)``,
        and the answer mixes these with the noised mixture's responsibilities ``r_k(x_t)``.
        """
        xt = onp.asarray(xt, dtype=onp.float64)
        noisy = self.noised(alpha, sigma)
        r = noisy.responsibilities(xt)  # (N, K)
        gain = alpha * onp.einsum("kij,kjl->kil", self.covs, noisy.precisions)  # (K, D, D)
        resid = xt[:, None, :] - alpha * self.means[None]  # (N, K, D)
        cond = self.means[None] + onp.einsum("kij,nkj->nki", gain, resid)  # (N, K, D)
        return onp.einsum("nk,nki->ni", r, cond)


def posterior_weights(prior_samples, xt, alpha, sigma):
    """The posterior over a finite set of clean points: for ``x0`` uniform on ``prior_samples
    (M, D)`` and ``x_t = alpha x0 + sigma eps``, ``w_nm = P(x0 = x0_m | x_t = xt_n)``
    ``∝ N(xt_n; alpha x0_m, sigma² I)``. Returns ``(N, M)``, each row summing to one: float32
    when both arrays are float32 (images), float64 otherwise.

    The squared distance is expanded, ``|xt - alpha x0|² = |xt|² - 2 alpha xt·x0 + alpha² |x0|²``,
    and ``|xt|²`` dropped (it is the same for every ``m``, so the normalisation removes it): one
    matrix product instead of an ``(N, M, D)`` array of differences."""
    x0, xt = onp.asarray(prior_samples), onp.asarray(xt)
    dtype = onp.float32 if x0.dtype == xt.dtype == onp.float32 else onp.float64
    x0, xt, alpha, sigma = x0.astype(dtype), xt.astype(dtype), float(alpha), float(sigma)
    logw = (alpha * (xt @ x0.T) - 0.5 * alpha**2 * onp.sum(x0**2, axis=1)) / sigma**2  # (N, M)
    w = onp.exp(logw - logw.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- 2D toy sets

def gmm8(radius=2.0, std=0.2):
    """Eight equal Gaussians on a circle: the toy set with exact answers."""
    angles = 2 * math.pi * onp.arange(8) / 8
    means = radius * onp.stack([onp.cos(angles), onp.sin(angles)], axis=1)
    return GaussianMixture.isotropic(onp.full(8, 1 / 8), means, std)


def unequal_modes(weights=(0.2, 0.8), offset=4.0, std=1.0):
    """Two well-separated modes with unequal weights at ``±(offset, offset)``.

    The mixture Song & Ermon (2019, sec. 3.2.2) use to show that Langevin dynamics with the exact
    score cannot recover the relative weights of separated modes.
    """
    means = onp.array([[-offset, -offset], [offset, offset]])
    return GaussianMixture.isotropic(onp.asarray(weights, dtype=float), means, std)


def _swissroll(n, rng, noise):
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))
    x = onp.stack([t * onp.cos(t), t * onp.sin(t)], axis=1) / 5.0
    return x + noise * rng.standard_normal((n, 2))


def _moons(n, rng, noise):
    upper = rng.uniform(size=n) < 0.5
    a = math.pi * rng.uniform(size=n)
    x = onp.where(upper[:, None], onp.stack([onp.cos(a), onp.sin(a)], 1),
                  onp.stack([1 - onp.cos(a), 0.5 - onp.sin(a)], 1))
    return (x - [0.5, 0.25]) * 1.5 + noise * rng.standard_normal((n, 2))


def _checkerboard(n, rng, noise):
    # 8 of the 16 unit squares of [-2, 2]², alternating like a chess board (noise unused).
    x1 = rng.uniform(-2, 2, size=n)
    x2 = rng.uniform(0, 1, size=n) + rng.integers(0, 2, size=n) * 2 - 2  # in [-2,-1) ∪ [0,1)
    x2 = x2 + (onp.floor(x1) % 2)  # shift odd columns up by one
    return onp.stack([x1, x2], axis=1)


def _rings(n, rng, noise):
    radius = rng.choice([0.5, 1.25, 2.0], size=n)
    a = 2 * math.pi * rng.uniform(size=n)
    x = radius[:, None] * onp.stack([onp.cos(a), onp.sin(a)], axis=1)
    return x + noise * rng.standard_normal((n, 2))


_TOYS = {"swissroll": (_swissroll, 0.05), "moons": (_moons, 0.05),
         "checkerboard": (_checkerboard, 0.0), "rings": (_rings, 0.05)}


def toy(name, n, rng, noise=None):
    """``n`` points ``(n, 2)`` float64 of a named 2D set, each scaled to roughly ``[-2.5, 2.5]²``.

    ``name`` is one of ``"swissroll"``, ``"moons"``, ``"checkerboard"``, ``"rings"``, ``"gmm8"``
    (the last is ``gmm8().sample``, with an exact density); ``noise`` overrides the default jitter.
    """
    if not (isinstance(n, int | onp.integer) and n >= 0):
        raise ValueError(f"`n` must be a non-negative integer (got {n!r})")
    if name == "gmm8":
        return gmm8().sample(n, rng)
    if name not in _TOYS:
        raise ValueError(f"unknown toy set {name!r}: expected one of "
                         f"{sorted([*_TOYS, 'gmm8'])}")
    fn, default_noise = _TOYS[name]
    return fn(n, rng, default_noise if noise is None else noise)


# ----------------------------------------------------------------------------- MNIST

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mnist"

# Canonical SHA-256 of the *uncompressed* IDX files (data/README.md says where they come from).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
           "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}


def _read_idx(path, name):
    """Decompress, verify against the canonical SHA-256, and decode one IDX file."""
    try:
        with gzip.open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"MNIST file {str(path)!r} is missing: data/mnist/ ships with "
                                "minidiff (data/make_mnist.py re-derives it)") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"MNIST file {str(path)!r} is not a valid gzip file: {err}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_SHA256[name]:
        raise ValueError(f"MNIST file {str(path)!r} does not match its canonical checksum "
                         f"(sha256 {digest}, expected {MNIST_SHA256[name]}): refusing to use "
                         "altered data; re-run data/make_mnist.py")
    ndim = blob[3]
    shape = tuple(int(s) for s in onp.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    return onp.frombuffer(blob, dtype=onp.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=4)
def _mnist_uint8(split, data_dir):
    images_name, labels_name, n = _SPLITS[split]
    images = _read_idx(Path(data_dir) / f"{images_name}.gz", images_name)
    labels = _read_idx(Path(data_dir) / f"{labels_name}.gz", labels_name)
    assert images.shape == (n, 28, 28) and labels.shape == (n,)  # guaranteed by the checksums
    return images, labels


# The training split cut in two: runs are compared on the last 10,000 training digits, and the
# models that such a comparison chooses between train on the first 50,000 only. The test digits
# are reported, never chosen on.
HELD_OUT = 50_000
_SUBSETS = {"fit": ("train", slice(None, HELD_OUT)), "validation": ("train", slice(HELD_OUT, None))}


def mnist(split="train", data_dir=None):
    """MNIST as ``(images, labels)``: images float32 ``(N, 1, 28, 28)`` in ``[-1, 1]``
    (``pixel / 127.5 - 1``), labels int64 ``(N,)``. ``split`` is ``"train"`` (60,000),
    ``"test"`` (10,000), or the training split's two parts ``"fit"`` (its first 50,000) and
    ``"validation"`` (its last 10,000, held out to choose between runs).

    Every load checks the decompressed files against the canonical SHA-256 (a mismatch raises a
    ``ValueError``); decoded arrays are cached per process.
    """
    if split not in _SPLITS and split not in _SUBSETS:
        raise ValueError(f"`split` must be 'train', 'test', 'fit' or 'validation' (got "
                         f"{split!r})")
    whole, part = _SUBSETS.get(split, (split, slice(None)))
    images, labels = _mnist_uint8(whole, str(DATA_DIR if data_dir is None else data_dir))
    x = images[part].astype(onp.float32)[:, None] * (1.0 / 127.5) - 1.0  # (N, 1, 28, 28)
    return x, labels[part].astype(onp.int64)


# ----------------------------------------------------------------------------- sample files

def to_uint8(x):
    """``[-1, 1]`` floats to 0..255 pixels (the inverse of the MNIST loader's scaling)."""
    return onp.clip(onp.round((onp.asarray(x) + 1.0) * 127.5), 0, 255).astype(onp.uint8)


def save_samples(path, images, labels):
    """Write samples as ``.npz`` with ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64
    ``(N,)``, atomically: any tool can read them (``numpy.load``, no pickle)."""
    images = onp.asarray(images)
    if images.dtype != onp.uint8 or images.ndim != 3:
        raise ValueError(f"`images` must be uint8 (N, H, W) (got {images.dtype} {images.shape})")
    labels = onp.asarray(labels)
    if not onp.issubdtype(labels.dtype, onp.integer) or labels.shape != images.shape[:1]:
        raise ValueError(f"`labels` must be {images.shape[0]} integers (got {labels.dtype} "
                         f"{labels.shape})")
    labels = labels.astype(onp.int64)
    atomic_write(path, lambda f: onp.savez_compressed(f, images=images, labels=labels))


def load_samples(path):
    """Read ``save_samples``' format back: ``(images uint8 (N, H, W), labels int64 (N,))``.
    Anything else (not an ``.npz``, missing arrays, float labels, no images) is a ``ValueError``
    that names the file and what it holds."""
    try:
        with open(path, "rb") as fh, onp.load(fh, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except KeyError as err:
        raise ValueError(f"{path!s} must hold `images` and `labels` arrays (missing {err})") \
            from None
    except FileNotFoundError:
        raise ValueError(f"no samples file at {path!s}") from None
    except (ValueError, OSError, EOFError) as err:
        if "pickle" in str(err):  # numpy reads any non-zip bytes as a possible pickle
            err = "not an .npz archive (numpy.savez format)"
        raise ValueError(f"cannot read samples from {path!s}: {err}") from None
    if images.dtype != onp.uint8 or images.ndim != 3 or len(images) == 0 \
            or labels.shape != images.shape[:1] or not onp.issubdtype(labels.dtype, onp.integer):
        raise ValueError(f"{path!s}: expected uint8 images (N, H, W) with N >= 1 and N integer "
                         f"labels (got images {images.dtype} {images.shape}, labels "
                         f"{labels.dtype} {labels.shape})")
    return images, labels.astype(onp.int64)
