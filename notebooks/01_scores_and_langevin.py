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
# # Chapter 1 — Scores and Langevin dynamics
#
# Every diffusion model in this book is, underneath, a network that estimates a **score**: the
# gradient of a log-density, $s(x) = \nabla_x \log p(x)$. This chapter meets the score on its own,
# before any network denoises anything:
#
# 1. the score as a vector field, and why it does not care about the normalising constant;
# 2. **Langevin dynamics**, which turns a score into samples;
# 3. why plain Langevin fails on data with separated modes;
# 4. the fix of Song & Ermon (2019): noise the data at many scales, learn one
#    *noise-conditional* score network, and sample by **annealed** Langevin dynamics.
#
# The code lives in `minidiff/score.py`; the tests that prove each claim are in
# `tests/test_score.py`. Set `MINIDIFF_FAST=1` to run everything small.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minidiff import datasets, plot, score, train
from minidiff.models import mlp

FAST = os.environ.get("MINIDIFF_FAST") == "1"
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64

# %% [markdown]
# ## 1. The score is a vector field
#
# For a density $p(x) = \tilde p(x) / Z$, $\;\nabla_x \log p(x) = \nabla_x \log \tilde p(x)$: the
# constant $Z$ disappears. That is why a model of the score can ignore the partition function
# that makes most density models hard to train.
#
# Our oracle throughout the book is a Gaussian mixture, whose score has a closed form
# $\nabla \log p(x) = \sum_k r_k(x)\, \Sigma_k^{-1}(\mu_k - x)$, with $r_k(x)$ the posterior
# probability of component $k$. Autograd of `log_prob` gives the same field
# (`tests/test_datasets.py` checks it to 1e-10):

# %%
gm = datasets.gmm8()
x = rng.normal(size=(5, 2))
by_autograd = score.score_from_log_prob(gm.log_prob)(x)
print("max |closed form - autograd| =", np.abs(gm.score(x) - by_autograd).max())

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
plot.density(axes[0], gm.log_prob)
axes[0].set_title("density of gmm8")
plot.density(axes[1], gm.log_prob, cmap="Greys", alpha=0.4)
plot.score_field(axes[1], gm.score)
axes[1].set_title("its score (unit arrows, colour = log|s|)")
plt.show()

# %% [markdown]
# The arrows point uphill in log-density: towards the nearest mode, and, far away, towards the
# data as a whole.
#
# ## 2. Langevin dynamics: from a score to samples
#
# Unadjusted Langevin dynamics (Welling & Teh 2011; Song & Ermon 2019, eq. 2) follows the score
# and adds noise:
#
# $$x_{k+1} = x_k + \tfrac{\epsilon}{2}\, \nabla_x \log p(x_k) + \sqrt{\epsilon}\, z_k, \qquad z_k \sim \mathcal N(0, I).$$
#
# As $\epsilon \to 0$ and the number of steps grows, the chain's law tends to $p$. At a finite
# step it is slightly off: for a Gaussian target the chain's stationary covariance solves
# $V = A V A^\top + \epsilon I$ with $A = I - \tfrac{\epsilon}{2}\Sigma^{-1}$, which in 1D is
# $V = s^2 / (1 - \epsilon / 4s^2)$ — a little too wide (`score.ula_stationary_cov`).

# %%
mu, cov = np.array([1.0, -1.0]), np.array([[1.0, 0.5], [0.5, 2.0]])
gauss = datasets.GaussianMixture([1.0], [mu], [cov])
n_chains = 1000 if FAST else 4000
path = score.langevin(gauss.score, rng.uniform(-5, 5, (n_chains, 2)), 0.05, 1500, rng,
                      return_path=True)
print("sample mean", path[-1].mean(0).round(3), " target", mu)
print("sample cov\n", np.cov(path[-1].T).round(3))
print("exact stationary cov of the chain\n", score.ula_stationary_cov(cov, 0.05).round(3))

for eps in [0.05, 0.5, 1.0]:
    v = score.ula_stationary_cov([[1.0]], eps)[0, 0]
    print(f"N(0,1) target, step {eps}: the chain's variance is {v:.3f}")

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
plot.paths(axes[0], path[:300], lim=5, n=8)
axes[0].set_title("8 Langevin chains, first 300 steps")
plot.density(axes[1], gauss.log_prob, lim=5, alpha=0.5)
plot.points(axes[1], path[-1], lim=5)
axes[1].set_title("end points over the density")
plt.show()

# %% [markdown]
# ## 3. Where plain Langevin fails
#
# Song & Ermon (2019, sec. 3) name two problems.
#
# **Separated modes.** Take $p = 0.2\,\mathcal N((-4,-4), I) + 0.8\,\mathcal N((4,4), I)$. Between
# the modes the density is tiny, and *inside each mode's basin the score does not depend on the
# weights at all* (it is $\approx \mu_k - x$). So a chain falls into whichever mode it starts
# nearer to, and stays: the weights it produces are those of its starting points, not of $p$.

# %%
two = datasets.unequal_modes(weights=(0.2, 0.8))
starts = rng.uniform(-8, 8, (n_chains, 2))
path = score.langevin(two.score, starts, 0.1, 1000, rng, return_path=True)
plain_frac = score.mode_fractions(path[-1], two.means)
side = np.sign(path[100:, :, 0] + path[100:, :, 1])
print(f"fraction in the heavy mode: {plain_frac[1]:.3f} (true 0.8)")
print(f"chains that ever cross between the modes after burn-in: "
      f"{np.mean(np.any(side != side[0], axis=0)):.4f}")

# %% [markdown]
# **Low-density regions.** A *learned* score is fitted where data are, so it is unreliable
# exactly where a chain started at random spends its first steps. Both problems have one cure.
#
# ## 4. Noise at many scales, and annealed Langevin
#
# Perturb the data with Gaussian noise of standard deviation $\sigma$:
# $p_\sigma = p * \mathcal N(0, \sigma^2 I)$. For a mixture this is again a mixture with the
# covariances widened by $\sigma^2 I$ (`GaussianMixture.noised`). Large $\sigma$ fills the space
# between the modes and merges them; small $\sigma$ is close to the data.

# %%
sigmas_show = [4.0, 1.0, 0.25]
fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
for ax, s in zip(axes, sigmas_show):
    noisy = two.noised(1.0, s)
    plot.density(ax, noisy.log_prob, lim=9, alpha=0.5)
    plot.score_field(ax, noisy.score, lim=9, n=12)
    ax.set_title(f"p_sigma and its score, sigma = {s}")
plt.show()

# %% [markdown]
# **Annealed Langevin dynamics** (Song & Ermon 2019, Algorithm 1) runs Langevin at each level of a
# geometric ladder $\sigma_1 > \dots > \sigma_L$, starting each level where the previous one
# ended, with step $\alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2$. At the top the modes are one
# blob, so chains spread in proportion to the weights; as the noise shrinks they stay in the mode
# they were already drawn to. Driven here by the *exact* noised score:

# %%
sigmas = score.geometric_sigmas(10.0, 0.1, 10)
annealed = score.annealed_langevin(lambda x, s: two.noised(1.0, s).score(x), sigmas,
                                   rng.uniform(-8, 8, (n_chains, 2)), rng, step_lr=5e-3,
                                   n_steps_each=100)
annealed_frac = score.mode_fractions(annealed, two.means)
print(f"heavy mode: plain Langevin {plain_frac[1]:.3f}, annealed {annealed_frac[1]:.3f}, "
      f"true 0.800")

fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
for ax, pts, title in zip(axes, [two.sample(n_chains, rng), path[-1], annealed],
                          ["data", "plain Langevin", "annealed Langevin"]):
    plot.points(ax, pts, lim=8)
    ax.set_title(title)
plt.show()

# %% [markdown]
# ## 5. Learning the noised scores: a noise-conditional score network
#
# For real data we do not know $\nabla \log p_\sigma$. Song & Ermon train one network
# $s_\theta(x, \sigma)$ for all levels by **denoising score matching** (Vincent 2011): for
# $\tilde x = x_0 + \sigma \epsilon$, the score of the noising kernel is
# $-(\tilde x - x_0)/\sigma^2 = -\epsilon/\sigma$, and with weight $\lambda(\sigma) = \sigma^2$
# (their eqs. 5–6)
#
# $$\mathcal L(\theta) = \tfrac12\, \mathbb E_{\sigma, x_0, \epsilon}
#   \big\| \sigma\, s_\theta(x_0 + \sigma\epsilon, \sigma) + \epsilon \big\|^2 .$$
#
# Parametrise $s_\theta = -\hat\epsilon_\theta(x, \log\sigma) / \sigma$ (Song & Ermon 2020,
# technique 3) and this is $\tfrac12\|\hat\epsilon_\theta - \epsilon\|^2$: *an NCSN is a
# noise predictor*. Chapter 2 proves that the minimiser is the score of $p_\sigma$; here we
# just watch it happen on `gmm8`, where the exact answer is known.

# %%
sigmas = score.geometric_sigmas(4.0, 0.05, 10)
steps = 300 if FAST else 3000
params = mlp.init(rng, hidden=128, depth=3, emb_dim=32)
state = train.init_state(params, seed=0)
batch_fn = score.ncsn_batches(gm.sample(20_000, rng), sigmas, batch_size=256)
state, losses = train.fit(score.ncsn_loss(mlp.apply), state, batch_fn, steps, lr=2e-3,
                          warmup=100, desc="NCSN")
learned = score.ncsn_score(mlp.apply, state.ema)  # sample with the EMA of the weights

errors = []
for s in sigmas:
    noisy = gm.noised(1.0, s)
    errors.append(score.relative_score_error(learned, noisy.score, noisy.sample(2000, rng), s))

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
axes[0].plot(losses, lw=0.5)
axes[0].set(xlabel="step", ylabel="loss", title="denoising score matching")
axes[1].loglog(sigmas, errors, "o-")
axes[1].set(xlabel="sigma", ylabel="relative error", title="learned vs exact score of p_sigma")
plt.show()

# %%
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for j, s in enumerate([2.0, 0.5, 0.1]):
    plot.score_field(axes[0, j], gm.noised(1.0, s).score, n=12)
    axes[0, j].set_title(f"exact, sigma = {s}")
    plot.score_field(axes[1, j], lambda x, s=s: learned(x, s), n=12)
    axes[1, j].set_title(f"learned, sigma = {s}")
plt.show()

# %% [markdown]
# Where the error is largest tells the story of section 3: at small $\sigma$, far from the
# data, the network has seen almost no training points. Annealed Langevin never asks for the
# small-$\sigma$ score far from the data: by the time the noise is small, the chains are already
# near the modes.

# %%
samples = score.annealed_langevin(learned, sigmas, rng.uniform(-4, 4, (2000, 2)), rng,
                                   step_lr=1e-4, n_steps_each=100)
fractions = score.mode_fractions(samples, gm.means)
print("mode weights of the samples:", fractions.round(3), "(true 0.125 each)")
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
plot.points(axes[0], gm.sample(2000, rng))
axes[0].set_title("data")
plot.points(axes[1], samples)
axes[1].set_title("annealed Langevin, learned score")
plt.show()

# %% [markdown]
# The mode weights are right; each mode comes out a little wider than in the data. The chains
# end at the last level, so they still carry noise of standard deviation $\sigma_L = 0.05$ on top
# of the finite-step bias of section 2 and the network's error at small $\sigma$. Chapter 2's
# Tweedie formula gives the one-step denoiser that removes the first of these.

# %% [markdown]
# ## Where this lives in the wild
#
# - The NCSN paper's own code (`ermongroup/ncsn`, `anneal_Langevin_dynamics`) and its
#   successor NCSNv2 (Song & Ermon 2020), which added the $1/\sigma$ output scaling used here,
#   a rule for $\sigma_1$ (as large as the largest distance between data points) and for the step.
# - `score_sde` (Song et al. 2021) keeps annealed Langevin as the *corrector* of its
#   predictor–corrector samplers (`LangevinCorrector`) — chapter 4.
# - In diffusers, `ScoreSdeVeScheduler` runs the same corrector steps.
#
# ## Checks
# The claims above, asserted (the tests prove them with stated tolerances).

# %%
assert abs(plain_frac[1] - 0.5) < 0.1, "plain Langevin keeps the split of its starts"
assert abs(annealed_frac[1] - 0.8) < 0.05, "annealed Langevin recovers the weights"
assert errors[len(errors) // 3] < (0.5 if FAST else 0.15), "the NCSN learned the field"
assert np.all(np.abs(fractions - 0.125) < (0.1 if FAST else 0.04))
