"""Chapter 2 — why a denoiser is a score network.

Three ways to fit a model ``s(x)`` to the score of data we can only sample:

1. **Explicit score matching** (Hyvärinen 2005, Theorem 1):
   ``E_p[ tr(grad_x s(x)) + ½|s(x)|² ]`` equals ``½ E_p|s - grad log p|²`` up to a constant, by
   integration by parts; it needs the Jacobian trace, D backward passes in D dimensions.
2. **Sliced score matching** (Song, Garg, Shi & Ermon 2019, sec. 3): the trace is replaced by
   random projections ``v^T (grad_x s) v``, one backward pass whatever D is.
3. **Denoising score matching** (Vincent 2011, sec. 4.2, ``J_DSM``): perturb
   ``x~ = x0 + sigma eps`` and regress onto the score of the perturbation kernel,
   ``-(x~ - x0) / sigma² = -eps / sigma``. No derivative of the model at all — and the objective
   differs from explicit score matching on ``p_sigma`` by a constant that does not depend on the
   model (Vincent's appendix), so its minimiser is ``grad log p_sigma``.

Why the minimiser of a denoising regression is the score: the best prediction of ``eps`` from
``x~`` is ``E[eps | x~]``, and **Tweedie's formula** says
``E[eps | x~] = -sigma grad log p_sigma(x~)`` and ``E[x0 | x~] = x~ + sigma² grad log p_sigma(x~)``.
The conversions live in ``targets.py``; ``posterior_mean_importance`` gives an independent Monte
Carlo check of them.
"""

import autograd.numpy as np
import numpy as onp
from autograd import elementwise_grad, grad

from .datasets import posterior_weights  # noqa: F401  (chapter 2 uses it; it lives with the data)
from .nn import mean
from .targets import per_sample, score_from_eps


def explicit_score_matching(score, x):
    """Hyvärinen (2005, Theorem 1): ``J = E[ tr(grad_x s(x)) + ½ |s(x)|² ]``, the exact Jacobian
    trace by automatic differentiation (one backward pass per dimension; for small D).

    ``score: (N, D) -> (N, D)`` must treat rows independently; ``x: (N, D)`` samples of ``p``.
    Differentiable with respect to whatever ``score`` closes over (autograd nests).
    """
    # BEGIN EXERCISE 2.1: explicit score matching: trace of the score's Jacobian plus half its
    #   squared norm (Hyvarinen 2005, eq. (4)); notebook 02, section 1
    s = score(x)
    trace = 0.0
    for i in range(x.shape[1]):
        # Row n of this gradient is grad_x s_i(x_n), since rows do not interact; keep entry i.
        trace = trace + elementwise_grad(lambda y, i=i: np.sum(score(y)[:, i]))(x)[:, i]
    return mean(trace + 0.5 * np.sum(s**2, axis=1))
    # END EXERCISE


def sliced_score_matching(score, x, v, variance_reduced=True):
    """Sliced score matching (Song, Garg, Shi & Ermon 2019, sec. 3):
    ``J = E[ v^T (grad_x s) v + ½ (v^T s)² ]``, with projections ``v: (N, D)`` (one per sample;
    Rademacher or standard Gaussian, so ``E[v v^T] = I``). ``variance_reduced`` replaces
    ``½ (v^T s)²`` by its expectation ``½ |s|²`` (their SSM-VR).
    ``v^T (grad_x s) v = v^T grad_x (v^T s)``: one backward pass.
    """
    s = score(x)
    # BEGIN EXERCISE 2.2: sliced score matching with a vector-Jacobian product (Song et al. 2019,
    #   eq. (8)); notebook 02, section 2
    jvp = grad(lambda y: np.sum(v * score(y)))(x)  # (N, D): row n = grad_x (v_n^T s(x_n))
    second = 0.5 * np.sum(s**2, axis=1) if variance_reduced else 0.5 * np.sum(v * s, axis=1) ** 2
    return mean(np.sum(v * jvp, axis=1) + second)
    # END EXERCISE


def denoising_score_matching(score, x0, sigma, eps, weight=None):
    """Denoising score matching (Vincent 2011, sec. 4.2) at one or many noise levels:

        L = ½ E[ lambda(sigma) |s(x0 + sigma eps, sigma) + eps / sigma|² ]

    ``score(x, sigma) -> (N, D)``; ``sigma`` a scalar or ``(N,)``; ``eps: (N, D)`` the noise.
    ``weight`` is ``lambda(sigma)``, a scalar or ``(N,)``; by default ``sigma²`` (Song & Ermon
    2019, eq. (6)), which makes every level's term of order one.
    """
    sig = per_sample(sigma, x0, "sigma", positive=True)
    # BEGIN EXERCISE 2.3: denoising score matching: the residual against the kernel's score (Vincent
    #   2011, eq. (8)); notebook 02, section 3
    x_noisy = x0 + sig * eps
    resid = score(x_noisy, sigma) - score_from_eps(eps, sigma)  # the kernel score, -eps/sigma
    per_point = np.sum(np.reshape(resid**2, (resid.shape[0], -1)), axis=1)  # (N,)
    # END EXERCISE
    lam = sigma**2 if weight is None else weight
    return 0.5 * mean(lam * per_point)


def dsm_loss(score_model):
    """``loss(params, batch)`` for ``train.train``: denoising score matching with the default
    ``sigma²`` weight for a model ``score_model(params, x, sigma) -> score``; ``batch`` holds
    ``x0``, ``sigma`` (per sample) and ``eps`` (as ``score.ncsn_batches`` draws them)."""
    def loss(params, batch):
        return denoising_score_matching(lambda x, s: score_model(params, x, s), batch["x0"],
                                        batch["sigma"], batch["eps"])
    return loss


def posterior_mean_importance(prior_samples, xt, alpha, sigma):
    """Monte Carlo ``E[x0 | x_t]`` by self-normalised importance sampling, with its standard error.

    ``prior_samples: (M, D)`` draws of ``x0``; weights ``w_m ∝ N(x_t; alpha x0_m, sigma² I)``
    (``posterior_weights``). Returns ``(mean, stderr)``, each ``(N, D)``; the standard error is the
    delta-method one, ``sqrt(sum_m w_m² (x0_m - mean)²)`` with normalised weights (Owen 2013,
    sec. 9.2). An estimate that uses no score at all: the check on Tweedie's formula.
    """
    x0 = onp.asarray(prior_samples, dtype=onp.float64)
    w = posterior_weights(x0, xt, alpha, sigma)
    est = w @ x0  # (N, D)
    var = onp.einsum("nm,nmd->nd", w**2, (x0[None] - est[:, None]) ** 2)
    return est, onp.sqrt(var)
