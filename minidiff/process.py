"""Gaussian paths: the one forward process behind every model in minidiff.

    x_t = alpha(t) * x0 + sigma(t) * eps,        eps ~ N(0, I)

DDPM (a discrete variance-preserving chain, ``DiscreteVP``), the score SDEs (``VP``, ``SubVP``,
``VE``), EDM (alpha = 1, sigma = t: ``SigmaPath``), rectified flow (alpha = 1 - t, sigma = t:
``Linear``) and SiT's interpolants are all choices of ``(alpha, sigma)``. A path is a small frozen
object with ``alpha(t)``, ``sigma(t)`` and their time derivatives; from these alone follow the SDE
coefficients ``f`` and ``g²`` (``GaussianPath.f``, ``.g2``), written once for every path.
``marginal`` draws ``x_t`` given ``x0`` and ``eps``.

The signal-to-noise ratio is ``snr(t) = alpha(t)² / sigma(t)²`` (Kingma et al. 2021, eq. (2)).
"""

import dataclasses

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from .targets import check_positive, convert, per_sample


class GaussianPath:
    """Base class: subclasses define ``alpha(t)``, ``sigma(t)`` (and optionally derivatives)."""

    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def dalpha(self, t):
        raise NotImplementedError(f"{type(self).__name__} has no time derivative of alpha")

    def dsigma(self, t):
        raise NotImplementedError(f"{type(self).__name__} has no time derivative of sigma")

    def snr(self, t):
        """``alpha(t)² / sigma(t)²``."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def f(self, t):
        """SDE drift coefficient ``f(t) = d log alpha / dt`` (the SDE is ``dx = f x dt + g dw``)."""
        return self.dalpha(t) / self.alpha(t)

    def g2(self, t):
        """Squared diffusion ``g(t)² = d sigma²/dt - 2 f(t) sigma²``.

        Both follow from asking that ``dx = f(t) x dt + g(t) dw`` have the marginals
        ``N(alpha x0, sigma² I)``: the mean obeys ``m' = f m`` and the variance
        ``v' = 2 f v + g²`` (Särkkä & Solin 2019, eq. (5.51)); Kingma et al. 2021, appendix A.1,
        derive the same pair."""
        s = self.sigma(t)
        return 2.0 * s * self.dsigma(t) - 2.0 * self.f(t) * s * s

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

    @property
    def ratios(self):
        """``sigma / alpha = sqrt((1 - alpha_bar) / alpha_bar)`` at every step ``(T,)``: the
        noise level of each step in the sigma frame (Karras et al. 2022; diffusers' and
        k-diffusion's ``sigmas`` of a discrete schedule)."""
        return onp.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)

    def _index(self, t):
        return check_step(t, self.T)

    def _fractional_ratio(self, t):
        """``sigma / alpha`` at a fractional step: linear in ``log(sigma / alpha)`` between the
        neighbouring integer steps (the inverse of ``t_from_ratio``)."""
        t = onp.asarray(t, dtype=onp.float64)
        if not onp.all((t >= 0) & (t <= self.T - 1)):
            raise ValueError(f"a fractional step must lie in [0, {self.T - 1}] (got {t!r})")
        return onp.exp(onp.interp(t, onp.arange(self.T), onp.log(self.ratios)))

    def alpha(self, t):
        """``sqrt(alpha_bar[t])`` at an integer step; at a fractional one (float ``t``), the
        alpha of the interpolated ``sigma / alpha`` on the same VP path, ``1 / sqrt(1 + r²)``."""
        if onp.issubdtype(onp.asarray(t).dtype, onp.floating):
            return 1.0 / onp.sqrt(1.0 + self._fractional_ratio(t) ** 2)
        return onp.sqrt(self.alpha_bar[self._index(t)])

    def sigma(self, t):
        """``sqrt(1 - alpha_bar[t])``; at a fractional step ``r / sqrt(1 + r²)``."""
        if onp.issubdtype(onp.asarray(t).dtype, onp.floating):
            r = self._fractional_ratio(t)
            return r / onp.sqrt(1.0 + r * r)
        return onp.sqrt(1.0 - self.alpha_bar[self._index(t)])

    def t_from_ratio(self, r):
        """The fractional step index at which ``sigma / alpha = r``, so that every sampler on a
        sigma grid (``samplers.py``, Karras et al.'s grid included) can drive a model trained
        on the discrete chain. Between two steps the index is linear in ``log(sigma / alpha)``:
        the rule of diffusers' ``_sigma_to_t`` and k-diffusion's ``DiscreteSchedule.sigma_to_t``.
        A level outside the chain's range is clipped to its first or last step, as both do
        (the network was never trained beyond them); ``r`` must be positive."""
        r = _ratio(r)
        log_ratios = onp.log(self.ratios)  # increasing with the step
        return onp.interp(onp.log(r), log_ratios, onp.arange(self.T, dtype=onp.float64))


@dataclasses.dataclass(frozen=True)
class SigmaPath(GaussianPath):
    """``alpha = 1``, ``sigma = t``: noise added, signal never shrunk. Karras et al. (2022) write
    every model in this frame, with time equal to the noise level (EDM; ``samplers.py``)."""

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


def _ratio(r, allow_zero=False):
    """A noise level ``sigma / alpha``: positive (or zero, where the path reaches the data) and
    finite."""
    r = onp.asarray(r, dtype=onp.float64)
    if not onp.all(onp.isfinite(r) & ((r >= 0) if allow_zero else (r > 0))):
        raise ValueError(f"`r` (= sigma / alpha, a noise level) must be "
                         f"{'non-negative' if allow_zero else 'positive'} and finite (got {r!r})")
    return r


def check_step(i, T):
    """A step index of a discrete chain: integers in ``[0, T-1]`` (array index = paper step - 1)."""
    i = onp.asarray(i)
    if not onp.issubdtype(i.dtype, onp.integer) or onp.any((i < 0) | (i >= T)):
        raise ValueError(f"step index must be an integer in [0, {T - 1}] "
                         f"(array index = paper step - 1), got {i!r}")
    return i


def _times(t, t_max=1.0):
    """``t`` checked to lie in ``[0, t_max]``, as float64; an autograd tracer passes through
    untouched, so that ``autograd`` can differentiate a path's ``alpha`` and ``sigma`` in ``t``
    (chapter 11's test of the velocity)."""
    value = onp.asarray(getval(t), dtype=onp.float64)
    if not onp.all((value >= 0) & (value <= t_max)):
        raise ValueError(f"`t` must lie in [0, {t_max:g}] (got {value!r})")
    return value if getval(t) is t else t


@dataclasses.dataclass(frozen=True)
class VP(GaussianPath):
    """The variance-preserving SDE ``dx = -½ beta(t) x dt + sqrt(beta(t)) dw``, ``t`` in [0, 1],
    ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021, eq. (11)).

    Its marginals have ``alpha = exp(-½ B(t))`` with
    ``B(t) = int_0^t beta = beta_min t + ½ (beta_max - beta_min) t²``, and
    ``sigma² = 1 - alpha²`` (their eq. (29)). DDPM's chain is its discretisation with
    ``beta_i = beta(t_i) / T`` (their appendix B): 0.1 and 20 are 1000 x 1e-4 and 1000 x 0.02."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        check_positive(self.beta_min, "beta_min", allow_zero=True, why=": it is a rate")
        check_positive(self.beta_max, "beta_max", why=": it is a rate")
        if not self.beta_min <= self.beta_max:
            raise ValueError(f"need `beta_min` <= `beta_max` (got {self.beta_min}, "
                             f"{self.beta_max})")

    def beta(self, t):
        return self.beta_min + _times(t) * (self.beta_max - self.beta_min)

    def big_b(self, t):
        t = _times(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha(self, t):
        return np.exp(-0.5 * self.big_b(t))

    def sigma(self, t):
        return np.sqrt(-np.expm1(-self.big_b(t)))

    def dalpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def dsigma(self, t):
        # d/dt sqrt(1 - a²) = -a a' / sigma = ½ beta a² / sigma
        return 0.5 * self.beta(t) * self.alpha(t) ** 2 / self.sigma(t)

    def t_from_ratio(self, r):
        """The time at which ``sigma / alpha = r`` (the noise level in the sigma frame):
        ``B(t) = log(1 + r²)``, a quadratic in ``t``."""
        if type(self) is not VP:
            raise NotImplementedError("t_from_ratio is written for the VP path")
        b = onp.log1p(_ratio(r, allow_zero=True) ** 2)
        k = self.beta_max - self.beta_min
        return (-self.beta_min + onp.sqrt(self.beta_min**2 + 2 * k * b)) / k


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
    """The sub-VP SDE (Song et al. 2021, eq. (12)): the VP drift with diffusion
    ``g² = beta(t) (1 - exp(-2 B(t)))``; its marginal std is ``sigma = 1 - alpha²``, below the VP's
    ``sqrt(1 - alpha²)`` at every ``t`` (their eq. (29))."""

    def sigma(self, t):
        return -np.expm1(-self.big_b(t))

    def dsigma(self, t):
        return self.beta(t) * self.alpha(t) ** 2  # d/dt (1 - a²) = -2 a a' = beta a²


@dataclasses.dataclass(frozen=True)
class VE(GaussianPath):
    """The variance-exploding SDE of NCSN++ (Song et al. 2021, eq. (9) and appendix C):
    ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` for ``t`` in [0, 1], so
    ``g² = 2 sigma² log(sigma_max / sigma_min)``. At ``t = 0`` the law is the data plus noise of
    std ``sigma_min``, not the data itself (the paper's convention; small against the data)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        check_positive(self.sigma_min, "sigma_min", why=": it is a standard deviation")
        check_positive(self.sigma_max, "sigma_max", why=": it is a standard deviation")
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"need `sigma_min` < `sigma_max` (got {self.sigma_min}, "
                             f"{self.sigma_max})")

    def alpha(self, t):
        return onp.ones_like(_times(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _times(t)

    def dalpha(self, t):
        return onp.zeros_like(_times(t))

    def dsigma(self, t):
        return self.sigma(t) * onp.log(self.sigma_max / self.sigma_min)


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

    def t_from_ratio(self, r):
        """The time at which ``sigma / alpha = t / (1 - t) = r``: ``t = r / (1 + r)``."""
        r = _ratio(r, allow_zero=True)
        return r / (1.0 + r)

    @staticmethod
    def _check(t):
        return _times(t)


@dataclasses.dataclass(frozen=True)
class GVP(GaussianPath):
    """The generalised variance-preserving interpolant of SiT (Ma et al. 2024, sec. 2; Albergo &
    Vanden-Eijnden 2023): ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` on ``[0, 1]``, so
    ``alpha² + sigma² = 1`` at every ``t`` like the VP path, and it reaches pure noise exactly at
    ``t = 1`` (the VP SDE's ``alpha(1)`` is 0.0066, not 0). Its velocity is ``(pi / 2)(cos(pi t /
    2) eps - sin(pi t / 2) x0)``; in the sigma frame ``sigma / alpha = tan(pi t / 2)``."""

    def alpha(self, t):
        return np.cos(0.5 * onp.pi * _times(t))

    def sigma(self, t):
        return np.sin(0.5 * onp.pi * _times(t))

    def dalpha(self, t):
        return -0.5 * onp.pi * np.sin(0.5 * onp.pi * _times(t))

    def dsigma(self, t):
        return 0.5 * onp.pi * np.cos(0.5 * onp.pi * _times(t))

    def t_from_ratio(self, r):
        """The time at which ``sigma / alpha = tan(pi t / 2) = r``: ``t = 2 arctan(r) / pi``."""
        return 2.0 * onp.arctan(_ratio(r, allow_zero=True)) / onp.pi


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


def path_batches(path, data, batch_size, t_min=1e-3, t_max=1.0, dtype=onp.float32):
    """``batch_fn(rng)`` for ``train.train`` on a continuous path: data points ``x0``, times
    ``t ~ U(t_min, t_max)``, noise ``eps``, ``x_t = alpha x0 + sigma eps``, and the path's
    coefficients at ``t`` (``alpha``, ``sigma``, ``dalpha``, ``dsigma``), all per sample."""
    data = onp.asarray(data, dtype=dtype)

    def batch_fn(rng):
        x0 = data[rng.integers(0, data.shape[0], size=batch_size)]
        t = rng.uniform(t_min, t_max, size=batch_size)
        eps = rng.standard_normal(x0.shape, dtype=dtype)
        coef = {k: getattr(path, k)(t).astype(dtype)
                for k in ("alpha", "sigma", "dalpha", "dsigma")}
        xt = path.marginal(x0, t, eps).astype(dtype)
        return {"x0": x0, "t": t.astype(dtype), "eps": eps, "xt": xt, **coef}
    return batch_fn
