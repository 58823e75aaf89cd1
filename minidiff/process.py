"""Gaussian paths: the one forward process behind every model in minidiff.

    x_t = alpha(t) * x0 + sigma(t) * eps,        eps ~ N(0, I)

DDPM (a discrete variance-preserving chain), the score SDEs (VP, sub-VP, VE), EDM (alpha = 1,
sigma = t), rectified flow (alpha = 1 - t, sigma = t) and SiT's interpolants are all choices of
``(alpha, sigma)``. A path is a small frozen object with ``alpha(t)``, ``sigma(t)`` and, for the
velocity targets, their time derivatives; ``marginal`` draws ``x_t`` given ``x0`` and ``eps``.

The signal-to-noise ratio is ``snr(t) = alpha(t)² / sigma(t)²`` (Kingma et al. 2021, eq. (2)).
"""

import dataclasses

import numpy as onp

from .targets import convert, per_sample


class GaussianPath:
    """Base class: subclasses define ``alpha(t)``, ``sigma(t)`` (and optionally derivatives)."""

    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def snr(self, t):
        """``alpha(t)² / sigma(t)²``."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def marginal(self, x0, t, eps):
        """``x_t = alpha(t) x0 + sigma(t) eps``; ``t`` scalar or ``(N,)``; ``x0, eps: (N, ...)``."""
        if onp.shape(x0) != onp.shape(eps):
            raise ValueError(f"`x0` and `eps` must have the same shape "
                             f"(got {onp.shape(x0)} and {onp.shape(eps)})")
        a = per_sample(self.alpha(t), x0, "alpha")
        s = per_sample(self.sigma(t), x0, "sigma")
        return a * x0 + s * eps


@dataclasses.dataclass(frozen=True)
class DiscreteVP(GaussianPath):
    """The DDPM chain as a path over integer steps (Ho et al. 2020, eq. (4)).

    ``alpha_bar: (T,)`` holds ``alpha_bar`` for array indices ``i = 0 .. T-1``, i.e. for the
    paper's steps ``t = i + 1`` (minidiff's time-index convention; see ``ddpm.py``). Then
    ``alpha(i) = sqrt(alpha_bar[i])`` and ``sigma(i) = sqrt(1 - alpha_bar[i])``, so
    ``alpha² + sigma² = 1``: variance preserving.
    """

    alpha_bar: onp.ndarray

    def __post_init__(self):
        ab = onp.asarray(self.alpha_bar, dtype=onp.float64)
        if ab.ndim != 1 or ab.size == 0 or not onp.all((ab > 0) & (ab <= 1)):
            raise ValueError("`alpha_bar` must be a non-empty 1-D array with values in (0, 1]")
        object.__setattr__(self, "alpha_bar", ab)

    @property
    def T(self):
        return self.alpha_bar.size

    def _index(self, t):
        t = onp.asarray(t)
        if not onp.issubdtype(t.dtype, onp.integer) or onp.any((t < 0) | (t >= self.T)):
            raise ValueError(f"step index `t` must be an integer in [0, {self.T - 1}] "
                             f"(array index = paper step - 1), got {t!r}")
        return t

    def alpha(self, t):
        return onp.sqrt(self.alpha_bar[self._index(t)])

    def sigma(self, t):
        return onp.sqrt(1.0 - self.alpha_bar[self._index(t)])


@dataclasses.dataclass(frozen=True)
class VarianceExploding(GaussianPath):
    """``alpha = 1``, ``sigma = t``: noise added, signal never shrunk (NCSN; Karras et al. 2022
    write every model in this frame, with ``t = sigma``). ``t`` must be positive."""

    def alpha(self, t):
        return onp.ones_like(onp.asarray(t, dtype=onp.float64))

    def sigma(self, t):
        t = onp.asarray(t, dtype=onp.float64)
        if not onp.all(t > 0):
            raise ValueError(f"`t` (= sigma) must be positive (got {t!r})")
        return t

    def dalpha(self, t):
        return onp.zeros_like(onp.asarray(t, dtype=onp.float64))

    def dsigma(self, t):
        return onp.ones_like(onp.asarray(t, dtype=onp.float64))


@dataclasses.dataclass(frozen=True)
class Linear(GaussianPath):
    """``alpha = 1 - t``, ``sigma = t`` for ``t`` in ``[0, 1]``: rectified flow (Liu et al. 2023)
    and the conditional optimal-transport path of flow matching (Lipman et al. 2023). Its
    velocity ``d x_t / dt = eps - x0`` is constant along each line."""

    def alpha(self, t):
        return 1.0 - self._check(t)

    def sigma(self, t):
        return self._check(t)

    def dalpha(self, t):
        return -onp.ones_like(self._check(t))

    def dsigma(self, t):
        return onp.ones_like(self._check(t))

    @staticmethod
    def _check(t):
        t = onp.asarray(t, dtype=onp.float64)
        if not onp.all((t >= 0) & (t <= 1)):
            raise ValueError(f"`t` must lie in [0, 1] (got {t!r})")
        return t


def oracle(mixture, path, kind="eps"):
    """The exact network for data from a Gaussian mixture: ``f(x_t, t)`` returning the posterior
    mean of ``kind`` (eps, x0, v, velocity or score) given ``x_t``, for the scalar time ``t``.

    The noised law at ``t`` is ``mixture.noised(alpha(t), sigma(t))``, whose score is closed
    form; ``targets.convert`` turns that score into the requested prediction. Samplers driven by
    it must reproduce the mixture: the tests' yardstick for every sampler in the book.
    """
    def predict(xt, t):
        if onp.ndim(t) != 0:
            raise ValueError("the oracle takes one scalar time per call "
                             f"(got shape {onp.shape(t)})")
        alpha, sigma = float(path.alpha(t)), float(path.sigma(t))
        score = mixture.noised(alpha, sigma).score(xt)
        derivs = {}
        if kind == "velocity":
            derivs = {"dalpha": float(path.dalpha(t)), "dsigma": float(path.dsigma(t))}
        return convert(score, "score", kind, xt, alpha, sigma, **derivs)
    return predict
