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
# # Chapter 3 — DDPM: from a noise schedule to a sampler
#
# Ho et al. (2020) turned chapter 1's ladder of noise levels into a Markov chain of $T = 1000$
# small Gaussian steps, trained a network to predict the noise, and sampled by running the chain
# backwards. Chapter 2 tells us what that network is: a score network,
# $s_\theta(x_t, t) = -\epsilon_\theta(x_t, t)/\sqrt{1 - \bar\alpha_t}$.
#
# **Time-index convention.** The paper counts $t = 1..T$; minidiff's arrays use
# $i = t - 1 = 0..T-1$ (as diffusers does). `betas[i]` is $\beta_{i+1}$, the network receives
# $i$, and $\bar\alpha_0 = 1$ (clean data) is `alpha_bar_prev[0]`.
#
# Code: `minidiff/ddpm.py`; proofs: `tests/test_ddpm.py`.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minidiff import datasets, ddpm, plot, process, train
from minidiff.models import mlp

FAST = os.environ.get("MINIDIFF_FAST") == "1"
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64
gm = datasets.gmm8()

# %% [markdown]
# ## 1. Schedules
#
# The forward chain adds noise with variances $\beta_t$:
# $q(x_t\mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)$ (Ho et al. eq. 2).
# Everything else follows from $\bar\alpha_t = \prod_{s\le t}(1-\beta_s)$ and the signal-to-noise
# ratio $\mathrm{SNR}(t) = \bar\alpha_t / (1-\bar\alpha_t)$.
#
# - **linear**: $\beta$ from $10^{-4}$ to $0.02$ (Ho et al. 2020);
# - **scaled linear**: linear in $\sqrt\beta$, 0.00085 to 0.012 (latent diffusion);
# - **cosine**: $\bar\alpha_t = f(t)/f(0)$, $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1+s}\tfrac\pi2\big)$,
#   $\beta$ clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17) — it destroys information more
#   evenly, where the linear schedule is almost pure noise for its last third.

# %%
schedules = {name: ddpm.schedule(name) for name in ["linear", "scaled_linear", "cosine"]}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for name, s in schedules.items():
    axes[0].plot(s.alpha_bar, label=name)
    axes[1].plot(np.log(s.snr), label=name)
    print(f"{name:14s} alpha_bar_T = {s.alpha_bar[-1]:.3g}   max beta = {s.betas.max():.4f}")
axes[0].set(xlabel="step index i", title="alpha_bar")
axes[1].set(xlabel="step index i", title="log SNR")
axes[0].legend()
plt.show()

# %% [markdown]
# ## 2. The forward process in one shot
#
# Composing Gaussian steps gives a Gaussian: $q(x_t\mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}x_0,
# (1-\bar\alpha_t)I)$ (eq. 4). That is the path $x_t = \alpha x_0 + \sigma\epsilon$ of the whole
# book with $\alpha = \sqrt{\bar\alpha_t}$, $\sigma = \sqrt{1-\bar\alpha_t}$ (`sched.path`).
# Iterating the chain and jumping in one shot give the same law:

# %%
sched = schedules["linear"]
n = 20_000
x0 = gm.sample(n, rng)
x_iter = x0
for j in range(300):
    x_iter = ddpm.q_step(sched, x_iter, j, rng.standard_normal(x0.shape))
one_shot = ddpm.q_sample(sched, x0, 299, rng.standard_normal(x0.shape))
print("iterated 300 steps: mean", x_iter.mean(0).round(3), " cov",
      np.cov(x_iter.T).round(3).ravel())
print("one shot          : mean", one_shot.mean(0).round(3), " cov",
      np.cov(one_shot.T).round(3).ravel())

fig, axes = plt.subplots(1, 5, figsize=(12, 2.6))
for ax, i in zip(axes, [0, 50, 150, 300, 999]):
    plot.points(ax, ddpm.q_sample(sched, x0[:2000], i, rng.standard_normal((2000, 2))))
    ax.set_title(f"i = {i}, SNR = {sched.snr[i]:.2g}")
plt.show()

# %% [markdown]
# ## 3. The posterior, and what the network must learn
#
# Given $x_0$, the reverse step is Gaussian too (eqs. 6–7):
# $q(x_{t-1}\mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$ with
# $\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}x_0 +
# \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t$ and
# $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$.
# The model replaces $x_0$ by its prediction from $\epsilon_\theta$, which rearranges into
# eq. 11: $\mu_\theta = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}
# \epsilon_\theta\big)$. The variance is fixed: $\sigma_t^2 = \beta_t$ or $\tilde\beta_t$. Ho et
# al. (2020, sec. 3.2) show the first is optimal for $x_0 \sim \mathcal N(0, I)$ and the second
# for $x_0$ deterministically one point; only for data of unit variance are they the upper and
# lower bounds on the reverse process entropy (Sohl-Dickstein et al. 2015). They differ only at
# the first steps.

# %%
plt.figure(figsize=(4.5, 3))
plt.semilogy(sched.betas, label="beta")
plt.semilogy(sched.beta_tilde[1:], label="beta tilde")
plt.xlabel("step index i")
plt.legend()
plt.show()

# %% [markdown]
# ## 4. Training: $L_\text{simple}$
#
# Dropping the weights of the variational bound leaves
# $L_\text{simple} = \mathbb E_{t,x_0,\epsilon}\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 +
# \sqrt{1-\bar\alpha_t}\epsilon, t)\|^2$ (eq. 14): denoising score matching over all noise
# levels with weight $\sigma_t^2$ (chapter 2). We train the same MLP as before, giving it the
# step index through a sinusoidal embedding.

# %%
steps = 300 if FAST else 3000
model = lambda p, x, i: mlp.apply(p, x, i)
state = train.init_state(mlp.init(rng, hidden=128, depth=3, emb_dim=32), seed=0)
batch_fn = ddpm.ddpm_batches(sched, gm.sample(20_000, rng), batch_size=256)
state, losses = train.fit(ddpm.l_simple(model), state, batch_fn, steps, lr=2e-3, warmup=100,
                          desc="L_simple")
eps_model = lambda x, i: model(state.ema, x.astype(np.float32), np.full(len(x), i, np.float32))
oracle = process.oracle(gm, sched.path, "eps")
eps_exact = lambda x, i: oracle(x, np.int64(i))  # the best possible network

plt.figure(figsize=(4.5, 3))
plt.plot(np.convolve(losses, np.ones(50) / 50, mode="valid"))
plt.xlabel("step")
plt.ylabel("L_simple (moving average)")
plt.show()

# %% [markdown]
# ## 5. Sampling: ancestral and DDIM
#
# **Ancestral** sampling (Algorithm 2) runs all $T$ reverse steps, adding noise $\sigma_t z$ at
# each. **DDIM** (Song, Meng & Ermon 2021, eq. 12) predicts $\hat x_0$, then moves to an earlier
# step $j$ along $\sqrt{\bar\alpha_j}\hat x_0 + \sqrt{1-\bar\alpha_j - s^2}\,\epsilon_\theta + s z$;
# with $\eta = 0$ ($s = 0$) it is deterministic and may skip steps. Which sub-sequence of steps
# to visit is a convention with names (Lin et al. 2024, table 2): "leading" ($0, k, 2k, \dots$,
# the DDIM code's choice, which never visits the noisiest step), "trailing" (counted back from
# $T-1$) and "linspace".
#
# We measure each sampler by the average **exact** log-density of its samples under the true
# mixture (data: about the value printed for "data"), once with the trained network and once with
# the exact $\epsilon$ — the second isolates the sampler's own error from the network's. A value
# *above* the data's means samples too concentrated on the modes; below, too spread out. With
# the exact $\epsilon$ the printed numbers show both: 10 DDIM steps land *below* the data (too
# spread: each large deterministic step overshoots), 20 to 100 steps slightly above (too
# concentrated), approaching the data's value as the steps grow.

# %%
n_samples = 500 if FAST else 2000
z = rng.standard_normal((n_samples, 2))
print(f"{'data':32s} {gm.log_prob(gm.sample(n_samples, rng)).mean():7.3f}")
results = {}
for label, eps_fn in [("trained", eps_model), ("exact eps", eps_exact)]:
    anc = ddpm.ancestral_sample(eps_fn, sched, z, rng)
    results[(label, "ancestral")] = anc
    print(f"{label + ', ancestral (1000 steps)':32s} {gm.log_prob(anc).mean():7.3f}")
    for steps_ in [10, 20, 50, 100]:
        x = ddpm.ddim_sample(eps_fn, sched, z, steps=steps_, spacing="trailing")
        results[(label, steps_)] = x
        print(f"{label + f', DDIM {steps_} steps':32s} {gm.log_prob(x).mean():7.3f}")

fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, key in zip(axes, [("trained", "ancestral"), ("trained", 10), ("trained", 50),
                          ("exact eps", 10)]):
    plot.points(ax, results[key])
    ax.set_title(f"{key[0]}: {key[1]}" + (" steps" if key[1] != "ancestral" else ""))
plt.show()

# %% [markdown]
# ## 6. The variational bound
#
# $L_\text{simple}$ is a reweighted bound. The full bound
# $-\log p_\theta(x_0) \le L_T + \sum_{t\ge2} L_{t-1} + L_0$ (eq. 5) is computable term by term;
# for continuous 2D data minidiff uses a Gaussian decoder with variance $\beta_1$ for $L_0$
# (Ho et al. discretise it for 8-bit images). With the mixture we can compare it to the true
# negative log-likelihood: even the exact network pays a gap, almost all of it in the first
# steps, where the fixed reverse variance is far from the true one.

# %%
x_eval = gm.sample(300 if FAST else 1000, rng)
true_nll = -gm.log_prob(x_eval).mean()
for label, eps_fn in [("trained", eps_model), ("exact eps", eps_exact)]:
    total, terms = ddpm.vlb(eps_fn, sched, x_eval, rng, variance="beta_tilde")
    print(f"{label:10s} bound {total.mean():.3f} nats  (true NLL {true_nll:.3f}); "
          f"KL terms of steps 2..10: {terms[:, 1:10].sum(1).mean():.3f}, "
          f"L_0 = {terms[:, 0].mean():.3f}")

# %% [markdown]
# ## 7. DDIM inverts
#
# With $\eta = 0$ the sampler is a discretised ODE, so it can be run forwards: data to noise
# and back. The round trip returns the input, more exactly as the steps grow.

# %%
x_in = gm.sample(300, rng)
for steps_ in [20, 100, 1000]:
    latent = ddpm.ddim_invert(eps_exact, sched, x_in, steps=steps_)
    back = ddpm.ddim_sample(eps_exact, sched, latent, steps=steps_)
    print(f"{steps_:5d} steps: RMS round-trip error "
          f"{np.sqrt(np.mean(np.sum((back - x_in) ** 2, axis=1))):.4f}")

# %% [markdown]
# ## Where this lives in the wild
#
# - Ho et al.'s own code (`hojonathanho/diffusion`, `diffusion_utils_2.py`): `q_sample`,
#   `q_posterior_mean_variance`, `p_mean_variance` are sections 2–3 here.
# - diffusers: `DDPMScheduler` (`variance_type="fixed_small"` is $\tilde\beta$,
#   `"fixed_large"` is $\beta$) and `DDIMScheduler` with `timestep_spacing` in
#   `{"leading", "trailing", "linspace"}`; `betas` from `beta_schedule` in
#   `{"linear", "scaled_linear", "squaredcos_cap_v2"}`.
# - `improved-diffusion` (Nichol & Dhariwal 2021) for the cosine schedule and learned variances.
#
# ## Checks

# %%
assert abs(schedules["linear"].alpha_bar[-1] - 4.04e-5) < 1e-7
assert np.allclose(x_iter.mean(0), one_shot.mean(0), atol=0.05)
exact_quality = gm.log_prob(results[("exact eps", 100)]).mean()
assert exact_quality > gm.log_prob(gm.sample(2000, rng)).mean() - 0.2
assert gm.log_prob(results[("trained", "ancestral")]).mean() > (-6 if FAST else -2.6)
