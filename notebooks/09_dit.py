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
# # Chapter 9 — The Diffusion Transformer (DiT)
#
# The U-Net of chapter 6 is one way to compute a score network's output: a tensor the size of
# the input. Peebles & Xie (2023) drop the convolutions altogether. Cut the image into $p\times p$
# patches, make every patch a token, run a plain transformer over the $T = (I/p)^2$ tokens, and
# turn every output token back into a patch of the predicted noise. Nothing about the score
# changes: the network is still trained on $L_\text{simple}$ (chapter 3) and sampled with DDIM
# and classifier-free guidance (chapter 6). What changes is how compute scales — the paper's
# headline is that FID falls steadily as forward Gflops grow, whether through width, depth or
# smaller patches.
#
# The paper works in a VAE latent (chapter 8); here the "latent" is the 28x28 MNIST image itself,
# so this is a pixel-space DiT. Code: `minidiff/models/dit.py`, the fused GELU and modulated
# layer norm in `minidiff/nn/layers.py`, the sweep in `minidiff/tools/sweep.py`. Proofs:
# `tests/test_dit.py`, `tests/test_nn.py`, `tests/test_images.py`, `tests/test_sweep.py`, `tests/test_shipped.py`.

# %%
import json
import os
import time

import autograd
import matplotlib.pyplot as plt
import numpy as np
from autograd.test_util import check_grads

from minidiff import ddpm, images, metrics, nn, plot
from minidiff.datasets import mnist
from minidiff.models import dit
from minidiff.nn import checkpoint
from minidiff.nn.memory import keep_freed_memory

FAST = os.environ.get("MINIDIFF_FAST") == "1"
keep_freed_memory()  # the process-wide allocator choice of chapter 6
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64

# %% [markdown]
# ## 1. Patches are tokens
#
# `patchify` reshapes $(N, C, H, W)$ into $(N, T, p^2 C)$ with tokens in row-major order of the
# patch grid; `unpatchify` is its exact inverse. With $p = 4$ a digit is a 7x7 grid of 49
# tokens of 16 pixels; $p = 2$ gives 196 tokens, $p = 7$ gives 16. Halving $p$ quadruples $T$.

# %%
digits, labels = mnist("test")
digit = digits[:1].astype(np.float32)  # (1, 1, 28, 28)
for p in (7, 4, 2):
    tokens = dit.patchify(digit, p)
    back = dit.unpatchify(tokens, p, 1)
    print(f"p = {p}: tokens {tokens.shape[1]:3d} of dimension {tokens.shape[2]:2d};"
          f" unpatchify(patchify(x)) == x: {np.array_equal(back, digit)}")
tokens = dit.patchify(digit, 4)[0]
fig, axes = plt.subplots(7, 7, figsize=(3.5, 3.5))
for ax, tok in zip(axes.ravel(), tokens):
    ax.imshow(tok.reshape(4, 4), cmap="gray", vmin=-1, vmax=1)
    ax.axis("off")
fig.suptitle("49 tokens of p = 4", fontsize=9)
plt.show()

# %% [markdown]
# ## 2. Where is each token? Fixed 2D sine-cosine positions
#
# Self-attention treats its input as a *set*: permute the tokens and the outputs are permuted the
# same way. The network would not know which patch sits where. DiT adds a fixed 2D sine-cosine
# embedding (half the channels encode the row, half the column, each with the transformer's 1D
# encoding). Without it the whole DiT is permutation-equivariant; with it, it is not:

# %%
cfg_small = dit.DiTConfig(resolution=8, patch=2, width=16, depth=2, heads=2, num_classes=3)


def perturbed(params, scale=0.1):  # move away from the zero init, so that every path is live
    return nn.tree_map(lambda a: a + scale * rng.standard_normal(a.shape).astype(a.dtype), params)


x8 = rng.standard_normal((1, 1, 8, 8))
perm = rng.permutation(cfg_small.tokens)
for use_pos in (False, True):
    cfg = dit.DiTConfig(**{**cfg_small.to_dict(), "use_pos_embed": use_pos})
    prm = perturbed(dit.init(np.random.default_rng(1), cfg, dtype=np.float64))
    tok = dit.patchify(x8, 2)
    out = dit.patchify(dit.apply(prm, x8, 3.0, np.array([1]), cfg), 2)
    out_perm = dit.patchify(dit.apply(prm, dit.unpatchify(tok[:, perm], 2, 1), 3.0, np.array([1]), cfg), 2)
    print(f"positions {'on ' if use_pos else 'off'}: max |f(Px) - P f(x)| = "
          f"{np.abs(out_perm - out[:, perm]).max():.1e}")
pos = dit.sincos_2d(128, 7)
fig, axes = plt.subplots(1, 3, figsize=(9, 2.6))
axes[0].imshow(pos.T, aspect="auto", cmap="RdBu")
axes[0].set(title="sincos_2d(128, 7): channel x token", xlabel="token")
sim = pos @ pos.T
for ax, k in zip(axes[1:], (0, 24)):
    ax.imshow(sim[k].reshape(7, 7), cmap="viridis")
    ax.set_title(f"similarity to token {k}")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 3. The block, and why adaLN-zero starts as the identity
#
# Each block is layer norm (no affine parameters of its own), multi-head self-attention, layer
# norm, MLP with GELU, each branch on a residual. **adaLN-zero** (their sec. 3.2) regresses six
# vectors per block from the summed timestep + class embedding $c$: a shift, a scale and a gate
# for each branch,
#
# $$x \leftarrow x + g_a \odot \mathrm{Attn}\big(\mathrm{LN}(x)(1 + s_a) + b_a\big), \qquad
#   x \leftarrow x + g_m \odot \mathrm{MLP}\big(\mathrm{LN}(x)(1 + s_m) + b_m\big),$$
#
# and the regression is initialised to zero, so every gate starts at 0 and every block is exactly
# the identity map; the final layer (adaptive norm + a zero linear) then makes the untrained DiT
# output exactly zero, like the U-Net's zero convolution. Checked here on the default model, and
# the block's gradients against finite differences in float64:

# %%
cfg = dit.DiTConfig()
params0 = dit.init(rng, cfg)
tok = rng.standard_normal((2, cfg.tokens, cfg.width)).astype(np.float32)
c = rng.standard_normal((2, cfg.width)).astype(np.float32)
identity = all(np.array_equal(dit._block(b, tok, c, None, cfg), tok) for b in params0["blocks"])
x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
out0 = dit.apply(params0, x, np.array([5.0, 900.0]), np.array([3, 10]), cfg)
print(cfg)
print(f"{nn.tree_size(params0) / 1e6:.2f}M parameters; every block is the identity at init: "
      f"{identity}; the model outputs zeros: {bool(np.all(out0 == 0))}")
blk = perturbed(dit.init(np.random.default_rng(2), cfg_small, dtype=np.float64))["blocks"][0]
tok64 = rng.standard_normal((2, cfg_small.tokens, 16))
c64 = rng.standard_normal((2, 16))
check_grads(lambda t, cc: dit._block(blk, t, cc, None, cfg_small), modes=["rev"], order=1)(
    tok64, c64)
print("check_grads passed for a DiT block (tokens and conditioning, float64)")

# %% [markdown]
# GELU and the modulated layer norm are fused primitives with written-out VJPs
# (`nn.gelu`, `nn.modulated_layer_norm`): traced op by op, each is ten or so memory-bound passes,
# and autograd's own gradient of `tanh` ($g/\cosh^2 x$) overflows to `inf` for $|x| > 44$ in
# float32 — harmless here, but it fills the log with warnings. The fused ones agree with the
# formulas to rounding:

# %%
z = rng.normal(size=(4, 6)) * 3
ref = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
print("max |nn.gelu - formula| =", np.abs(nn.gelu(z) - ref).max())
check_grads(nn.gelu, modes=["rev"], order=1)(z)
g32 = autograd.grad(lambda v: nn.gelu(v).sum())(np.array([-80.0, 0.0, 80.0], np.float32))
print("GELU'(-80, 0, 80) in float32:", g32, g32.dtype)

# %% [markdown]
# ## 4. Three ways to condition, and what they cost
#
# The paper's fig. 5 compares three ways to feed $t$ and $y$ in; here they are the
# `conditioning` switch:
#
# - `"in_context"`: $t$ and $y$ embeddings appended as two extra tokens (like ViT's `cls`);
# - `"cross_attention"`: the tokens attend to the two-token sequence $[t, y]$ in an extra
#   attention layer per block (as LDM conditions its U-Net, chapter 8);
# - `"adaln_zero"`: the regression above.
#
# The Gflops counter `dit.gflops` counts multiply-adds from the configuration (the formula is in
# its docstring, and `tests/test_dit.py` checks it against an instrumented forward pass). It
# reproduces the paper's table of all twelve ImageNet DiTs, and its statement that
# cross-attention costs about 15% more:

# %%
sizes = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
print("ImageNet-256 DiTs (latent 32x32x4), forward Gflops from the formula:")
for name, (w, d, h) in sizes.items():
    row = [dit.gflops(dit.DiTConfig(in_channels=4, resolution=32, patch=p, width=w, depth=d,
                                    heads=h, num_classes=1000)) for p in (8, 4, 2)]
    print(f"  DiT-{name:2s}  /8 {row[0]:7.2f}   /4 {row[1]:7.2f}   /2 {row[2]:7.2f}")
xl2 = dict(in_channels=4, resolution=32, patch=2, width=1152, depth=28, heads=16, num_classes=1000)
base = dit.gflops(dit.DiTConfig(**xl2))
for cond in dit.CONDITIONINGS:
    cfg_c = dit.DiTConfig(**{**xl2, "conditioning": cond})
    print(f"  XL/2 {cond:15s}: {dit.gflops(cfg_c):7.2f} Gflops ({dit.gflops(cfg_c) / base:.3f}x)")
print("ours, default (patch 4, width 128, depth 4):", f"{1e3 * dit.gflops(dit.DiTConfig()):.1f}",
      "Mflops per image")

# %% [markdown]
# (The paper's models also predict a variance, doubling the output channels: that adds
# $T D p^2 C$ multiply-adds to the final layer, 0.02 Gflops for XL/2, the only difference from
# their table.) Halving the patch multiplies every per-token layer by 4 and the attention
# scores ($T^2 D$) by 16: for XL the ratio is 4.08, for our 128-wide model 4.66, because at
# small width attention is a larger share.

# %% [markdown]
# ## 5. The shipped DiT
#
# Trained with the chapter 6 training loop (`images.train_mnist`: label dropout 10%, the
# command's default then; the shipped U-Net drops 50%; Adam with
# warm-up, clipping, warmed-up EMA) with one change: the noise-prediction loss is weighted by
# **Min-SNR-5** (Hang et al. 2023; chapter 5), `min(SNR, 5) / SNR` in the eps frame, which spends
# less of the gradient on the nearly clean steps. Same command, seed and budget otherwise, the
# unweighted $L_\text{simple}$ run drew worse samples (the README has both). The class embedding
# starts at $N(0, 1)$ rather than the paper's 0.02 scale: the chapter 6 lesson that a tiny start
# leaves a short run weakly class-conditioned.

# %%
apply, params, cfg, meta = images.load_model("../data/weights/dit_mnist.npz")
print("made by:", meta["command"])
print(f"steps {meta['steps']}, batch {meta['batch_size']}, seed {meta['seed']}, training time "
      f"{meta['train_seconds_this_run'] / 60:.1f} min on 2 cores; final loss "
      f"{meta['final_loss']:.4f}")
if FAST:  # a few steps from scratch, to show the loop runs from here too
    from minidiff import train

    tr_x, tr_y = mnist("train")
    state = train.init_state(dit.init(rng, cfg), seed=0)
    state, losses = images.train_mnist(dit, cfg, state, tr_x, tr_y, 3, batch_size=8,
                                         progress=False)
    print("3 training steps, losses", np.round(losses, 3))

n_per_class = 2 if FAST else 8
steps = 20 if FAST else 100
sample_labels = np.repeat(np.arange(10), n_per_class)
t0 = time.perf_counter()
guided = images.sample(apply, params, cfg, sample_labels, np.random.default_rng(1),
                         steps=steps, guidance=2.0)
print(f"{len(sample_labels)} samples, {steps} DDIM steps, guidance 2: "
      f"{time.perf_counter() - t0:.1f} s")
fig, ax = plt.subplots(figsize=(10, n_per_class))
plot.digits(ax, guided, n_per_class)  # one class per column
plt.show()
clf, _ = checkpoint.load("../data/weights/classifier_mnist.npz")
r = metrics.evaluate_samples(guided, sample_labels, clf, np.random.default_rng(2))
print(f"n = {r['n']} (FD is biased upwards at small n): FD-MNIST {r['fd']:.1f}, real-vs-real "
      f"{r['fd_real']:.1f}; class agreement {100 * r['agreement']:.0f}%")

# %% [markdown]
# The full protocol (1,000 samples, 100 per class, 100 DDIM steps, guidance 2) runs in
# `make test-slow`; the README records the measured numbers beside the U-Net's.
#
# **Where does the DiT lose to the U-Net?** The noise-prediction error at each step, on the same
# test digits and the same noise, for both shipped models. A patch-4 DiT predicts each 4x4 block
# of noise from one 128-wide token through one linear layer; the U-Net sees every pixel at full
# resolution through its skip connections.

# %%
sched = ddpm.schedule("linear")
u_apply, u_params, u_cfg, _ = images.load_model("../data/weights/unet_mnist.npz")
n_probe = 32 if FAST else 200
probe_x = digits[:n_probe].astype(np.float32)
probe_y = labels[:n_probe]
steps_probe = [0, 50, 150, 300, 500, 700, 900, 999]
errs = {"U-Net": [], "DiT": []}
noise_rng = np.random.default_rng(3)
for i in steps_probe:
    eps = noise_rng.standard_normal(probe_x.shape).astype(np.float32)
    xt = ddpm.q_sample(sched, probe_x, np.full(n_probe, i), eps).astype(np.float32)
    ti = np.full(n_probe, i, np.float32)
    errs["U-Net"].append(np.mean((u_apply(u_params, xt, ti, probe_y, u_cfg) - eps) ** 2))
    errs["DiT"].append(np.mean((apply(params, xt, ti, probe_y, cfg) - eps) ** 2))
print("step i:      " + " ".join(f"{i:6d}" for i in steps_probe))
for name, e in errs.items():
    print(f"{name:6s} eps MSE " + " ".join(f"{v:6.4f}" for v in e))

# %% [markdown]
# Measured: at the nearly clean steps the DiT's noise error is up to 3.3 times the U-Net's
# ($i = 0$: 0.714 against 0.218); the U-Net stays ahead to the middle of the chain, and from
# $i = 700$ to pure noise the DiT matches or beats it. Two causes: one
# linear layer per 4x4 patch draws pixel-level detail poorly (the faint block edges in the
# samples), and Min-SNR-5 deliberately gives those steps little weight — their error in $x_0$ is
# the noise error times $\sigma/\alpha$, which is tiny there. The shape and class of a digit are
# settled at higher noise, where the DiT holds its own.

# %% [markdown]
# ## 6. The scaling curve, in miniature
#
# `python -m minidiff sweep` trains one DiT per (patch, width) — 7x64, 7x128, 4x64, 4x128 and
# 2x64, depth 4, from 3.5 to 58 forward Mflops per image — for the same 1,500 steps at batch 32,
# samples 200 images from each (20 per class, 50 DDIM steps, guidance 2) and scores them. Three
# more models repeat 4x64 with cross-attention and in-context conditioning (the paper's fig. 5)
# and with Min-SNR-5 weighting (chapter 5). The shipped table was made by the command stored in
# it; the whole sweep takes about half an hour on 2 cores.

# %%
with open("../data/weights/dit_sweep.json") as fh:
    sweep = json.load(fh)
rows, smeta = sweep["rows"], sweep["meta"]
print("made by:", smeta["command"], f"({smeta['seconds'] / 60:.0f} min)")
print(f"{'patch':>5} {'width':>5} {'conditioning':>15} {'weighting':>9} {'params':>8} "
      f"{'Mflops':>7} {'train s':>7} {'loss':>6} {'FD':>6} {'agree':>6}")
for q in rows:
    print(f"{q['patch']:5d} {q['width']:5d} {q['conditioning']:>15} {q['weighting']:>9} "
          f"{q['params']:8d} {1e3 * q['gflops']:7.1f} {q['train_seconds']:7.0f} "
          f"{q['final_loss']:6.4f} {q['fd']:6.1f} {100 * q['agreement']:5.0f}%")
print(f"real-vs-real FD-MNIST at n = {smeta['n_eval']}: {rows[0]['fd_real']:.1f}")
main_rows = [q for q in rows if q["conditioning"] == "adaln_zero" and q["weighting"] == "none"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, key, label in ((axes[0], "final_loss", "training loss (last 100 steps)"),
                       (axes[1], "fd", "FD-MNIST, 200 samples")):
    for w, marker in ((64, "o"), (128, "s")):
        pts = sorted((q["gflops"], q[key], q["patch"]) for q in main_rows if q["width"] == w)
        ax.plot([1e3 * g for g, _, _ in pts], [v for _, v, _ in pts], marker=marker,
                label=f"width {w}")
        for g, v, p in pts:
            ax.annotate(f"/{p}", (1e3 * g, v), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    for q in rows:  # the ablations (Min-SNR's loss is another objective: FD panel only)
        if q["conditioning"] != "adaln_zero" or (q["weighting"] != "none" and key == "fd"):
            name = q["conditioning"] if q["conditioning"] != "adaln_zero" else q["weighting"]
            ax.scatter(1e3 * q["gflops"], q[key], marker="x", color="k")
            ax.annotate(name, (1e3 * q["gflops"], q[key]), fontsize=7,
                        textcoords="offset points", xytext=(4, -8))
    ax.set(xscale="log", xlabel="forward Mflops per image", ylabel=label)
    ax.set_xticks([3, 10, 30, 60], labels=["3", "10", "30", "60"])
    ax.minorticks_off()
axes[1].axhline(rows[0]["fd_real"], color="gray", ls=":", label="real vs real")
axes[1].legend(fontsize=8)
fig.suptitle(f"DiTs after {smeta['steps']} steps of batch {smeta['batch_size']}", fontsize=10)
plt.show()

# %% [markdown]
# What the table shows, read plainly:
#
# - **The loss carries the scaling trend.** At equal steps, more Gflops along either axis lowers
#   the training loss: at width 64, patch 7 → 4 → 2 gives 0.071 → 0.053 → 0.051; at width 128,
#   patch 7 → 4 gives 0.064 → 0.048; at fixed patch, width 64 → 128 lowers it too. Across the
#   two axes Gflops alone is not the whole story at this budget: 4x64 (11 Mflops) beats 7x128
#   (14 Mflops), and 2x64 (58) does not beat 4x128 (42) — the small patch gains most from 7 to 4,
#   little from 4 to 2 at width 64.
# - **The conditioning ablation comes out in the paper's order**: at equal steps adaLN-zero
#   reaches a lower loss than cross-attention, and cross-attention than in-context, and
#   cross-attention is the most expensive (+15% Gflops here as in the paper).
# - **FD does not resolve the models yet.** 1,500 steps at batch 32 (48,000 images) leave every
#   model far from digits: FD-MNIST around 300 to 480 against a real-vs-real 23 at n = 200, and
#   class agreement 11–26%. The shipped DiT needed 5,000 steps at batch 64 (320,000 images, 22
#   minutes) to draw recognisable digits; a sweep at that budget is several hours on 2 cores.
# - **Min-SNR-5** changes the objective, so its loss is not comparable in the loss column; its
#   samples are: FD 322 and 22% agreement against 351 and 16% for the same 4x64 model without it.
#   That hint is why the shipped DiT uses it (section 5).

# %% [markdown]
# ## Where this lives in the wild
#
# - The paper's code, `facebookresearch/DiT` (`models.py`: `PatchEmbed` from timm, `DiTBlock`
#   with `modulate(x, shift, scale)` and the gates, `FinalLayer`, `get_2d_sincos_pos_embed`,
#   `initialize_weights` zeroing `adaLN_modulation`).
# - diffusers: `DiTTransformer2DModel` and `PixArtTransformer2DModel` (PixArt-α keeps
#   cross-attention for text, chapter 8); SD3's and FLUX's MMDiT (chapter 10) keep adaLN-zero
#   modulation for the timestep.
#
# ## Checks

# %%
assert identity and np.all(out0 == 0)
assert np.allclose(nn.gelu(z), ref)
assert r["agreement"] >= (0.5 if FAST else 0.8)
assert len({(q["patch"], q["width"]) for q in rows}) >= 3
assert {q["patch"] for q in rows} == {7, 4, 2}
