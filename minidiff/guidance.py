"""Chapter 7 — conditioning and guidance.

Bayes' rule for scores is the whole chapter in one line,

    grad log p_t(x | c) = grad log p_t(x) + grad log p_t(c | x),

and, since ``score = -eps / sigma`` on a Gaussian path (Tweedie), a network that predicts the
noise with a label, ``eps_c``, and without one, ``eps_u``, carries an implicit classifier:
``eps_c - eps_u = -sigma grad log p_t(c | x)``. Classifier-free guidance (Ho & Salimans 2022)
scales that classifier's pull by ``w``; classifier guidance (Dhariwal & Nichol 2021) takes the
classifier from a network trained on noisy images instead; autoguidance (Karras et al. 2024)
keeps the rule and replaces the unconditional model by a weaker conditional one. All three are
``guide(eps_pos, eps_neg, w)``.

Read top to bottom: the rules as the samplers use them; the oracle (a Gaussian mixture whose
components are the classes, where every term above is closed form at every noise level, and the
tilted density guidance is often said to sample); classifier guidance.

**Convention.** minidiff's guidance scale ``w`` multiplies the conditional-minus-unconditional
difference: ``eps_u + w (eps_c - eps_u)``, so ``w = 1`` is the plain conditional model and
``w = 0`` the unconditional one (diffusers' ``guidance_scale`` is the same number). Ho & Salimans
(2022, eq. (6)) write ``(1 + w') eps_c - w' eps_u``: their ``w'`` is minidiff's ``w - 1``.
"""

import math

import autograd.numpy as np
import numpy as onp

from .nn import logsumexp
from .targets import eps_from_score


def check_interval(interval):
    """A guidance interval ``(lo, hi)`` of step indices with ``0 <= lo <= hi``, or None."""
    if interval is None:
        return None
    pair = isinstance(interval, (tuple, list)) and len(interval) == 2
    if not (pair and all(isinstance(v, (int, onp.integer)) for v in interval)
            and 0 <= interval[0] <= interval[1]):
        raise ValueError(f"the guidance interval must be two step indices (lo, hi) with "
                         f"0 <= lo <= hi (got {interval!r})")
    return int(interval[0]), int(interval[1])


def interval_from_ratios(sched, lo, hi):
    """The step interval ``(first, last + 1)`` of ``sched`` whose noise levels in the sigma frame,
    ``sigma_i / alpha_i``, lie in ``(lo, hi]``: a guidance interval stated as Kynkäänniemi et al.
    (2024) state theirs, as ``guided_eps`` takes it. On the linear schedule their EDM2 interval
    ``(0.28, 5.42]`` is steps 82 to 578: ``(82, 579)``."""
    if not 0.0 <= lo < hi:
        raise ValueError(f"need 0 <= lo < hi (got lo={lo!r}, hi={hi!r})")
    steps = onp.arange(sched.T)
    # BEGIN EXERCISE 7.4: the steps whose noise level sigma / alpha lies in (lo, hi]
    #   (Kynkäänniemi et al. 2024's guidance interval); notebook 07, section 6
    ratio = sched.path.sigma(steps) / sched.path.alpha(steps)  # increasing in i
    inside = onp.flatnonzero((ratio > lo) & (ratio <= hi))
    # END EXERCISE
    if inside.size == 0:
        raise ValueError(f"no step of the schedule has sigma/alpha in ({lo}, {hi}]")
    return int(inside[0]), int(inside[-1]) + 1


def check_scale(guidance):
    """The guidance scale ``w``: a finite real number (``w = 1`` is no guidance)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, onp.floating,
                                                               onp.integer)) \
            or not math.isfinite(guidance):
        raise ValueError(f"`guidance` must be a finite number (got {guidance!r}); 1 is the "
                         "plain conditional model, 0 the unconditional one")
    return float(guidance)


def guided_eps(apply, params, config, labels, guidance=2.0, null_label=10, interval=None,
               bad=None):
    """``eps_fn(x, i)`` for the samplers: classifier-free guidance, ``eps_u + w (eps_c - eps_u)``
    (Ho & Salimans 2022, eq. (6), whose scale is ``w - 1`` in this notation: module docstring).
    ``w = 1`` is the plain conditional model, ``w = 0`` the unconditional one. Both halves run as
    one batch of ``2N``.

    ``bad = (apply, params, config)`` of a weaker conditional model turns this into autoguidance
    (Karras et al. 2024, eq. (2)): ``D_bad + w (D_good - D_bad)``, both branches conditioned on
    ``labels``; the negative branch is the bad model instead of the unconditional one.

    ``interval = (lo, hi)`` guides only at steps ``lo <= i < hi`` and uses the conditional model
    (``w = 1``) at the others: a guidance interval (Kynkäänniemi et al. 2024, who find
    guidance harmful at the highest noise levels of ImageNet models and unnecessary at the
    lowest). ``None`` guides at every step."""
    labels = onp.asarray(labels)
    interval = check_interval(interval)
    guidance = check_scale(guidance)

    def eps_fn(x, i):  # i: the step, a scalar or one per image (N,)
        n = x.shape[0]
        t = onp.broadcast_to(onp.asarray(i, onp.float32), (n,))
        if guidance == 1.0 or (interval is not None and not interval[0] <= i < interval[1]):
            return apply(params, x, t, labels, config)
        if guidance == 0.0 and bad is None:  # the unconditional model alone: one call, not two
            return apply(params, x, t, onp.full(n, null_label), config)
        if bad is not None:
            bad_apply, bad_params, bad_config = bad
            return guide(apply(params, x, t, labels, config),
                         bad_apply(bad_params, x, t, labels, bad_config), guidance)
        both = apply(params, onp.concatenate([x, x]), onp.concatenate([t, t]),
                     onp.concatenate([labels, onp.full(n, null_label)]), config)
        eps_c, eps_u = both[:n], both[n:]  # (N, C, H, W) each
        return guide(eps_c, eps_u, guidance)
    return eps_fn


def guide(eps_pos, eps_neg, w):
    """``eps_neg + w (eps_pos - eps_neg)``: the one line every guidance rule here shares. For
    classifier-free guidance the positive branch is the conditional model and the negative the
    unconditional one; for autoguidance (Karras et al. 2024, eq. (2)) both are conditional, the
    negative a weaker model. Linear, so it holds for scores as for noise predictions."""
    return eps_neg + w * (eps_pos - eps_neg)


# ----------------------------------------------------------------------------- the oracle
# A Gaussian mixture whose components are the classes: every term of Bayes' rule for scores is
# closed form at every noise level, since the noised mixture is again a mixture
# (``datasets.GaussianMixture.noised``) and p_t(c | x) is its responsibility r_c(x).

def _check_labels(labels, mix, x):
    labels = onp.asarray(labels)
    if labels.shape != (len(x),) or not onp.issubdtype(labels.dtype, onp.integer) \
            or labels.min(initial=0) < 0 or labels.max(initial=0) >= mix.weights.size:
        raise ValueError(f"`labels` must be ({len(x)},) integers in [0, {mix.weights.size}) "
                         f"(got {labels.dtype} {labels.shape})")
    return labels


def class_log_posterior(mix, x, labels, alpha=1.0, sigma=0.0):
    """``log p_t(c | x)`` for ``x_t = alpha x0 + sigma eps``, ``x0`` from the mixture ``mix``
    whose component ``c`` is class ``c``: the noised mixture's log responsibility,
    ``log w_c N_c(x) - log sum_k w_k N_k(x)``. ``(N,)``; autograd can differentiate it in ``x``
    (the implicit classifier's input gradient, checked against ``class_score``)."""
    labels = _check_labels(labels, mix, x)
    noisy = mix if (alpha == 1.0 and sigma == 0.0) else mix.noised(alpha, sigma)
    logp = noisy.component_log_probs(x)  # (N, K)
    return logp[onp.arange(len(labels)), labels] - logsumexp(logp, axis=1)


def conditional_score(mix, x, labels, alpha=1.0, sigma=0.0):
    """``grad log p_t(x | c)``: the score of component ``c`` of the noised mixture,
    ``P_c (alpha mu_c - x)`` with ``P_c = (alpha² S_c + sigma² I)^{-1}``. ``(N, D)``."""
    x = onp.asarray(x, dtype=onp.float64)
    labels = _check_labels(labels, mix, x)
    noisy = mix.noised(alpha, sigma)
    return onp.einsum("nij,nj->ni", noisy.precisions[labels], noisy.means[labels] - x)


def class_score(mix, x, labels, alpha=1.0, sigma=0.0):
    """``grad log p_t(c | x) = grad log p_t(x | c) - grad log p_t(x)``: Bayes' rule for scores,
    read as the input gradient of the exact noise-conditional classifier. ``(N, D)``."""
    # BEGIN EXERCISE 7.1: Bayes' rule for scores: the class posterior's input gradient from the
    #   conditional and unconditional scores (Ho & Salimans 2022, sec. 3.2); notebook 07, section 1
    return conditional_score(mix, x, labels, alpha, sigma) - mix.noised(alpha, sigma).score(x)
    # END EXERCISE


def guided_score(mix, path, labels, w):
    """``score(x, t)`` for the samplers of chapter 4 (``sde.pf_ode_drift``,
    ``sde.euler_maruyama``): ``grad log p_t(x) + w grad log p_t(c | x)``, which is
    ``guide(conditional score, unconditional score, w)`` and the exact score of the tilted
    density ``p_t(x) p_t(c | x)^w`` at every ``t``. ``labels (N,)`` are the classes of the
    ``N`` points sampled."""
    def score(x, t):
        alpha, sigma = float(path.alpha(t)), float(path.sigma(t))
        return guide(conditional_score(mix, x, labels, alpha, sigma),
                     mix.noised(alpha, sigma).score(x), w)
    return score


def tilted_log_density(mix, x, labels, w):
    """``log p_0(x) + w log p_0(c | x)``, unnormalised: the density that guidance at scale ``w``
    would sample if the tilt commuted with the noising. It does not: ``p_t(x) p_t(c | x)^w`` is
    not the noised ``p_0(x) p_0(c | x)^w`` (Chidambaram et al. 2024; Bradley & Nakkiran 2024),
    and the notebook measures how far the guided samples land from it."""
    # BEGIN EXERCISE 7.3: the tilted density log p_0(x) + w log p_0(c | x) (the target CFG is
    #   often said to sample; Bradley & Nakkiran 2024); notebook 07, section 3
    return mix.log_prob(x) + w * class_log_posterior(mix, x, labels)
    # END EXERCISE


def sample_on_grid(log_density, n, rng, lo, hi, cells=512):
    """``n`` draws from a 2D density known up to a constant: the square ``[lo, hi]²`` cut into
    ``cells²`` cells, one cell drawn with probability proportional to the density at its centre,
    a point drawn uniformly inside it. Exact up to the cell width and the mass outside the
    square (both the caller's to make small). ``log_density`` maps ``(M, 2)`` to ``(M,)``."""
    width = (hi - lo) / cells
    centres = lo + width * (onp.arange(cells) + 0.5)
    gx, gy = onp.meshgrid(centres, centres, indexing="ij")
    grid = onp.stack([gx.ravel(), gy.ravel()], axis=1)  # (cells², 2)
    logp = onp.asarray(log_density(grid), dtype=onp.float64)
    p = onp.exp(logp - logp.max())
    idx = rng.choice(len(grid), size=n, p=p / p.sum())
    return grid[idx] + width * (rng.random((n, 2)) - 0.5)


# ----------------------------------------------------------------------------- classifier guidance

def classifier_log_prob_grad(log_probs):
    """The input gradient of a classifier: ``g(x, t, labels) = grad_x sum_n log p_t(c_n | x_n)``
    from ``log_probs(x, t) -> (N, K)`` (log-softmax outputs, autograd-traceable). The sum
    separates over examples, so each row of the gradient is that example's own."""
    import autograd

    def total(x, t, labels):
        lp = log_probs(x, t)
        return np.sum(lp[onp.arange(len(labels)), labels])
    return autograd.grad(total)


def classifier_guided_eps(eps_uncond, grad_log_prob, sigma_of, labels, scale):
    """``eps_fn(x, i)``: classifier guidance (Dhariwal & Nichol 2021, Algorithm 2, eq. (14)):

        eps_hat = eps_u(x) - s sigma_i grad log p_i(c | x),

    the noise-prediction form of the score ``grad log p_t(x) + s grad log p_t(c | x)`` (score
    ``= -eps / sigma``), so the sampler targets ``p_t(x) p_t(c | x)^s``. ``eps_uncond(x, i)`` is
    the unconditional model, ``grad_log_prob(x, i, labels)`` a noise-conditional classifier's
    input gradient (``classifier_log_prob_grad``), ``sigma_of(i)`` the path's noise level. Costs
    one classifier forward and backward per step on top of the denoiser."""
    labels = onp.asarray(labels)
    scale = check_scale(scale)

    def eps_fn(x, i):
        eps = eps_uncond(x, i)
        if scale == 0.0:
            return eps
        # BEGIN EXERCISE 7.2: classifier guidance in noise form, eps_u - s sigma_i grad log p(c | x)
        #   (Dhariwal & Nichol 2021, eq. (14)); notebook 07, section 5
        g = grad_log_prob(x, onp.full(len(x), i, x.dtype), labels)
        return eps + scale * eps_from_score(g, float(sigma_of(i)))
        # END EXERCISE
    return eps_fn


def classifier_accuracy_by_step(params, images, labels, sched, steps, rng):
    """``{i: accuracy}`` of the noise-conditional classifier (``models/classifier.py``'s
    ``noisy_*``) on ``images`` noised to each step index ``i`` in ``steps`` along ``sched``'s
    path: near the clean classifier's at ``i = 0``, chance (10%) where the signal is gone."""
    from .models import classifier

    out = {}
    for i in steps:
        eps = rng.standard_normal(images.shape).astype(onp.float32)
        a, s = float(sched.path.alpha(i)), float(sched.path.sigma(i))
        xt = (a * images + s * eps).astype(onp.float32)
        pred = classifier.noisy_predict(params, xt, onp.full(len(xt), i, onp.float32))
        out[int(i)] = float(onp.mean(pred == labels))
    return out
