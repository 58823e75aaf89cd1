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
# # Chapter 7 — Conditioning and guidance
#
# A conditional score network answers $\nabla_x \log p_t(x \mid c)$. Bayes' rule, differentiated
# in $x$ (the evidence $p(c)$ does not depend on $x$), splits it in two:
# $$\nabla_x \log p_t(x \mid c) = \nabla_x \log p_t(x) + \nabla_x \log p_t(c \mid x).$$
# Everything in this chapter is that line. **Classifier guidance** (Dhariwal & Nichol 2021)
# takes the first term from an unconditional model and the second from a classifier trained on
# noisy images, and scales the second by $s$. **Classifier-free guidance** (Ho & Salimans 2022)
# trains one network with and without the label and reads the classifier off the difference:
# since $\text{score} = -\epsilon / \sigma$,
# $$\epsilon_c - \epsilon_u = -\sigma_t \nabla_x \log p_t(c \mid x),$$
# and the guided noise $\epsilon_u + w(\epsilon_c - \epsilon_u)$ "scales how hard the combined
# conditional-minus-unconditional score pulls the sample toward your words".
# **Autoguidance** (Karras et al. 2024) keeps the rule and swaps the unconditional model for a
# weaker conditional one.
#
# **Convention.** minidiff writes guidance as $\epsilon_u + w(\epsilon_c - \epsilon_u)$:
# $w = 1$ is the conditional model, $w = 0$ the unconditional one (diffusers' `guidance_scale`
# is the same number). Ho & Salimans (2022, eq. (6)) write $(1 + w')\epsilon_c - w'\epsilon_u$:
# their $w'$ is our $w - 1$.
#
# Code: `minidiff/guidance.py` (the rules and the mixture oracle), `minidiff/models/classifier.py`
# (the noise-conditional classifier), `minidiff/metrics.py` (precision and recall),
# `minidiff/tools/guidance_curve.py` (the MNIST curve). Proofs: `tests/test_guidance.py`,
# `tests/test_classifier.py`, `tests/test_metrics.py`.

# %%
import json
import os
import time

import autograd
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import ks_2samp

from minidiff import datasets, ddpm, guidance, images, metrics, plot, process, sde
from minidiff.models import classifier
from minidiff.nn import checkpoint
from minidiff.nn.memory import keep_freed_memory

FAST = os.environ.get("MINIDIFF_FAST") == "1"
keep_freed_memory()
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64

# %% [markdown]
# ## 1. Bayes' rule for scores, exactly
#
# The oracle: a mixture of three overlapping Gaussians in 2D whose components are the classes
# (weights 0.4, 0.3, 0.3, standard deviation 0.6). Noised along the VP path it stays a mixture
# (`GaussianMixture.noised`), so at every $t$ the unconditional score, each class's score and
# the class posterior $p_t(c \mid x)$ — the mixture's responsibility — are closed form. Below,
# the three terms of Bayes' rule are computed independently (the class's own Gaussian, the
# mixture's score, and autograd of the log posterior) and compared.

# %%
MEANS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.5]])
mix = datasets.GaussianMixture.isotropic([0.4, 0.3, 0.3], MEANS, 0.6)
path = process.VP()
worst = 0.0
for t in (0.05, 0.3, 0.7):
    a, s = float(path.alpha(t)), float(path.sigma(t))
    x = mix.noised(a, s).sample(200, rng)
    c = rng.integers(0, 3, 200)
    grad_post = autograd.elementwise_grad(lambda z: guidance.class_log_posterior(mix, z, c, a, s))(x)
    lhs = guidance.conditional_score(mix, x, c, a, s)
    rhs = mix.noised(a, s).score(x) + grad_post
    worst = max(worst, float(np.abs(lhs - rhs).max()))
print(f"largest |grad log p_t(x|c) - grad log p_t(x) - grad log p_t(c|x)| over 3 times: {worst:.1e}")

# %% [markdown]
# The fields at $t = 0.3$ for class 0 (the left component): the class posterior (shading), the
# unconditional score, the conditional score ($w = 1$), and the guided score at $w = 3$, which
# is $\nabla \log p_t(x) + 3 \nabla \log p_t(c \mid x)$. Guidance leaves the field alone where
# the classifier is sure (deep inside class 0) and bends it hard where the classes overlap,
# pointing away from the other classes rather than toward the class's centre.

# %%
t_show = 0.3
a, s = float(path.alpha(t_show)), float(path.sigma(t_show))
noisy = mix.noised(a, s)
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
for ax, w, title in zip(axes, (None, 0.0, 1.0, 3.0),
                        ("p_t(c=0 | x)", "w = 0: unconditional", "w = 1: conditional",
                         "w = 3: guided"), strict=True):
    plot.density(ax, lambda z: guidance.class_log_posterior(mix, z, np.zeros(len(z), int), a, s),
                 lim=3.0, cmap="Blues")
    if w is not None:
        plot.score_field(ax, lambda z, w=w: guidance.guide(
            guidance.conditional_score(mix, z, np.zeros(len(z), int), a, s), noisy.score(z), w),
            lim=3.0, n=13)
    ax.set_title(title, fontsize=10)
plt.show()

# %% [markdown]
# ## 2. Classifier-free guidance is an implicit classifier
#
# Make the oracle a "network" that predicts noise, $\epsilon = -\sigma \cdot \text{score}$, with
# label 3 as the null class. Its conditional-minus-unconditional difference is the exact
# classifier's input gradient times $-\sigma$; so classifier guidance at scale $s$ with the exact
# classifier and classifier-free guidance at $w = s$ are the same sampler step
# (`tests/test_guidance.py` checks one DDIM step of each to $10^{-12}$).

# %%
sched = ddpm.schedule("linear")


def oracle(params, x, t, y, config):  # an exact noise predictor on the linear schedule
    i = int(t[0])
    al, sg = float(sched.path.alpha(i)), float(sched.path.sigma(i))
    cond = guidance.conditional_score(mix, x, np.minimum(y, 2), al, sg)
    return -sg * np.where((y == 3)[:, None], mix.noised(al, sg).score(x), cond)


i = 400
al, sg = float(sched.path.alpha(i)), float(sched.path.sigma(i))
x = mix.noised(al, sg).sample(100, rng)
c = rng.integers(0, 3, 100)
eps_c = oracle(None, x, [i], c, None)
eps_u = oracle(None, x, [i], np.full(100, 3), None)
implicit_err = float(np.abs(eps_c - eps_u + sg * guidance.class_score(mix, x, c, al, sg)).max())
print(f"step {i}: max |(eps_c - eps_u) + sigma grad log p_t(c|x)| = {implicit_err:.1e}")

# %% [markdown]
# ## 3. What guidance samples — and what it does not
#
# At every $t$ the guided score is the exact score of the *tilted* density
# $p_t(x)\,p_t(c \mid x)^w$. It is tempting to conclude that the sampler draws from
# $p_0(x)\,p_0(c \mid x)^w / Z$, a sharpened class. It does not: the tilted densities at
# different $t$ are not one distribution pushed through the noising process, so no single
# target has them as its marginals (Chidambaram et al. 2024; Bradley & Nakkiran 2024). Only at
# $w = 1$ (and $w = 0$) is the family the noised family of one law.
#
# Measured: the probability-flow ODE (chapter 4, adaptive RK45) and the reverse SDE
# (Euler–Maruyama, 500 steps) run with the exact guided score for class 0, against draws of
# the tilted target (`guidance.sample_on_grid`, exact up to a 512² grid). The statistic is the
# largest two-sample Kolmogorov–Smirnov distance over 8 projections; its critical value at level
# 0.001 is $1.95\sqrt{2/n}$.

# %%
n_mix = 1000 if FAST else 4000
crit = 1.95 * np.sqrt(2 / n_mix)
angles = np.linspace(0, np.pi, 8, endpoint=False)
dirs = np.stack([np.cos(angles), np.sin(angles)], axis=1)


def ks_max(u, v):
    return max(ks_2samp(u @ d, v @ d).statistic for d in dirs)


labels0 = np.zeros(n_mix, dtype=int)
tilt_rows, tilt_samples = [], {}
for w in (1.0, 2.0, 3.0, 5.0):
    score = guidance.guided_score(mix, path, labels0, w)
    ode, _ = sde.solve_ode(sde.pf_ode_drift(score, path), rng.standard_normal((n_mix, 2)), 1.0,
                           1e-4)
    sdes = sde.euler_maruyama(score, path, rng.standard_normal((n_mix, 2)), rng, steps=500)
    target = guidance.sample_on_grid(
        lambda z, w=w: guidance.tilted_log_density(mix, z, np.zeros(len(z), int), w), n_mix, rng,
        -6.0, 6.0)
    tilt_samples[w] = (ode, sdes, target)
    tilt_rows.append((w, ks_max(ode, target), ks_max(sdes, target), ode.mean(0), sdes.mean(0),
                      target.mean(0), np.trace(np.cov(ode.T)), np.trace(np.cov(sdes.T)),
                      np.trace(np.cov(target.T))))
print(f"KS critical value at n = {n_mix}: {crit:.3f}")
print(f"{'w':>4} {'KS ODE':>7} {'KS SDE':>7}   {'mean ODE':>15} {'mean SDE':>15} "
      f"{'mean target':>15}   var ODE / SDE / target")
for w, k1, k2, m1, m2, m3, v1, v2, v3 in tilt_rows:
    print(f"{w:4.0f} {k1:7.3f} {k2:7.3f}   ({m1[0]:5.2f}, {m1[1]:5.2f})  ({m2[0]:5.2f}, "
          f"{m2[1]:5.2f})  ({m3[0]:5.2f}, {m3[1]:5.2f})   {v1:.2f} / {v2:.2f} / {v3:.2f}")

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
for ax, w in zip(axes, (1.0, 2.0, 3.0, 5.0), strict=True):
    ode, sdes, target = tilt_samples[w]
    plot.density(ax, lambda z, w=w: guidance.tilted_log_density(mix, z, np.zeros(len(z), int), w),
                 lim=3.0)
    plot.points(ax, ode[:600], lim=3.0, color="C3", label="guided PF-ODE")
    plot.points(ax, sdes[:600], lim=3.0, color="C0", label="guided SDE")
    ax.set_title(f"w = {w:g}: tilted target (grey)", fontsize=10)
axes[0].legend(fontsize=8, loc="lower right")
plt.show()

# %% [markdown]
# At $w = 1$ both samplers pass as draws of $p(x \mid c)$ (KS below the critical value). Above
# it both miss the tilted target, in the same direction: the samples are pushed further from the
# other classes (the mean moves left and down, away from classes 1 and 2) and are narrower than
# $p_0(x)\,p_0(c \mid x)^w$. The deterministic sampler overshoots more than the stochastic one:
# the SDE's noise keeps re-spreading what the extra drift compresses. So CFG is a useful
# heuristic — more class, less spread — not a sampler of a fixed, nameable distribution, and
# what it samples depends on the sampler.

# %% [markdown]
# ## 4. A noise-conditional classifier for MNIST
#
# Classifier guidance asks the classifier about $x_t$ at every step, so it must be trained on
# noisy digits: `models/classifier.py`'s evaluator network with the step index added (a
# sinusoidal embedding and an MLP giving a bias per channel after each convolution), trained
# with cross-entropy on digits noised along the U-Net's own linear schedule, a uniform step per
# image (Dhariwal & Nichol 2021, sec. 4). It trains on the first 50,000 training digits; the
# last 10,000 measure it. The shipped one:
# `python -m minidiff train noisy-classifier --steps 2000 --batch-size 128 --seed 0`.

# %%
noisy_params, noisy_meta = checkpoint.load(images.SHIPPED["noisy_classifier"])
print("accuracy by step, stored with the weights:")
for split, acc in noisy_meta["accuracy_by_step"].items():
    print(f"  {split:>10}: " + ", ".join(f"i={k}: {100 * v:.1f}%" for k, v in acc.items()))
vx, vy = datasets.mnist("validation")
n_probe = 500 if FAST else 2000
steps_probe = [0, 100, 200, 300, 400, 500, 600, 700, 800, 999]
acc_probe = guidance.classifier_accuracy_by_step(noisy_params, vx[:n_probe], vy[:n_probe],
                                                 sched, steps_probe, np.random.default_rng(1))
ratio = [float(sched.path.sigma(i) / sched.path.alpha(i)) for i in steps_probe]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(ratio, [100 * acc_probe[i] for i in steps_probe], "o-")
ax.axhline(10, color="gray", ls=":", label="chance")
ax.set(xscale="log", xlabel="noise level sigma / alpha", ylabel="accuracy, %",
       title=f"noise-conditional classifier, {n_probe} validation digits")
ax.legend()
plt.show()

# %% [markdown]
# What it adds to the score: $\nabla_x \log p_t(c \mid x)$ for a noisy digit, requested as its
# own class and as another. Autograd takes it through the network; `tests/test_classifier.py`
# checks it against finite differences in float64.

# %%
grad_fn = images.noisy_classifier_grad(noisy_params)
i_show = 300
x0 = vx[:2]
noise = np.random.default_rng(2).standard_normal(x0.shape).astype(np.float32)
xt = (float(sched.path.alpha(i_show)) * x0 + float(sched.path.sigma(i_show)) * noise)
xt = xt.astype(np.float32)
g_own = grad_fn(xt, np.full(2, i_show, np.float32), vy[:2])
g_other = grad_fn(xt, np.full(2, i_show, np.float32), (vy[:2] + 1) % 10)
fig, axes = plt.subplots(1, 6, figsize=(11, 2.2))
for k in range(2):
    for j, (img, title) in enumerate(((xt[k, 0], f"x_t, digit {vy[k]}"),
                                      (g_own[k, 0], f"grad toward {vy[k]}"),
                                      (g_other[k, 0], f"grad toward {(vy[k] + 1) % 10}"))):
        ax = axes[3 * k + j]
        lim = np.abs(img).max() if j else 1.0
        ax.imshow(img, cmap="gray" if j == 0 else "RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
plt.show()

# %% [markdown]
# ## 5. Classifier guidance of the unconditional U-Net
#
# The shipped U-Net was trained with half of its labels dropped, so with the null label it is an
# unconditional model. Guiding it with the classifier at scale $s$:
# $\hat\epsilon = \epsilon_u - s\,\sigma_t \nabla_x \log p_t(c \mid x_t)$ (Dhariwal & Nichol
# 2021, Algorithm 2 / eq. (14); the score form of their Algorithm 1). The cost is one classifier
# forward and backward per step on top of the network, measured here against one U-Net call.

# %%
apply, params, cfg, meta = images.load_model(images.SHIPPED["unet"])
msched = images.model_schedule(meta)
n_per_class = 1 if FAST else 4
ddim_steps = 10 if FAST else 50
grid_labels = np.repeat(np.arange(10), n_per_class)
xb = np.random.default_rng(3).standard_normal((len(grid_labels), 1, 28, 28)).astype(np.float32)
tb = np.full(len(grid_labels), 500.0, np.float32)
t0 = time.perf_counter()
apply(params, xb, tb, grid_labels, cfg)
t_unet = time.perf_counter() - t0
t0 = time.perf_counter()
grad_fn(xb, tb, grid_labels)
t_clf = time.perf_counter() - t0
print(f"one U-Net call on {len(xb)} images: {1e3 * t_unet:.0f} ms; the classifier's forward and "
      f"backward: {1e3 * t_clf:.0f} ms ({t_clf / t_unet:.2f} of a U-Net call)")

cg_grids = {}
for s in (0.0, 1.0, 3.0):
    cg_grids[s] = images.sample(apply, params, cfg, grid_labels, np.random.default_rng(4),
                                steps=ddim_steps, guidance=s, sched=msched,
                                classifier=noisy_params)
fig, axes = plt.subplots(1, 3, figsize=(12, 1.6 * n_per_class + 1))
for ax, (s, x) in zip(axes, cg_grids.items(), strict=True):
    plot.digits(ax, x, n_per_class, title=f"classifier guidance s = {s:g}")
plt.show()
clf = images.load_classifier(images.SHIPPED["classifier"])
for s, x in cg_grids.items():
    print(f"s = {s:g}: the evaluator agrees with the requested class on "
          f"{100 * metrics.class_agreement(clf, x, grid_labels):.0f}% of {len(x)}")

# %% [markdown]
# ## 6. The trade-off on MNIST
#
# "Higher = follows the prompt more closely, too high = artifacts." Measured on the shipped
# U-Net: each point is 1,000 images (100 per class), 50 DDIM steps, the same starting noise at
# every point, scored against the validation digits (the last 10,000 training digits, the split
# choices are read from) and the test digits (reported). Precision and recall (Kynkäänniemi et
# al. 2019, $k = 3$, on the evaluator's features) split what FD mixes: precision is the share of
# samples that look like some real digit, recall the share of real digits the samples cover.
# At $n = 1000$, real digits score about 0.88 on both against real digits.
#
# The kinds of guidance on the curve: CFG at every step; CFG only where $\sigma/\alpha$ lies in
# Kynkäänniemi et al.'s (2024) interval $(0.28, 5.42]$ (steps 82–578 of the linear schedule, the
# conditional model elsewhere); autoguidance by a small U-Net (channels 16-32-32, 400 steps:
# `data/weights/unet_small_mnist.npz`); classifier guidance of the unconditional model. The
# table is remade by `python -m minidiff.tools.guidance_curve --bad
# data/weights/unet_small_mnist.npz --out curve.json` (about an hour on 2 cores).

# %%
with open("../data/weights/guidance_curve.json") as fh:
    curve = json.load(fh)
pts = curve["points"]
print(f"{'point':>16} {'FD val':>7} {'FD test':>7} {'agree':>6} {'prec':>6} {'recall':>6} "
      f"{'between':>8} {'within':>7} {'sample s':>8}")
for name, r in pts.items():
    v, te = r["validation"], r["test"]
    sec = "" if r["sample_seconds"] is None else f"{r['sample_seconds']:.0f}"
    print(f"{name:>16} {v['fd']:7.2f} {te['fd']:7.2f} {100 * v['agreement']:5.1f}% "
          f"{v['precision']:6.3f} {v['recall']:6.3f} {v['between']:8.0f} {v['within']:7.0f} "
          f"{sec:>8}")
any_v = next(iter(pts.values()))["validation"]
print(f"real digits: FD {any_v['fd_real']:.2f}, precision {any_v['precision_real']:.3f}, recall "
      f"{any_v['recall_real']:.3f}, between {any_v['between_real']:.0f}, within "
      f"{any_v['within_real']:.0f} (validation)")

styles = {"cfg": ("o-", "CFG"), "interval": ("s--", "CFG in the interval"),
          "auto": ("^-", "autoguidance"), "classifier": ("x:", "classifier guidance")}
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for kind, (style, label) in styles.items():
    rows = sorted((r["w"], r["validation"]) for r in pts.values() if r["kind"] == kind)
    if kind in ("interval", "auto") and "cfg_w1" in pts:  # w = 1 is the conditional model
        rows = [(1.0, pts["cfg_w1"]["validation"])] + rows
    if not rows:
        continue
    agree = [100 * v["agreement"] for _, v in rows]
    axes[0].plot(agree, [v["fd"] for _, v in rows], style, label=label)
    axes[1].plot([v["recall"] for _, v in rows], [v["precision"] for _, v in rows], style,
                 label=label)
    for w, v in rows:
        axes[0].annotate(f"{w:g}", (100 * v["agreement"], v["fd"]), fontsize=7,
                         textcoords="offset points", xytext=(3, 3))
        axes[1].annotate(f"{w:g}", (v["recall"], v["precision"]), fontsize=7,
                         textcoords="offset points", xytext=(3, 3))
axes[0].axhline(any_v["fd_real"], color="gray", ls=":", label="real vs real")
axes[0].set(xlabel="class agreement, %", ylabel="FD-MNIST (validation digits)",
            title="FD against class agreement, scale annotated")
axes[1].scatter([any_v["recall_real"]], [any_v["precision_real"]], color="gray", marker="*",
                s=80, label="real digits")
axes[1].set(xlabel="recall", ylabel="precision", title="precision against recall")
axes[0].legend(fontsize=8)
axes[1].legend(fontsize=8)
plt.show()

# %% [markdown]
# GUIDANCE_CURVE_FINDINGS

# %% [markdown]
# Grids by scale, CFG (one class per column; the same noise in every grid):

# %%
cfg_grids = {}
t0 = time.perf_counter()
for w in (0.0, 1.0, 2.0, 5.0):
    cfg_grids[w] = images.sample(apply, params, cfg, grid_labels, np.random.default_rng(4),
                                 steps=ddim_steps, guidance=w, sched=msched)
cfg_seconds = time.perf_counter() - t0
fig, axes = plt.subplots(1, 4, figsize=(15, 1.6 * n_per_class + 1))
for ax, (w, x) in zip(axes, cfg_grids.items(), strict=True):
    plot.digits(ax, x, n_per_class, title=f"CFG w = {w:g}")
plt.show()
print(f"{4 * len(grid_labels)} images, {ddim_steps} steps: {cfg_seconds:.0f} s")

# %% [markdown]
# ## 7. Guidance by a weaker self
#
# Karras et al. (2024) argue that CFG improves images for two reasons tangled together: it
# sharpens the class (the tilt of section 3), and because the unconditional model is the worse of
# the two, its *errors* point away from where a good model is unsure, so $D_c - D_u$ also
# corrects the conditional model's own mistakes. Guiding with a weaker *conditional* model,
# $D_{\text{bad}} + w(D_{\text{good}} - D_{\text{bad}})$, keeps the second effect without the
# first: quality without the loss of variety. The bad model here is the same U-Net family at a
# quarter of the width (channels 16-32-32 against 32-64-64) trained for 400 steps of batch 128
# against 1,000, with the usual tenth of the labels dropped
# (`python -m minidiff train unet --channels 16 32 32 --steps 400 --cooldown 80 --warmup 50
# --workers 2 --batch-size 128 --lr 1e-3 --seed 0 --p-uncond 0.1`).

# %%
bad_apply, bad_params, bad_cfg, bad_meta = images.load_model(images.SHIPPED["unet_small"])
auto_grids = {}
for w in (1.0, 2.0, 3.0):
    auto_grids[w] = images.sample(apply, params, cfg, grid_labels, np.random.default_rng(4),
                                  steps=ddim_steps, guidance=w, sched=msched,
                                  bad=(bad_apply, bad_params, bad_cfg))
fig, axes = plt.subplots(1, 3, figsize=(12, 1.6 * n_per_class + 1))
for ax, (w, x) in zip(axes, auto_grids.items(), strict=True):
    plot.digits(ax, x, n_per_class, title=f"autoguidance w = {w:g}")
plt.show()

# %% [markdown]
# The comparison the paper makes, FD at matched class agreement: for each autoguidance (and
# interval, and classifier-guidance) point, the FD of CFG at the same agreement, read off the CFG
# curve by linear interpolation between its points (validation digits; blank where the point's
# agreement lies outside the CFG curve's range).

# %%
cfg_rows = sorted((r["validation"]["agreement"], r["validation"]["fd"]) for r in pts.values()
                  if r["kind"] == "cfg")
cfg_agree, cfg_fd = np.array(cfg_rows).T
matched = {}
print(f"{'point':>16} {'agree':>6} {'FD':>7} {'CFG FD at that agreement':>26}")
for name, r in pts.items():
    if r["kind"] == "cfg":
        continue
    v = r["validation"]
    inside = cfg_agree.min() <= v["agreement"] <= cfg_agree.max()
    matched[name] = float(np.interp(v["agreement"], cfg_agree, cfg_fd)) if inside else None
    ref = "" if matched[name] is None else f"{matched[name]:.2f}"
    print(f"{name:>16} {100 * v['agreement']:5.1f}% {v['fd']:7.2f} {ref:>26}")

# %% [markdown]
# AUTOGUIDANCE_FINDINGS
#
# ## Where this lives in the wild
#
# - diffusers: every text-to-image pipeline's `guidance_scale` is this $w$, run as one batch of
#   conditional and unconditional halves (`noise_pred_uncond + guidance_scale * (noise_pred_text
#   - noise_pred_uncond)`); the negative prompt replaces the empty caption in the unconditional
#   half.
# - ADM's code (`openai/guided-diffusion`, `classifier_sample.py`: `cond_fn` returns
#   $s \nabla \log p(y \mid x_t)$ from the noisy classifier; `EncoderUNetModel` is that
#   classifier).
# - EDM2's code (`NVlabs/edm2`, `generate_images.py`: the `gnet` argument is autoguidance's
#   guiding network; `guidance` is $w$).
#
# ## Exercises (course build)
#
# 7.1 `guidance.class_score` (Bayes' rule for scores); 7.2 `guidance.classifier_guided_eps`
# (Dhariwal & Nichol 2021, eq. (14)); 7.3 `guidance.tilted_log_density`; 7.4
# `guidance.interval_from_ratios`.
#
# ## Checks

# %%
assert worst < 1e-10
assert implicit_err < 1e-10
assert tilt_rows[0][1] < crit and tilt_rows[0][2] < crit  # w = 1: the class
assert all(k1 > crit and k2 > crit for _, k1, k2, *_ in tilt_rows[1:])  # w > 1: not the tilt
assert acc_probe[0] > 0.95 and acc_probe[999] < 0.15
assert len([r for r in pts.values() if r["kind"] == "cfg"]) >= 5
assert len([r for r in pts.values() if r["kind"] == "auto"]) >= 4
