"""Chapter 1 — scores and Langevin dynamics.

The **score** of a density is the vector field ``s(x) = grad_x log p(x)``. It does not depend on
the normalising constant (``grad log (p/Z) = grad log p``), which is why a model of the score can
skip the intractable partition function, and it is all Langevin dynamics needs to draw samples.

1. The score as a field: by autograd of any ``log_prob`` (``score_from_log_prob``), or in closed
   form for the Gaussian mixture (``datasets.GaussianMixture.score``).
2. Unadjusted Langevin dynamics (``langevin``), ``x <- x + (eps/2) s(x) + sqrt(eps) z``, and its
   step-size bias, exact for a Gaussian target (``ula_stationary_cov``).
3. Its two failures (Song & Ermon 2019, sec. 3): between separated modes it mixes too slowly to
   fix their relative weights, and a *learned* score is poor where data are scarce.
4. The fix: perturb the data with a ladder of noise levels (``geometric_sigmas``), learn one
   noise-conditional score network for all of them by denoising score matching (``ncsn_loss``),
   and sample by **annealed Langevin dynamics** from the largest noise to the smallest
   (``annealed_langevin``).
"""

import autograd.numpy as np
import numpy as onp
import scipy.linalg
from autograd import elementwise_grad

from .nn import mean
from .targets import score_from_eps


def score_from_log_prob(log_prob):
    """The score function of an (unnormalised) log-density, by automatic differentiation.

    ``log_prob: (N, D) -> (N,)`` must treat rows independently (row ``n`` of the output depends
    only on row ``n`` of the input); then the gradient of ``sum_n log_prob(x)_n`` with respect to
    ``x`` is, row by row, ``grad log p(x_n)``. Returns ``score: (N, D) -> (N, D)``.
    """
    return elementwise_grad(lambda x: np.sum(log_prob(x)))


def _check_points(x, name="x"):
    x = onp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a batch of points of shape (N, D) (got {x.shape})")
    return x


def _check_positive(value, name, what):
    if not (onp.isscalar(value) and onp.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive number (got {value!r}): it is {what}")


def langevin(score, x, step_size, n_steps, rng, return_path=False):
    """Unadjusted Langevin dynamics (Welling & Teh 2011; Song & Ermon 2019, eq. (2)):

        x_{k+1} = x_k + (eps / 2) * s(x_k) + sqrt(eps) * z_k,      z_k ~ N(0, I)

    ``score: (N, D) -> (N, D)``, ``x: (N, D)`` the starting points, ``step_size`` is ``eps``.
    As ``eps -> 0`` and ``n_steps -> inf`` the chain's law tends to ``p``; at finite ``eps`` it
    is biased (``ula_stationary_cov``). Returns the final points, or the path ``(n_steps+1, N, D)``.
    """
    x = _check_points(x)
    _check_positive(step_size, "step_size", "the Langevin step eps")
    path = [x] if return_path else None
    noise_scale = float(onp.sqrt(step_size))
    for _ in range(int(n_steps)):
        # BEGIN EXERCISE 1.1: one unadjusted Langevin step (Welling & Teh 2011; Song & Ermon 2019,
        #   eq. (2)); notebook 01, section 2
        x = x + (0.5 * step_size) * score(x) + noise_scale * rng.standard_normal(x.shape)
        # END EXERCISE
        if return_path:
            path.append(x)
    return onp.stack(path) if return_path else x


def ula_stationary_cov(cov, step_size):
    """Exact stationary covariance of ``langevin`` on the Gaussian target ``N(mu, cov)``.

    With ``s(x) = -cov^{-1} (x - mu)`` a step is linear, ``x' - mu = A (x - mu) + sqrt(eps) z``
    with ``A = I - (eps/2) cov^{-1}``, so the stationary covariance ``V`` solves the discrete
    Lyapunov equation ``V = A V A^T + eps I``. In 1D, ``V = s² / (1 - eps / (4 s²))``: the chain
    is slightly too wide, by a relative ``eps / (4 s²)`` — the bias a Metropolis correction (MALA)
    would remove. The mean is exact.
    """
    cov = onp.atleast_2d(onp.asarray(cov, dtype=onp.float64))
    _check_positive(step_size, "step_size", "the Langevin step eps")
    # BEGIN EXERCISE 1.2: the stationary covariance of Langevin on a Gaussian (a discrete Lyapunov
    #   equation); notebook 01, section 2
    a = onp.eye(cov.shape[0]) - 0.5 * step_size * onp.linalg.inv(cov)
    return scipy.linalg.solve_discrete_lyapunov(a, step_size * onp.eye(cov.shape[0]))
    # END EXERCISE


def geometric_sigmas(sigma_max, sigma_min, n):
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min`` with a constant ratio
    (Song & Ermon 2019, sec. 4.2): ``sigma_i = sigma_max * (sigma_min / sigma_max)^(i/(n-1))``."""
    _check_positive(sigma_max, "sigma_max", "the largest noise standard deviation")
    _check_positive(sigma_min, "sigma_min", "the smallest noise standard deviation")
    if not sigma_max > sigma_min:
        raise ValueError(f"`sigma_max` ({sigma_max}) must exceed `sigma_min` ({sigma_min})")
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"`n` must be an integer >= 2 (got {n!r})")
    return onp.geomspace(sigma_max, sigma_min, n)


def annealed_langevin(score, sigmas, x, rng, step_lr=2e-5, n_steps_each=100, return_path=False):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level ``sigma_i`` from largest to smallest, run ``n_steps_each`` Langevin steps on the
    noised density ``p_{sigma_i}`` with step ``alpha_i = step_lr * sigma_i² / sigma_L²``, starting
    where the previous level ended. Scaling the step with ``sigma_i²`` keeps the signal-to-noise
    ratio of each update the same at every level (their sec. 4.3).

    ``score(x, sigma) -> (N, D)`` is the score of ``p_sigma``; ``sigmas`` decreasing; ``x: (N, D)``
    the starting points (usually uniform or ``N(0, sigma_1² I)``). Returns the final points, or
    the path ``(L * n_steps_each + 1, N, D)``.
    """
    x = _check_points(x)
    sigmas = onp.asarray(sigmas, dtype=onp.float64)
    if sigmas.ndim != 1 or sigmas.size == 0 or not onp.all(sigmas > 0):
        raise ValueError(f"`sigmas` must be a non-empty 1-D array of positive numbers "
                         f"(got {sigmas!r})")
    if onp.any(onp.diff(sigmas) > 0):
        raise ValueError("`sigmas` must be decreasing: annealing runs from large noise to small")
    _check_positive(step_lr, "step_lr", "the step at the smallest noise level")
    path = [x] if return_path else None
    for sigma in sigmas:
        # BEGIN EXERCISE 1.3: annealed Langevin: the step size at each noise level (Song & Ermon
        #   2019, Algorithm 1); notebook 01, section 4
        alpha = step_lr * (sigma / sigmas[-1]) ** 2
        # END EXERCISE
        noise_scale = float(onp.sqrt(alpha))
        for _ in range(int(n_steps_each)):
            x = x + (0.5 * alpha) * score(x, sigma) + noise_scale * rng.standard_normal(x.shape)
            if return_path:
                path.append(x)
    return onp.stack(path) if return_path else x


# ----------------------------------------------------------------------------- NCSN training

def ncsn_score(apply, params):
    """The noise-conditional score network ``s(x, sigma)`` built from a network ``apply``.

    The network sees ``log sigma`` and predicts the noise ``eps`` that was added; the score is
    ``-eps_hat / sigma`` (``targets.score_from_eps``). This is the output scaling
    ``s = F(x, sigma) / sigma`` of Song & Ermon (2020, technique 3), which keeps the network's
    output of order one at every noise level.
    """
    def score(x, sigma):
        x = onp.asarray(x, dtype=_param_dtype(params))
        sigma = onp.broadcast_to(onp.asarray(sigma, dtype=x.dtype), (x.shape[0],))
        return score_from_eps(apply(params, x, onp.log(sigma)), sigma)
    return score


def _param_dtype(params):
    while isinstance(params, dict | list):
        params = next(iter(params.values())) if isinstance(params, dict) else params[0]
    return params.dtype


def ncsn_loss(apply):
    """Denoising score matching over a ladder of noise levels (Song & Ermon 2019, eqs. (5)-(6)).

    For ``x~ = x0 + sigma eps`` the perturbation kernel's score is
    ``-(x~ - x0) / sigma² = -eps / sigma``
    (Vincent 2011). With weight ``lambda(sigma) = sigma²`` the objective is

        L = 1/2 E_{sigma, x0, eps} || sigma s(x~, sigma) + eps ||²  =  1/2 E || eps_hat - eps ||²

    (sum over dimensions, mean over the batch): training an NCSN with the paper's weighting *is*
    noise prediction. Chapter 2 proves why its minimiser is the score of ``p_sigma``.

    Returns ``loss(params, batch)`` with ``batch = {"x0": (N, D), "sigma": (N,), "eps": (N, D)}``.
    """
    def loss(params, batch):
        x0, sigma, eps = batch["x0"], batch["sigma"], batch["eps"]
        x_noisy = x0 + sigma[:, None] * eps  # (N, D)
        eps_hat = apply(params, x_noisy, np.log(sigma))
        return 0.5 * mean(np.sum((eps_hat - eps) ** 2, axis=1))
    return loss


def ncsn_batches(data, sigmas, batch_size, dtype=onp.float32):
    """``batch_fn(rng)`` for ``train.train``: a minibatch of ``data: (M, D)``, one noise level per
    point drawn uniformly from ``sigmas``, and the noise ``eps``, all in ``dtype``."""
    data = _check_points(data, "data").astype(dtype)
    sigmas = onp.asarray(sigmas, dtype=dtype)
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"`batch_size` must be a positive integer (got {batch_size!r})")

    def batch_fn(rng):
        idx = rng.integers(0, data.shape[0], size=batch_size)
        sigma = sigmas[rng.integers(0, sigmas.size, size=batch_size)]
        eps = rng.standard_normal((batch_size, data.shape[1]), dtype=dtype)
        return {"x0": data[idx], "sigma": sigma, "eps": eps}
    return batch_fn


def relative_score_error(score, exact_score, x, sigma):
    """Relative root-mean-square error ``sqrt(sum |s - s*|² / sum |s*|²)`` of a learned
    ``score(x, sigma)`` against the exact score ``exact_score(x)`` at the points ``x: (N, D)``."""
    learned = onp.asarray(score(x, sigma), dtype=onp.float64)
    exact = onp.asarray(exact_score(x), dtype=onp.float64)
    return float(onp.sqrt(onp.sum((learned - exact) ** 2) / onp.sum(exact**2)))


def mode_fractions(x, means):
    """Fraction of points whose nearest mean is each of ``means: (K, D)``: how a sampler split
    its mass between modes. Returns ``(K,)``."""
    x = _check_points(x)
    d2 = ((x[:, None, :] - onp.asarray(means)[None]) ** 2).sum(-1)  # (N, K)
    return onp.bincount(d2.argmin(axis=1), minlength=len(means)) / x.shape[0]
