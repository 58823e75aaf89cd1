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
# # Chapter 10 — Rectified flow, MMDiT and FLUX: SD3 and FLUX built by hand
#
# The seed article's rows "SD3.5: MMDiT + adaLN + QK-norm, rectified flow" and "FLUX.1: hybrid
# MMDiT + parallel DiT, rectified flow" change two things at once, and this chapter takes them
# apart:
#
# 1. **the objective** — rectified flow (Liu et al. 2023; flow matching, Lipman et al. 2023): a
#    straight path from data to noise and a network that predicts its velocity, "equal to
#    v-prediction up to weighting"; SD3 (Esser et al. 2024) reweights it by sampling the time
#    from a logit-normal density. *Reflow* retrains on the flow's own couplings to straighten it.
# 2. **the network** — SD3's MMDiT: "separate weights per modality (image vs text) but a joined
#    sequence for shared attention"; FLUX's hybrid of those "double-stream" blocks with
#    "single-stream parallel DiT blocks"; QK-norm to keep attention logits in check.
#
# Both are measured on chapter 8's task — captions of MNIST digits, 7 x 7 x 4 latents of the
# frozen autoencoder, the frozen text encoder — so that every difference is the chapter's.
#
# Code: `minidiff/flow.py` (the path, densities, samplers, straightness, reflow),
# `minidiff/models/mmdit.py` (double- and single-stream blocks, QK-norm),
# `minidiff/latent_flow.py` (the three transformers on latents), `minidiff/tools/flow_eval.py`
# (the tables). Proofs: `tests/test_flow.py`, `tests/test_mmdit.py`, `tests/test_latent_flow.py`.

# %%
import json
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from minidiff import flow, latent, latent_flow, plot, process, samplers, targets
from minidiff.datasets import gmm8, mnist
from minidiff.images import SHIPPED, WEIGHTS_DIR
from minidiff.models import mmdit
from minidiff.nn.memory import keep_freed_memory
from minidiff.nn.tree import tree_size
from minidiff.text_encoder import CaptionedDigits, encode_captions, load_text_encoder

FAST = os.environ.get("MINIDIFF_FAST") == "1"
keep_freed_memory()
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64
PATH = flow.PATH


def show_square(axes):
    """The 2D panels on one square window around the mixture."""
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlim(-3.5, 3.5)
        ax.set_ylim(-3.5, 3.5)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## 1. The straight path, and the curved flow it induces
#
# **Convention.** minidiff puts the data at $t = 0$ and the noise at $t = 1$ (`process.Linear`):
#
# $$x_t = (1 - t)\,x_0 + t\,\epsilon, \qquad u = \frac{dx_t}{dt} = \epsilon - x_0 .$$
#
# Liu et al. and the seed write $X_t = t X_1 + (1 - t) X_0$ with $X_0$ the noise, $X_1$ the data
# and velocity $X_1 - X_0$: their $t$ is our $1 - t$, their velocity our $-u$. Everything below
# is in minidiff's form; sampling runs $dx/dt = v(x, t)$ from $t = 1$ down to $0$.
#
# Each *pair* $(x_0, \epsilon)$ moves on a straight line. But the network only sees $x_t$, and
# many lines cross there: what it learns is their average, the **marginal velocity**
# $u^*(x, t) = E[\epsilon - x_0 \mid x_t = x]$. For a Gaussian mixture it is closed form
# (`process.oracle(mixture, Linear(), "velocity")`), and its ODE's trajectories are curved.

# %%
mix = gmm8()
exact = process.oracle(mix, PATH, "velocity")
ends = {"t_max": 1 - 1e-4, "t_min": 1e-4}  # the exact velocity is singular at t = 0 and t = 1
x0_pair, eps_pair = mix.sample(40, rng), rng.standard_normal((40, 2))
x1_show = rng.standard_normal((40, 2))
traj = flow.heun(exact, x1_show, flow.time_grid(50, **ends), return_path=True)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for a, b in zip(x0_pair, eps_pair, strict=True):
    axes[0].plot([a[0], b[0]], [a[1], b[1]], "-", color="C0", lw=0.6, alpha=0.6)
axes[0].set_title("conditional paths: straight lines\nfrom each x0 to its own noise", fontsize=9)
for k in range(traj.shape[1]):
    axes[1].plot(traj[:, k, 0], traj[:, k, 1], "-", color="C1", lw=0.7)
axes[1].plot(traj[-1, :, 0], traj[-1, :, 1], "k.", ms=4)
axes[1].set_title("the marginal flow's ODE (exact velocity):\ncurved trajectories", fontsize=9)
show_square(axes)

# %% [markdown]
# ## 2. The velocity is a score network: "v-prediction up to weighting", made exact
#
# On this path `targets.convert` turns a velocity into eps, $x_0$ or the score
# ($\hat x_0 = x_t - t\hat u$, $\hat\epsilon = x_t + (1-t)\hat u$), and the errors convert with it,
# per example:
#
# $$|\hat u - u|^2 = \frac{|\hat x_0 - x_0|^2}{t^2} = \frac{|\hat\epsilon - \epsilon|^2}{(1-t)^2}.$$
#
# So the flow-matching loss is an $x_0$ loss weighted by $1/t^2$, or an eps loss weighted by
# $1/(1-t)^2$ (`flow.error_factors`, from `targets.x0_error_factor`). Checked here on random
# predictions, and plotted against the time.

# %%
n_chk = 1000
x0c, epsc, u_hat = rng.standard_normal((3, n_chk, 2))
tc = rng.uniform(0.01, 0.99, n_chk)
a, s, da, ds = PATH.alpha(tc), PATH.sigma(tc), PATH.dalpha(tc), PATH.dsigma(tc)
xtc = PATH.marginal(x0c, tc, epsc)
err_u = targets.squared_error(u_hat, epsc - x0c)
err_x0 = targets.squared_error(targets.convert(u_hat, "velocity", "x0", xtc, a, s, da, ds), x0c)
err_eps = targets.squared_error(targets.convert(u_hat, "velocity", "eps", xtc, a, s, da, ds),
                                epsc)
w = flow.error_factors(tc)
rel_x0 = np.max(np.abs(err_u - w["x0"] * err_x0) / err_u)
rel_eps = np.max(np.abs(err_u - w["eps"] * err_eps) / err_u)
print(f"largest relative difference over {n_chk} examples: x0 frame {rel_x0:.1e}, "
      f"eps frame {rel_eps:.1e}")
tt = np.linspace(0.02, 0.98, 200)
wt = flow.error_factors(tt)
plt.figure(figsize=(5, 3))
plt.semilogy(tt, wt["x0"], label="weight on the x0 error: 1/t²")
plt.semilogy(tt, wt["eps"], label="weight on the eps error: 1/(1-t)²")
plt.xlabel("t (0 = data, 1 = noise)")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 3. SD3's time densities
#
# Esser et al. (2024, sec. 3.1) keep the loss and change *where in $t$* it is sampled, which is
# the same as weighting it by the density: **logit-normal** (eq. (19); their best, $m = 0$,
# $s = 1$), **mode sampling with heavy tails** (eq. (20), scale 1.29) and **CosMap** (eq. (21),
# the cosine schedule's log-SNR carried onto the linear path). The middle of the path, where
# neither the data nor the noise dominates, is where the velocity is hardest to predict; the
# logit-normal spends most draws there. Histograms of `flow.sample_times` against the densities
# (a test matches each sampler to its CDF by a Kolmogorov-Smirnov statistic).

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6))
grid_t = np.linspace(0.002, 0.998, 300)
for ax, name in zip(axes, flow.DENSITIES, strict=True):
    draws = flow.sample_times(name, 20000, rng)
    ax.hist(draws, bins=50, density=True, alpha=0.5)
    ax.plot(grid_t, flow.DENSITIES[name][1](grid_t), "k-")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("t")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. A flow on the mixture: learned against exact, and its samplers
#
# An MLP trained by flow matching (`flow.fit_toy`: `targets.prediction_loss(net, "velocity")`
# on `flow.batches`) against the exact velocity. Sampling: **Euler** on the flow ODE is DDIM on
# this path — the step keeps $\hat x_0$ and $\hat\epsilon$ and moves $t$ — and it equals
# chapter 5's sigma-frame Euler on the grid $\sigma = t / (1 - t)$ (`flow.sigma_grid`; checked
# below to float64 precision). $t = 1$ is $\sigma = \infty$, so the chapter-5 samplers cannot
# start where the flow's own do. **Heun** (`flow.heun`) is second order; its last stage reads
# $v$ at $t = 0$, which a flow defines.

# %%
toy_steps = 400 if FAST else 3000
data2d = mix.sample(20000, rng)
t0 = time.perf_counter()
params_1, _ = flow.fit_toy(flow.batches(data2d, 256, density="logit_normal"), toy_steps, seed=0)
learned_v = lambda x, t: flow.toy_net(params_1, x, np.float32(t))  # noqa: E731
print(f"trained in {time.perf_counter() - t0:.0f} s; E|v - u*|² by t:",
      {t: round(e, 3) for t, e in flow.velocity_error(learned_v, exact, mix.sample(4000, rng),
                                                      rng).items()})
ts_check = np.linspace(0.95, 0.0, 9)
den = samplers.denoiser_from_path(exact, "velocity", PATH)
xs = rng.standard_normal((200, 2))
same = np.abs(flow.euler(exact, xs, ts_check)
              - samplers.euler(den, xs / (1 - ts_check[0]), flow.sigma_grid(ts_check))).max()
print(f"flow Euler vs sigma-frame Euler on the mapped grid: largest difference {same:.1e}")

x1_eval = rng.standard_normal((2000, 2))
ref_end = flow.reflow_pairs(exact, x1_eval, ts=flow.time_grid(200, **ends))
print("mean squared distance to the exact ODE's endpoint (the learned flow):")
for n in (1, 2, 4, 8, 16):
    e = np.mean(np.sum((flow.euler(learned_v, x1_eval, flow.time_grid(n)) - ref_end) ** 2, 1))
    h = np.mean(np.sum((flow.heun(learned_v, x1_eval, flow.time_grid(n)) - ref_end) ** 2, 1))
    print(f"  {n:2d} steps: Euler {e:.4f}   Heun {h:.4f}")

# %% [markdown]
# ## 5. Reflow straightens the flow
#
# Liu et al. (2023, sec. 2.2): run the trained flow's ODE from noise $x_1$ to its sample $x_0$,
# and train a new flow on those **pairs** instead of independent ones. The lines between paired
# points no longer cross much, so the new marginal velocity is nearly the straight displacement,
# and one Euler step goes most of the way. Their **straightness**
# $S = \int_0^1 E|(x_1 - x_0) - v(x_t, t)|^2 dt$ along the flow's own trajectories
# (`flow.straightness`) is 0 for a perfectly straight flow.
#
# The 1-rectified flow here is the MLP of section 4; the 2-rectified flow starts from its
# weights (as InstaFlow does) and trains on 20,000 of its couplings (100 Heun steps each).

# %%
n_ode = 30 if FAST else 100  # ODE steps for the pairs, the couplings and S
x1_pairs = rng.standard_normal((4000 if FAST else 20000, 2))
x0_pairs = flow.reflow_pairs(learned_v, x1_pairs, steps=n_ode)
params_2, _ = flow.fit_toy(flow.batches(x0_pairs, 256, density="logit_normal", pairs=x1_pairs),
                           toy_steps, seed=1, init=params_1)
reflowed_v = lambda x, t: flow.toy_net(params_2, x, np.float32(t))  # noqa: E731
coupling_1 = flow.reflow_pairs(learned_v, x1_eval, steps=n_ode)  # each flow's own endpoint
coupling_2 = flow.reflow_pairs(reflowed_v, x1_eval, steps=n_ode)
rows_toy = {}
for name, v, own in (("1-rectified", learned_v, coupling_1),
                     ("2-rectified", reflowed_v, coupling_2)):
    s_val, _ = flow.straightness(v, x1_eval, steps=n_ode)
    one = {n: flow.one_step_error(v, x1_eval, own, steps=n) for n in (1, 2)}
    samples_1 = flow.euler(v, x1_eval, flow.time_grid(1))
    nll = -np.mean(mix.log_prob(samples_1))
    rows_toy[name] = {"S": s_val, "1-step": one[1], "2-step": one[2], "nll_1step": nll}
    print(f"{name}: straightness S = {s_val:.3f}; distance of 1 / 2 Euler steps to its own "
          f"ODE endpoint {one[1]:.3f} / {one[2]:.3f}; one-step samples' NLL under the mixture "
          f"{nll:.2f} (the data's own: {-np.mean(mix.log_prob(mix.sample(2000, rng))):.2f})")

traj_2 = flow.heun(reflowed_v, x1_show, flow.time_grid(50), return_path=True)
traj_1 = flow.heun(learned_v, x1_show, flow.time_grid(50), return_path=True)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, tr, title in ((axes[0], traj_1, "1-rectified: curved"),
                      (axes[1], traj_2, "2-rectified (reflow): nearly straight")):
    for k in range(tr.shape[1]):
        ax.plot(tr[:, k, 0], tr[:, k, 1], "-", lw=0.7)
    ax.set_title(title, fontsize=9)
for name, v, c in (("1-rectified", learned_v, "C0"), ("2-rectified", reflowed_v, "C3")):
    one_step = flow.euler(v, x1_eval[:1000], flow.time_grid(1))
    axes[2].plot(one_step[:, 0], one_step[:, 1], ".", ms=2, color=c, label=name)
axes[2].set_title("one Euler step from noise", fontsize=9)
axes[2].legend(fontsize=8, markerscale=4)
show_square(axes)

# %% [markdown]
# ## 6. MMDiT and FLUX's blocks
#
# Chapter 8's text entered through cross-attention: the image read the caption, the caption
# never changed. SD3's **double-stream** block (Esser et al. 2024, fig. 2) gives the caption
# tokens a stream of their own — own modulation, own QKV, own output projection and MLP — and
# joins the two in **one** attention; FLUX's **single-stream** block then runs one set of
# weights over the concatenation, attention and MLP side by side from one normalised input
# (Dehghani et al. 2023's parallel layers), with one matrix in and one matrix out:
#
# ```
#  double-stream (MMDiT) block                      single-stream (FLUX) block
#  text x_t            image x_i                    [text ; image] x
#    |                   |                            |
#  adaLN_t(c)          adaLN_i(c)                   adaLN(c) -> h
#  qkv_t               qkv_i                        W_1 h = [ qkv | m ]
#    \___ attention over [text ; image] ___/          attention(qkv)   GELU(m)
#  proj_t, gate        proj_i, gate                       \____ W_2 [ . | . ] ____/
#  MLP_t, gate         MLP_i, gate                    x + gate * (...)
#  c = time embedding + MLP(pooled caption)
# ```
#
# The tests prove the definitions: the joint attention is one softmax over the concatenation,
# with the caption absent the double block *is* chapter 9's DiT block, the fused single block
# equals attention plus MLP with split weights, and adaLN-Zero makes every block the identity
# at initialisation. The three architectures compared below share width 96, four blocks and
# so the same multiply-adds per token in each block:

# %%
for arch in latent_flow.ARCHS:
    cfg = latent_flow.config(arch)
    p = latent_flow.init(cfg, np.random.default_rng(0))
    kind = "DiT + cross-attention" if arch == "dit" else \
        f"{cfg.double_blocks} double + {cfg.single_blocks} single"
    print(f"{arch:6s} {kind:26s} {tree_size(p) / 1e6:.2f} M parameters")

# %% [markdown]
# ## 7. The attention across the two modalities
#
# The MMDiT of section 9's table (shipped as `mmdit_mnist.npz`) on one caption, at a middle
# time: its joint attention averaged over heads — how much weight the image queries put on the
# caption's tokens, and how much the caption's tokens put on the image, the direction
# cross-attention did not have.

# %%
models = latent_flow.load_models(SHIPPED["flow"])  # the shipped flow: the best of section 9
mm = latent_flow.load_models(SHIPPED["mmdit"])
params_f, cfg_f = mm["flow"]
text_params, text_cfg = models["text"]
_, _, thresholds = load_text_encoder(SHIPPED["clip"])
prompt = "a bold seven leaning right"
cap = encode_captions(text_params, text_cfg, [prompt], pooled=True)
xv, yv = mnist("validation")
z0 = models["vae"][1] * latent.encode(models["vae"][0], xv[yv == 7][:1])  # a seven's latent
t_mid = 0.5
xt_mid = PATH.marginal(z0, t_mid, np.random.default_rng(3).standard_normal(z0.shape))
probe = []
latent_flow.apply(params_f, xt_mid.astype(np.float32), np.full(1, t_mid, np.float32), cap,
                  cfg_f, probe)
n_words = int(cap["mask"].sum())
print(f"caption tokens: {n_words} (of {cap['mask'].shape[1]}), image tokens: 49")
assert cfg_f.double_blocks == 4 and cfg_f.single_blocks == 0
img_to_text, text_to_img = [], []
for r in probe:
    _, wts = mmdit.attention_logits(r)  # (heads, S + T, S + T), text first
    s_len = r["text_tokens"]
    wm = wts.mean(axis=0)
    img_to_text.append(wm[s_len:, :s_len].sum(axis=1).mean())
    text_to_img.append(wm[:n_words, s_len:].sum(axis=1).mean())
print("weight image queries put on the caption, by block:", np.round(img_to_text, 3))
print("weight caption queries put on the image, by block: ", np.round(text_to_img, 3))
_, w_last = mmdit.attention_logits(probe[-1])
plt.figure(figsize=(4.5, 4))
plt.imshow(w_last.mean(axis=0), cmap="magma")
plt.axhline(probe[-1]["text_tokens"] - 0.5, color="w", lw=0.8)
plt.axvline(probe[-1]["text_tokens"] - 0.5, color="w", lw=0.8)
plt.title("last block's attention (rows: queries;\ntext first, then the 49 image tokens)",
          fontsize=9)
plt.colorbar()
plt.show()

# %% [markdown]
# Measured: with 49 image keys against the caption's 7, attention spread evenly would put
# 7/56 = 12.5% of each row on the caption. The image queries put 33% there in the first block
# and 4-17% in the later ones — the words are read early; the caption's queries put 86-97% on the
# image (even spread: 87.5%), so the text stream is rewritten from the image in every block, the
# direction chapter 8's cross-attention did not have (what it buys here: section 9).

# %% [markdown]
# ## 8. What QK-norm is for
#
# Attention logits $q\cdot k/\sqrt d$ are products of two learned projections; at a high
# learning rate they can grow until the softmax saturates into one-hot rows whose gradients
# vanish — the instability Dehghani et al. (2023, sec. 2) met at scale. **QK-norm** applies an
# RMSNorm with a learned scale $g$ to each head's queries and keys, so
# $|q\cdot k|/\sqrt{d} \le \sqrt{d}\,\max|g_q|\max|g_k|$ whatever the projections do (a test
# holds the bound). The same MMDiT trained at learning rate $3 \cdot 10^{-2}$ (30 times the
# shipped recipe's) with no gradient clipping, with and without it, the largest logit on a fixed
# batch recorded every 10 steps (`latent_flow.logit_growth`). Measured over 200 steps: without
# QK-norm the largest logit jumps to thousands within 20 steps (about 23,000 at its peak) and the
# loss stalls near 1.72; with it the logits stay under 14 and the loss keeps falling to about
# 1.12. At $10^{-2}$ the gap is 48 against 5 (recorded every 20 steps), with equal losses.

# %%
vae_params, scale = models["vae"]
xf, yf = mnist("fit")
n_small = 500 if FAST else 2000
small = CaptionedDigits(xf[:n_small], yf[:n_small], thresholds)
bf = latent_flow.flow_batches(latent.encode_all(vae_params, small.images), small, text_params,
                              text_cfg, scale, 32)
qk_steps = 20 if FAST else 200
qk_runs = {}
for q in (False, True):
    t0 = time.perf_counter()
    qk_runs[q] = latent_flow.logit_growth(latent_flow.config("mmdit", qk_norm=q), bf, qk_steps,
                                          3e-2, every=10)
    print(f"QK-norm {q}: {time.perf_counter() - t0:.0f} s, largest logit "
          f"{max(qk_runs[q]['max_logit']):.1f}, last loss {qk_runs[q]['loss'][-1]:.3f}")
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for q, r in qk_runs.items():
    label = "with QK-norm" if q else "without"
    axes[0].plot(r["step"], r["max_logit"], "o-", ms=3, label=label)
    axes[1].plot(r["step"], r["loss"], "o-", ms=3, label=label)
axes[0].set_ylabel("largest |attention logit|")
axes[0].set_yscale("log")
axes[1].set_ylabel("training loss")
for ax in axes:
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 9. DiT, MMDiT and FLUX at one budget
#
# The three architectures, rectified flow with logit-normal times, trained on the latents of
# the first 50,000 training digits at batch 128 on two worker processes, for about the same
# compute: the steps of each (DiT 1,700, MMDiT 1,500, FLUX 1,280) were set from a first
# measurement of their step times, so that each cost what 1,500 MMDiT steps cost; a later, cleaner
# measurement (the `s/step` column) found FLUX's step only 2% slower than MMDiT's, so FLUX got
# about 15% less compute than the others. A fourth row is the MMDiT again with uniform times
# instead of SD3's logit-normal. Each model is sampled with 20 Euler steps; its guidance scale (1.5
# or 3) is chosen on 1,000 prompts of the validation digits, and the test digits are only
# reported. Made by `python -m minidiff.tools.flow_eval table` (the commands are in
# `data/weights/README.md` and in the JSON). For scale: chapter 8's latent U-Net (1.72M
# parameters, 27 minutes, 50 DDIM steps) reached FD 8.05 / 9.92 at w = 1.5.

# %%
ev = json.loads((WEIGHTS_DIR / "flow_eval.json").read_text())
print(f"{'model':>16} {'time':>6} {'steps':>6} {'Mparams':>8} {'Mmacs':>7} {'s/step':>7} "
      f"{'w':>4} {'FD val':>7} {'FD test':>7} {'agree':>6} {'thick':>6} {'slant':>6} "
      f"{'width':>6}")
for name, r in ev["table"]["models"].items():
    te, va = r["test"], r["validation"][f"{r['chosen_guidance']:g}"]
    hits = [te["attributes"][a]["hit"] for a in ("thickness", "slant", "width")]
    print(f"{name:>16} {r['train_seconds'] / 60:5.1f}m {r['train_steps']:6d} "
          f"{r['params'] / 1e6:8.2f} {1e3 * r['gmacs_per_image']:7.1f} {r['step_seconds']:7.2f} "
          f"{r['chosen_guidance']:4.1f} {va['fd']:7.2f} {te['fd']:7.2f} {te['agreement']:6.1%} "
          + " ".join(f"{h:6.1%}" for h in hits))
print(f"(real test digits vs the training digits: FD {te['fd_real']:.2f})")

# %% [markdown]
# **What the table shows** (the numbers as measured; one seed each). The three architectures land
# within about one FD point of each other on the validation prompts at w = 1.5 (DiT 10.40, MMDiT
# 10.47, FLUX 11.39), with the digit named 97.7-98.3% of the time and each attribute in its asked
# tertile about equally often; the DiT, lowest there, is the shipped `flow_mnist.npz`. At this
# scale — 49 image tokens, at most 16 caption tokens over a 37-word vocabulary, about a million
# parameters, 200,000 latents seen — the MMDiT's two-way attention buys nothing measurable:
# the frozen encoder's states of such short captions are already all the image needs to read.
# Esser et al. report the MMDiT's advantage at scale and on long, compositional prompts, which
# this task does not have; FLUX's row also had about 15% less compute. SD3's logit-normal times
# against uniform times on the same MMDiT: 10.47 against 10.80 (validation) and 11.75 against
# 11.84 (test) — the direction SD3 reports, by less than a second seed might move it (not
# measured). Guidance 3 raises agreement to 99.8-99.9% and triples FD (30-33): too strong for
# these small models, as in chapter 8.

# %% [markdown]
# Samples of the shipped model, one row per prompt, the same starting noise in every row:

# %%
prompts = ["a bold seven leaning right", "a thin seven leaning left", "2, wide and bold",
           "the digit two, narrow and thin", "a left-leaning 4", "an eight standing upright"]
per_prompt = 4 if FAST else 8
w_ship = ev["table"]["models"][ev["shipped"]]["chosen_guidance"]
rows = [latent_flow.sample(models, [p] * per_prompt, np.random.default_rng(11),
                           steps=10 if FAST else 20, guidance=w_ship) for p in prompts]
fig = plot.prompt_rows(np.concatenate(rows), prompts, per_prompt)
plt.show()

# %% [markdown]
# ## 10. Reflow on MNIST
#
# The shipped model's guided ODE (8 Heun steps at the guidance chosen for it on validation
# prompts) made 3,000 couplings of noise, caption and latent; the student started from its
# weights and trained 500 steps on them (the guidance is baked into the coupling, so the student
# samples at guidance 1, as InstaFlow's reflow does).
# Both at 1, 2, 4 and 20 Euler steps on the same 1,000 test prompts and noise (a report: nothing
# is chosen on it), with the straightness of each on the latents. Measured: the student is ten
# times straighter (22.3 -> 2.3), and one Euler step of it (FD 18.4) lands near where twenty do
# (11.0), where the teacher's one step is the blurred average of every digit the caption allows
# (FD 44.0, recall 0.17); the price is 1-4 points of class agreement.

# %%
rf = ev["reflow"]
print(f"straightness S on the latents: teacher {rf['straightness']['teacher']:.2f}, "
      f"student {rf['straightness']['student']:.2f}")
for key, r in rf["rows"]["test"].items():
    print(f"{key:>12}: FD {r['fd']:7.2f}  agreement {r['agreement']:6.1%}")
student = latent_flow.load_models(SHIPPED["reflow"])
z_show = np.random.default_rng(5).standard_normal((8, 4, 7, 7)).astype(np.float32)
p_show = ["a seven"] * 8
grids = []
for m, g in ((models, rf["pair_guidance"]), (student, 1.0)):
    for n in (1, 2):
        grids.append(latent_flow.sample(m, p_show, rng, steps=n, guidance=g, noise=z_show))
fig = plot.prompt_rows(np.concatenate(grids), ["teacher, 1 step", "teacher, 2 steps",
                                               "student, 1 step", "student, 2 steps"], 8)
plt.show()

# %% [markdown]
# ## Where this lives in the wild
#
# - diffusers: `SD3Transformer2DModel` with `JointTransformerBlock` (the double-stream block;
#   `context_pre_only` on the last one) and `FluxTransformer2DModel` with
#   `FluxTransformerBlock` and `FluxSingleTransformerBlock` (`proj_mlp` beside the attention,
#   one `proj_out` over their concatenation); `FlowMatchEulerDiscreteScheduler` (Euler on the
#   flow ODE, its `shift` is `flow.time_grid`'s); `training_utils.
#   compute_density_for_timestep_sampling` (logit-normal and mode sampling as in section 3).
# - The papers' code: `black-forest-labs/flux` (`modules/layers.py`: `DoubleStreamBlock`,
#   `SingleStreamBlock`, `QKNorm`), Stability's `sd3-ref`/`sd3.5` (`mmditx.py`),
#   `gnobitab/RectifiedFlow` (reflow, straightness) and `gnobitab/InstaFlow` (reflow of a
#   guided text-to-image model).
#
# ## Exercises (course build)
#
# 10.1 `mmdit.joint_attention` (Esser et al. 2024, fig. 2a); 10.2 `mmdit.single_block`'s parallel
# form (Dehghani et al. 2023, sec. 2); 10.3 `nn.layers.rms_norm` (Zhang & Sennrich 2019, eq.
# (4)); 10.4 `flow.straightness` (Liu et al. 2023, sec. 2.2).
#
# ## Checks

# %%
assert rel_x0 < 1e-10 and rel_eps < 1e-10
assert same < 1e-10
assert rows_toy["2-rectified"]["S"] < rows_toy["1-rectified"]["S"]
assert rows_toy["2-rectified"]["1-step"] < rows_toy["1-rectified"]["1-step"]
assert max(qk_runs[True]["max_logit"]) < max(qk_runs[False]["max_logit"])
assert len(probe) == cfg_f.double_blocks + cfg_f.single_blocks
assert rf["straightness"]["student"] < rf["straightness"]["teacher"] / 5
assert rf["rows"]["test"]["student 1"]["fd"] < rf["rows"]["test"]["teacher 1"]["fd"]
