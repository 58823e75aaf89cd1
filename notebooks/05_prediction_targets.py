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
# # Chapter 5 — What the network predicts: eps, x0, v, velocity, EDM and Min-SNR
#
# Chapter 2 showed that all targets are one score in disguise. They still train differently:
# a target is a choice of **scale** (how big the regression target is at each noise level) and
# of **weighting** (how much each noise level counts). This chapter makes that concrete:
#
# 1. the frames: every loss is an $x_0$ error times a known factor;
# 2. EDM's preconditioning (Karras et al. 2022), built so that the network's target has unit
#    variance at every noise level;
# 3. Min-SNR-$\gamma$ (Hang et al. 2023), which clamps the weight of easy, low-noise steps;
# 4. the same 2D model trained six ways and sampled with one sampler at equal steps.
#
# Code: `minidiff/targets.py`, `minidiff/samplers.py`. Proofs: `tests/test_targets.py`,
# `tests/test_samplers.py`.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minidiff import datasets, process, samplers, targets, train
from minidiff.models import mlp
from minidiff.score import mode_fractions

FAST = os.environ.get("MINIDIFF_FAST") == "1"
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64
gm = datasets.gmm8()
path = process.VP()

# %% [markdown]
# ## 1. Every loss is an $x_0$ loss in disguise
#
# If a network's prediction is converted (chapter 2) from one target to another *at the same*
# $x_t$, the errors are proportional: $\hat\epsilon - \epsilon = -\frac{\alpha}{\sigma}(\hat x_0 - x_0)$.
# So, measured as an $x_0$ error,
#
# | target | factor on $\lVert\hat x_0 - x_0\rVert^2$ | on a VP path ($\alpha^2+\sigma^2=1$) |
# |---|---|---|
# | $x_0$ | 1 | 1 |
# | $\epsilon$ | $\mathrm{SNR} = \alpha^2/\sigma^2$ | SNR |
# | $v = \alpha\epsilon - \sigma x_0$ | $(\alpha^2+\sigma^2)^2/\sigma^2$ | SNR + 1 |
# | velocity $\dot\alpha x_0 + \dot\sigma\epsilon$ | $(\dot\alpha\sigma - \dot\sigma\alpha)^2/\sigma^2$ | (path-dependent) |
#
# **Min-SNR-$\gamma$** gives the $x_0$ error the weight $\min(\mathrm{SNR}, \gamma)$, $\gamma = 5$.
# In the $\epsilon$ loss that is $\min(\mathrm{SNR},\gamma)/\mathrm{SNR}$, in the $v$ loss
# $\min(\mathrm{SNR},\gamma)/(\mathrm{SNR}+1)$ — on a VP path. (The article this project grew from
# says "constant weighting matches ε-prediction, SNR weighting matches x0" without a frame; the
# statement is exact only in the $x_0$-error frame above.) `tests/test_targets.py` checks that,
# for random models, the three Min-SNR-weighted losses are *equal*, not just similar.

# %%
t = np.linspace(1e-3, 1, 400)
a, s = path.alpha(t), path.sigma(t)
snr = (a / s) ** 2
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for kind in ["x0", "eps", "v"]:
    axes[0].loglog(snr, targets.x0_error_factor(kind, a, s), label=f"plain {kind}")
axes[0].loglog(snr, np.minimum(snr, 5.0), "k--", label="Min-SNR-5 (any target)")
axes[0].set(xlabel="SNR", ylabel="weight on the x0 error", title="implied weightings")
axes[0].legend(fontsize=8)
for kind in ["x0", "eps", "v"]:
    axes[1].semilogx(snr, targets.min_snr_weight(kind, a, s), label=kind)
axes[1].set(xlabel="SNR", title="Min-SNR weight in each target's own loss")
axes[1].legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 2. EDM: scale the network's input and output so every level looks the same
#
# Karras et al. (2022) work in the frame $x = x_0 + \sigma\epsilon$ and write the denoiser as
# $D(x;\sigma) = c_\text{skip}x + c_\text{out}F(c_\text{in}x; c_\text{noise})$ with
# $c_\text{skip} = \frac{\sigma_d^2}{\sigma^2+\sigma_d^2}$,
# $c_\text{out} = \frac{\sigma\sigma_d}{\sqrt{\sigma^2+\sigma_d^2}}$,
# $c_\text{in} = \frac{1}{\sqrt{\sigma^2+\sigma_d^2}}$, $c_\text{noise} = \tfrac14\ln\sigma$,
# and the loss weight $\lambda = 1/c_\text{out}^2$. The input $c_\text{in}x$ then has unit
# variance, and so does $F$'s target $(x_0 - c_\text{skip}x)/c_\text{out}$ — at every $\sigma$,
# for any data of standard deviation $\sigma_d$. Compare the raw $x_0$ and $\epsilon$ targets'
# *error scale*: at small $\sigma$ the best $x_0$ guess is nearly exact, at large $\sigma$ the
# best $\epsilon$ guess is.

# %%
data = gm.sample(20_000, rng)
sigma_data = float(data.std())
print(f"sigma_data of gmm8: {sigma_data:.3f} (EDM's 0.5 is for images in [-1, 1])")
sig = np.geomspace(0.002, 80, 30)
var_eff = []
for sg in sig:
    e = rng.standard_normal(data.shape)
    var_eff.append(targets.edm_effective_target(data, e, sg, sigma_data).var())
c_skip, c_out, c_in, _ = targets.edm_precond(sig, sigma_data)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for c, name in [(c_skip, "c_skip"), (c_out, "c_out"), (c_in, "c_in")]:
    axes[0].loglog(sig, c, label=name)
axes[0].set(xlabel="sigma", title="EDM coefficients")
axes[0].legend()
axes[1].semilogx(sig, var_eff, "o-")
axes[1].set(xlabel="sigma", ylabel="variance", title="variance of F's training target",
            ylim=(0, 2))
plt.show()

# %% [markdown]
# ## 3. Six ways to train the same network
#
# One MLP architecture, one budget of steps, six objectives:
# $\epsilon$, $x_0$ and $v$ on the VP path (uniform $t$) with and without Min-SNR-5 for
# $\epsilon$ and $v$, and EDM (log-normal $\sigma$, $P_\text{mean} = -1.2$, $P_\text{std} = 1.2$),
# plus the flow velocity on the linear path (rectified flow, chapter 10). Every model is then put
# in the $\sigma$ frame (`samplers.denoiser_from_path`) and sampled by the same Heun sampler.

# %%
steps = 300 if FAST else 3000
net = lambda p, x, t: mlp.apply(p, x, 1000.0 * t)  # time in [0, 1], embedded like a DDPM step
edm_net = lambda p, x, c_noise: mlp.apply(p, x, 100.0 * c_noise)
linear = process.Linear()
runs = {
    "eps": (targets.prediction_loss(net, "eps"), process.path_batches(path, data, 256)),
    "eps + Min-SNR": (targets.prediction_loss(net, "eps", "min_snr"),
                      process.path_batches(path, data, 256)),
    "x0": (targets.prediction_loss(net, "x0"), process.path_batches(path, data, 256)),
    "v": (targets.prediction_loss(net, "v"), process.path_batches(path, data, 256)),
    "v + Min-SNR": (targets.prediction_loss(net, "v", "min_snr"),
                    process.path_batches(path, data, 256)),
    "EDM": (targets.edm_loss(edm_net, sigma_data), targets.edm_batches(data, 256)),
    "velocity (linear path)": (targets.prediction_loss(net, "velocity"),
                               process.path_batches(linear, data, 256, t_max=0.999)),
}
trained = {}
for name, (loss, batch_fn) in runs.items():
    state = train.init_state(mlp.init(np.random.default_rng(1), hidden=128, depth=3,
                                      emb_dim=32), seed=2)
    state, losses = train.fit(loss, state, batch_fn, steps, lr=2e-3, warmup=100,
                              progress=False)
    trained[name] = state.ema
    print(f"{name:24s} final loss {losses[-100:].mean():.4f}")

# %% [markdown]
# **The loss across noise levels.** For each trained model, its own training loss on a fixed
# evaluation set at each noise level (in the $\sigma$ frame, $\sigma/\alpha$ on the x-axis). The
# spread of these curves across levels is what the target and weighting choose. Measured here:
# the $x_0$ loss grows with the noise and the $\epsilon$ loss shrinks, each over two to three
# orders of magnitude; $v$, the velocity and EDM stay within a factor of about 3 (EDM by
# construction). The Min-SNR curves spread widely *on purpose*: their weight
# $\min(\mathrm{SNR},\gamma)/\mathrm{SNR}$ turns down the many easy low-noise levels.

# %%
x_eval = gm.sample(2000, rng)
e_eval = rng.standard_normal(x_eval.shape)
levels = np.geomspace(0.01, 80, 25)
curves = {}
for name in runs:
    per_level = []
    for lv in levels:
        if name == "EDM":
            b = {"x0": x_eval, "sigma": np.full(2000, lv), "eps": e_eval}
            per_level.append(float(targets.edm_loss(edm_net, sigma_data)(trained[name], b)))
            continue
        p = linear if name.startswith("velocity") else path
        tt = np.full(2000, float(p.t_from_ratio(lv)))
        b = {"x0": x_eval, "t": tt, "eps": e_eval, "xt": p.marginal(x_eval, tt, e_eval),
             **{k: getattr(p, k)(tt) for k in ("alpha", "sigma", "dalpha", "dsigma")}}
        per_level.append(float(runs[name][0](trained[name], b)))
    curves[name] = np.array(per_level)
plt.figure(figsize=(6, 4))
for name, c in curves.items():
    plt.loglog(levels, c, label=name)
plt.xlabel("noise level sigma / alpha")
plt.ylabel("training loss at that level")
plt.legend(fontsize=7)
plt.show()
for name, c in curves.items():
    print(f"{name:24s} max/min of the loss across levels: {c.max() / c.min():10.1f}")

# %% [markdown]
# **Sample quality at equal steps.** Heun with 12 steps (23 evaluations) on the Karras grid
# ($\rho = 7$) for every model; quality is the mean *exact* log-density of the samples under the
# mixture (the data score about the value on the first line; higher is not better beyond it) and
# how evenly the samples share the eight modes.

# %%
grid = samplers.karras_sigmas(12, 0.01, 80.0)
z = 80.0 * rng.standard_normal((1000 if FAST else 4000, 2))
print(f"{'data':24s} mean log p {gm.log_prob(gm.sample(4000, rng)).mean():7.3f}")
quality = {}
for name in runs:
    params = trained[name]
    if name == "EDM":
        D = lambda x, sg, p=params: targets.edm_denoiser(edm_net, sigma_data)(
            p, x.astype(np.float32), np.full(len(x), sg, np.float32))
    else:
        kind = {"eps": "eps", "x0": "x0", "v": "v", "velocity": "velocity"}[name.split()[0]]
        p_ = linear if kind == "velocity" else path
        predict = lambda xt, tt, p=params: net(p, xt.astype(np.float32),
                                               np.full(len(xt), tt, np.float32))
        D = samplers.denoiser_from_path(predict, kind, p_)
    out = samplers.heun(D, z, grid)
    quality[name] = gm.log_prob(out).mean()
    print(f"{name:24s} mean log p {quality[name]:7.3f}   mode weights spread "
          f"{mode_fractions(out, gm.means).std():.3f}")
D_exact = lambda x, sg: gm.posterior_mean(x, 1.0, sg)
print(f"{'exact denoiser':24s} mean log p {gm.log_prob(samplers.heun(D_exact, z, grid)).mean():7.3f}")

# %% [markdown]
# What to take away: with the same network and budget, the choice of target changes the
# per-level difficulty the optimiser sees (the curves above) far more than the final samples on
# an easy 2D problem. One visible effect: the pure $x_0$ model's samples score *above* the data
# (measured -1.03 against -1.69 in a full run): predicting $x_0$ at high noise regresses to the
# mean, and the sampler piles points onto the mode centres. On images the differences grow,
# which is why EDM's preconditioning, $v$ and Min-SNR became defaults. Parametrisation is a
# variance-reduction and weighting choice, not a different model.
#
# ## Where this lives in the wild
#
# - EDM's own code (`NVlabs/edm`, `training/networks.py`: `EDMPrecond`; `loss.py`: `EDMLoss`;
#   `generate.py`: `edm_sampler`, Algorithm 2 with churn).
# - `k-diffusion` (`sampling.py`): `get_sigmas_karras`, `sample_euler`, `sample_heun`,
#   `sample_euler_ancestral`, `sample_dpmpp_2m` — the same four samplers as `samplers.py`.
# - diffusers: `prediction_type` in the schedulers, and `snr_gamma` (Min-SNR) in its training
#   examples.
#
# ## Checks

# %%
assert all(abs(v - 1) < 0.1 for v in var_eff), "EDM's target has unit variance at every level"
assert curves["x0"].max() / curves["x0"].min() > 10 * curves["EDM"].max() / curves["EDM"].min()
assert all(q > (-8 if FAST else -3.0) for q in quality.values())
