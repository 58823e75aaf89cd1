# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 2 — Denoising score matching and Tweedie: why a denoiser is a score network
#
# Chapter 1 trained a noise-conditional score network by *denoising* and used it as a *score*.
# This chapter proves that this is no accident:
#
# 1. **Score matching** fits $s_\theta \approx \nabla \log p$ without knowing $p$ — explicitly
#    (Hyvärinen 2005) or with random projections (sliced score matching, Song et al. 2019).
# 2. **Denoising score matching** (Vincent 2011) needs no derivative of the model at all, and
#    its gradient equals the explicit objective's on the noised density.
# 3. **Tweedie's formula** says the best denoiser *is* the score:
#    $\mathbb E[x_0 \mid y] = y + \sigma^2 \nabla \log p_\sigma(y)$ for $y = x_0 + \sigma\epsilon$.
# 4. So every thing a diffusion network can predict — $\epsilon$, $x_0$, $v$, a flow velocity —
#    is the score in disguise (`minidiff/targets.py`).
#
# Code: `minidiff/dsm.py`, `minidiff/targets.py`. Proofs: `tests/test_dsm.py`,
# `tests/test_targets.py`.

# %%
import os

import autograd
import autograd.numpy as anp
import matplotlib.pyplot as plt
import numpy as np

from minidiff import datasets, dsm, nn, plot, score, targets, train
from minidiff.models import mlp

FAST = os.environ.get("MINIDIFF_FAST") == "1"
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64
gm = datasets.gmm8()  # the oracle: closed-form score, noised marginals and posterior means

# %% [markdown]
# ## 1. Explicit score matching
#
# We want $\tfrac12 \mathbb E_p \|s_\theta(x) - \nabla \log p(x)\|^2$ but cannot evaluate
# $\nabla\log p$. Integrating the cross term by parts (Hyvärinen 2005, Theorem 1) removes it:
#
# $$J(\theta) = \mathbb E_p\!\left[\operatorname{tr}\nabla_x s_\theta(x) + \tfrac12\|s_\theta(x)\|^2\right]
#   = \tfrac12\mathbb E_p\|s_\theta - \nabla\log p\|^2 - \tfrac12\mathbb E_p\|\nabla \log p\|^2 .$$
#
# The price is the Jacobian trace: one backward pass per dimension. On our mixture we can check
# the identity for a few random untrained models. Per point, the difference of the two sides is
# $\operatorname{tr}\nabla s + s\cdot\nabla\log p$, whose mean is zero for *any* $s$ — up to
# Monte Carlo error, which we print beside it.

# %%
x = gm.sample(40_000 if not FAST else 10_000, rng)
const = 0.5 * np.mean(np.sum(gm.score(x) ** 2, axis=1))
for seed in range(3):
    params = mlp.init(np.random.default_rng(seed), hidden=16, depth=1, emb_dim=4,
                      dtype=np.float64)
    s = lambda y, p=params: mlp.apply(p, y, 0.0)
    esm = dsm.explicit_score_matching(s, x)
    fisher = 0.5 * np.mean(np.sum((s(x) - gm.score(x)) ** 2, axis=1))
    trace = sum(autograd.elementwise_grad(lambda y, i=i, f=s: anp.sum(f(y)[:, i]))(x)[:, i]
                for i in range(2))
    per_point = trace + np.sum(s(x) * gm.score(x), axis=1)
    se = per_point.std() / np.sqrt(len(x))
    print(f"model {seed}: J_ESM = {esm:7.4f}, Fisher/2 - const = {fisher - const:7.4f}, "
          f"difference {esm - fisher + const:+.4f} ± {se:.4f} (one standard error)")

# %% [markdown]
# ## 2. Sliced score matching
#
# Replace the trace by a random projection: $\operatorname{tr} A = \mathbb E_v[v^\top A v]$ for
# any $v$ with $\mathbb E[vv^\top] = I$, and $v^\top(\nabla_x s)v = v^\top\nabla_x(v^\top s)$
# costs a single backward pass whatever the dimension (Song, Garg, Shi & Ermon 2019). The
# estimate is unbiased; its noise is the price:

# %%
s = lambda y: mlp.apply(params, y, 0.0)
exact = dsm.explicit_score_matching(s, x[:2000])
sliced = [dsm.sliced_score_matching(s, x[:2000], rng.choice([-1.0, 1.0], size=(2000, 2)))
          for _ in range(20)]
print(f"explicit {exact:.4f}; sliced over 20 draws of v: {np.mean(sliced):.4f} "
      f"± {np.std(sliced) / np.sqrt(20):.4f}")

# %% [markdown]
# ## 3. Denoising score matching, and Vincent's equivalence
#
# Perturb the data, $\tilde x = x_0 + \sigma\epsilon$. The perturbation kernel's score is known:
# $\nabla_{\tilde x}\log \mathcal N(\tilde x; x_0, \sigma^2 I) = -\epsilon/\sigma$. Vincent (2011)
# showed that
#
# $$J_{DSM}(\theta) = \tfrac12\,\mathbb E_{x_0,\epsilon}\big\|s_\theta(\tilde x) + \epsilon/\sigma\big\|^2$$
#
# equals explicit score matching on $p_\sigma$ *plus a constant that does not depend on
# $\theta$*. No second derivatives anywhere. Numerically: the two gradients, estimated on the
# same noisy points, agree up to Monte Carlo error.

# %%
sigma = 0.5
x0, eps = gm.sample(4000, rng), rng.standard_normal((4000, 2))
dsm_obj = lambda p: dsm.denoising_score_matching(lambda y, _: mlp.apply(p, y, 0.0), x0, sigma,
                                                 eps, weight=1.0)
esm_obj = lambda p: dsm.explicit_score_matching(lambda y: mlp.apply(p, y, 0.0), x0 + sigma * eps)
g_dsm = np.concatenate([g.ravel() for g in nn.tree_leaves(autograd.grad(dsm_obj)(params))])
g_esm = np.concatenate([g.ravel() for g in nn.tree_leaves(autograd.grad(esm_obj)(params))])
cosine = g_dsm @ g_esm / np.linalg.norm(g_dsm) / np.linalg.norm(g_esm)
print(f"objectives: DSM {dsm_obj(params):.3f}, ESM {esm_obj(params):.3f} (differ by a constant)")
print(f"cosine similarity of their gradients: {cosine:.4f}")

plt.figure(figsize=(4, 4))
plt.scatter(g_esm, g_dsm, s=4)
lim = np.abs(g_esm).max()
plt.plot([-lim, lim], [-lim, lim], "k--", lw=0.5)
plt.xlabel("gradient of explicit SM on p_sigma")
plt.ylabel("gradient of denoising SM")
plt.title("every parameter, one point")
plt.show()

# %% [markdown]
# ## 4. Tweedie's formula: the best denoiser is the score
#
# The minimiser of $\mathbb E\|D(\tilde x) - x_0\|^2$ is the posterior mean
# $D^*(\tilde x) = \mathbb E[x_0\mid\tilde x]$, and for Gaussian noise (Robbins 1956; Miyasawa
# 1961; Efron 2011)
#
# $$\mathbb E[x_0 \mid y] = y + \sigma^2 \nabla\log p_\sigma(y), \qquad
#   \mathbb E[\epsilon \mid y] = -\sigma\, \nabla\log p_\sigma(y).$$
#
# (The source article of this project writes the second with $\sigma^2$; the power is one:
# $\epsilon$ is dimensionless, the score has units of $1/x$.) On the path
# $x_t = \alpha x_0 + \sigma\epsilon$ the same argument applied to $x_t/\alpha$ gives
# $\mathbb E[x_0\mid x_t] = (x_t + \sigma^2\nabla\log p_t(x_t))/\alpha$ — `targets.x0_from_score`.
#
# Three independent computations of $\mathbb E[x_0 \mid y]$: Tweedie with the exact score, the
# mixture's closed-form posterior mean, and importance sampling from the prior (no score at all).

# %%
alpha, sigma = 1.0, 0.6
y = gm.noised(alpha, sigma).sample(6, rng)
tweedie = targets.x0_from_score(gm.noised(alpha, sigma).score(y), y, alpha, sigma)
closed = gm.posterior_mean(y, alpha, sigma)
mc, se = dsm.posterior_mean_importance(gm.sample(200_000 if not FAST else 50_000, rng), y,
                                       alpha, sigma)
print("max |Tweedie - closed form|      =", np.abs(tweedie - closed).max())
print("max |Tweedie - IS| / IS std error =", (np.abs(tweedie - mc) / se).max().round(2))

yy = gm.noised(alpha, sigma).sample(300, rng)
den = targets.x0_from_score(gm.noised(alpha, sigma).score(yy), yy, alpha, sigma)
fig, ax = plt.subplots(figsize=(4.5, 4.5))
plot.density(ax, gm.log_prob, alpha=0.4)
ax.quiver(yy[:, 0], yy[:, 1], den[:, 0] - yy[:, 0], den[:, 1] - yy[:, 1], angles="xy",
          scale_units="xy", scale=1, width=0.004, color="C3")
ax.set_title("noisy points -> E[x0 | y] (Tweedie)")
plt.show()

# %% [markdown]
# The posterior mean is *not* a sample of the data: between two modes it lands in between.
# That is why a diffusion sampler takes many small steps instead of one big denoising jump.
#
# ## 5. One prediction, five names
#
# Given $x_t$, a prediction of any one of $\epsilon$, $x_0$, $v = \alpha\epsilon - \sigma x_0$
# (Salimans & Ho 2022), the velocity $\dot x_t = \dot\alpha x_0 + \dot\sigma\epsilon$ (flow
# matching) or the score determines all the others. `targets.convert` goes through $\epsilon$;
# every pair round-trips exactly (`tests/test_targets.py` checks 25 directions on random paths).

# %%
alpha, sigma, dalpha, dsigma = 0.6, 0.8, -1.0, 1.0  # any (alpha, sigma) and derivatives
xt = alpha * x0[:3] + sigma * eps[:3]
truth = {"eps": eps[:3], "x0": x0[:3], "v": alpha * eps[:3] - sigma * x0[:3],
         "velocity": dalpha * x0[:3] + dsigma * eps[:3], "score": -eps[:3] / sigma}
worst = max(np.abs(targets.convert(truth[a], a, b, xt, alpha, sigma, dalpha, dsigma)
                   - truth[b]).max() for a in targets.KINDS for b in targets.KINDS)
print("largest error over all 25 conversions:", worst)

# %% [markdown]
# ## 6. Training a denoiser, reading it as a score
#
# Train the chapter 1 network by denoising score matching over a ladder of noise levels
# (`dsm.dsm_loss`, weight $\sigma^2$), then compare the learned score with the exact score of
# the noised mixture at several levels, and its Tweedie denoiser with the exact posterior mean.

# %%
sigmas = score.geometric_sigmas(4.0, 0.05, 10)
score_model = lambda p, x, s: targets.score_from_eps(mlp.apply(p, x, anp.log(s)), s)
state = train.init_state(mlp.init(rng, hidden=128, depth=3, emb_dim=32), seed=0)
batch_fn = score.ncsn_batches(gm.sample(20_000, rng), sigmas, batch_size=256)
steps = 300 if FAST else 3000
state, losses = train.fit(dsm.dsm_loss(score_model), state, batch_fn, steps, lr=2e-3,
                          warmup=100, desc="DSM")
learned = lambda x, s: score_model(state.ema, x.astype(np.float32), np.float32(s))

show = [2.0, 0.7, 0.2]
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for j, s in enumerate(show):
    plot.score_field(axes[0, j], gm.noised(1.0, s).score, n=12)
    axes[0, j].set_title(f"exact score, sigma = {s}")
    plot.score_field(axes[1, j], lambda x, s=s: learned(x, s), n=12)
    axes[1, j].set_title(f"learned score, sigma = {s}")
plt.show()

# %%
sigma = 0.7
noisy = gm.noised(1.0, sigma)
y = noisy.sample(400, rng)
den_learned = targets.x0_from_score(learned(y, sigma), y, 1.0, sigma)
den_exact = gm.posterior_mean(y, 1.0, sigma)
err_denoiser = np.sqrt(np.mean(np.sum((den_learned - den_exact) ** 2, axis=1)))
err_score = score.relative_score_error(learned, noisy.score, noisy.sample(4000, rng), sigma)
print(f"sigma = {sigma}: relative score error {err_score:.3f}; "
      f"RMS distance of the denoiser to E[x0|y]: {err_denoiser:.3f}")
fig, ax = plt.subplots(figsize=(4.5, 4.5))
plot.points(ax, den_exact, s=12, alpha=0.6, label="exact E[x0 | y]")
plot.points(ax, den_learned, s=4, alpha=0.9, label="learned denoiser")
ax.legend(loc="lower left", fontsize=8)
plt.show()

# %% [markdown]
# ## Where this lives in the wild
#
# - `score_sde` (Song et al. 2021), `losses.py`: `get_sde_loss_fn` is denoising score matching
#   with the network's output read as a score and the $\sigma^2$ ("reduce by std") weighting.
# - `ermongroup/sliced_score_matching`: SSM and SSM-VR as in section 2.
# - diffusers' schedulers accept `prediction_type` in `{"epsilon", "sample", "v_prediction"}`
#   and convert between them with the formulas of `targets.py`.
#
# ## Checks

# %%
assert abs(np.mean(sliced) - exact) < 4 * np.std(sliced) / np.sqrt(20), "sliced SM is unbiased"
assert cosine > 0.95, "DSM and ESM gradients point the same way"
assert np.abs(tweedie - closed).max() < 1e-10
assert worst < 1e-9
assert err_score < (0.6 if FAST else 0.2)
