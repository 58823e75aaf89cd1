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
# # Chapter 11 — SiT: one backbone, four design axes, and a diffusion coefficient chosen after training
#
# The seed article: "SiT keeps the DiT backbone wholesale but swaps the diffusion formulation for
# a flexible stochastic-interpolant/flow framework, then decouples four design axes (discrete vs.
# continuous time, prediction target, interpolant choice, and a deterministic vs. stochastic
# sampler) from the fixed network ... because the sampler's diffusion coefficient can be tuned
# separately from learning" (Ma et al. 2024; Albergo & Vanden-Eijnden 2023; Albergo, Boffi &
# Vanden-Eijnden 2023).
#
# Nothing in this chapter is a new network. Every axis is a choice among things the book already
# has: a Gaussian path `x_t = alpha_t x0 + sigma_t eps` (`process.py`), a prediction target and
# its conversions (`targets.py`), and a sampler. The chapter walks the axes one at a time on a
# fixed network, first on a 2D mixture where everything is exact, then on chapter 10's latent
# DiT.
#
# Code: `minidiff/interpolants.py` (formulations, conversions, the SDE family, the 2D walk),
# `process.GVP`, `minidiff/latent_flow.py` (the latent DiT, now with any formulation),
# `minidiff/tools/flow_eval.py walk` (the MNIST table). Proofs: `tests/test_interpolants.py`.

# %%
import json
import math
import os
import time

import autograd
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from minidiff import interpolants, latent_flow, plot, process, sde, targets
from minidiff.datasets import gmm8
from minidiff.images import SHIPPED, WEIGHTS_DIR
from minidiff.nn.memory import keep_freed_memory

FAST = os.environ.get("MINIDIFF_FAST") == "1"
keep_freed_memory()
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64
PATHS = interpolants.PATHS

# %% [markdown]
# ## 1. Three interpolants
#
# The convention (as in SiT's paper and all of minidiff): data at `t = 0`, noise at `t = 1`.
#
# | name | `alpha_t` | `sigma_t` | note |
# |---|---|---|---|
# | VP | `exp(-B(t)/2)`, `B = int beta` | `sqrt(1 - alpha²)` | the VP SDE's path (DDPM's chain in the limit); never quite pure noise: `alpha(1) = 0.0066` |
# | Linear | `1 - t` | `t` | chapter 10's rectified flow |
# | GVP | `cos(pi t / 2)` | `sin(pi t / 2)` | variance preserving like VP, and pure noise exactly at `t = 1` |
#
# Each path declares `alpha'` and `sigma'`; autograd differentiates `alpha_t x0 + sigma_t eps`
# in `t` and must find the velocity `alpha' x0 + sigma' eps` (the test does this at five times per
# path; here on a grid):

# %%
t_grid = np.linspace(0.0, 1.0, 201)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
x0_demo, eps_demo = rng.standard_normal((2, 4))
worst = {}
for name, path in PATHS.items():
    axes[0].plot(t_grid, path.alpha(t_grid), label=f"{name} alpha")
    axes[0].plot(t_grid, path.sigma(t_grid), "--", label=f"{name} sigma")
    inner = t_grid[2:-2]
    axes[1].plot(inner, np.log(path.snr(inner)), label=name)
    grad = autograd.jacobian(lambda tt, p=path: p.alpha(tt) * x0_demo + p.sigma(tt) * eps_demo)
    worst[name] = max(float(np.abs(grad(t) - targets.target(
        "velocity", x0_demo, eps_demo, *interpolants.coefficients(path, t))).max())
                      for t in inner[::10])
    axes[2].plot(inner, path.dalpha(inner) ** 2 + path.dsigma(inner) ** 2, label=name)
axes[0].set_title("alpha_t and sigma_t")
axes[1].set_title("log SNR")
axes[2].set_title("E|velocity|² for unit data: alpha'² + sigma'²")
axes[2].set_yscale("log")
for ax in axes:
    ax.set_xlabel("t")
    ax.legend(fontsize=7)
plt.show()
print("largest |autograd d/dt - (alpha' x0 + sigma' eps)|:",
      {k: f"{v:.1e}" for k, v in worst.items()})

# %% [markdown]
# The right panel is why the VP path and the velocity target make an awkward pair: the VP
# path's `sigma' = beta alpha² / (2 sigma)` grows like `1 / sqrt(t)` near the data, so the
# velocity a network must output there is large and almost all noise. Training stops at
# `t = 1e-3` on VP (score_sde's `eps`); the Linear and GVP velocities stay finite everywhere.

# %% [markdown]
# ## 2. Velocity, score and noise are one prediction
#
# A network trained on any of the three targets, at its optimum, outputs a posterior mean, and
# `targets.convert` turns each into the others given the path's `alpha, sigma, alpha', sigma'` at
# `t` (through `eps`; velocity <-> noise solves the 2 x 2 system `[x_t, v] = [[alpha, sigma],
# [alpha', sigma']] [x0, eps]`). SiT writes the score of a velocity model directly,
#
#     s = (lam v - x) / (sigma² - lam sigma' sigma),     lam = alpha / alpha',
#
# (their code's `get_score_from_velocity`). On the exact mixture the velocity converted to a
# score must be the exact score, by either formula:

# %%
mix = gmm8()
x_probe = rng.standard_normal((500, 2)) * 2.0
for name, path in PATHS.items():
    errs = []
    for t in (0.1, 0.4, 0.7, 0.95):
        v = process.oracle(mix, path, "velocity")(x_probe, t)
        s_true = process.oracle(mix, path, "score")(x_probe, t)
        s_conv = interpolants.convert(v, "velocity", "score", x_probe, path, t)
        s_sit = interpolants.sit_score_from_velocity(v, x_probe,
                                                     *interpolants.coefficients(path, t))
        errs.append(max(np.abs(s_conv - s_true).max(), np.abs(s_sit - s_true).max())
                    / np.abs(s_true).max())
    print(f"{name:>6}: worst relative error of the score from the velocity {max(errs):.1e}")

# %% [markdown]
# SiT's formula needs `alpha' != 0`, which fails at `t = 0` on the GVP path (`alpha =
# cos(pi t / 2)` is flat there); the conversion through `eps` has no such point, since
# `alpha sigma' - sigma alpha'` is `pi / 2` at every `t` on GVP and 1 on Linear.

# %% [markdown]
# ## 3. The SDE family: any `w_t`, the same marginals
#
# For any `w_t >= 0`, run from `t = 1` down to 0,
#
#     dX_t = [v(X_t, t) - (w_t / 2) s(X_t, t)] dt + sqrt(w_t) dW_bar_t
#
# has the path's marginal `p_t` at every `t`. In forward time `p_t` obeys `d_t p = -div(v p)`; the
# forward SDE with drift `v + (w/2) s` and noise `sqrt(w)` adds `-div((w/2) s p) + (w/2) lap p`,
# which is zero because `s p = grad p`. `w = 0` is the probability-flow ODE; `w = g²` (the path's
# own forward SDE) gives Anderson's reverse SDE of chapter 4, `f x - g² s` (a test holds the two
# samplers equal step for step). SiT's choices, in minidiff's time:
#
# - `w_t = sigma_t` (SiT's default),
# - `w_t = 1 - t`: largest at the data, where the score is stiffest,
# - `w_t = sin²(pi t)`: noise only in the middle,
# - `w_t = g_t²`: the score SDE's own; finite at `t = 1` only on VP (`beta(1) = 20`); on Linear it
#   is `2t / (1 - t)`, on GVP `pi tan(pi t / 2)`: a forward SDE needs infinite noise to erase the
#   signal in finite time, so on these paths it cannot start at pure noise.
#
# (SiT's code runs time the other way, noise at 0, and writes the noise as `sqrt(2 D)` with
# `D = w / 2` for its score-SDE choice and `D` set to the named form for the others.)
#
# With the exact mixture's fields, every `w_t` and the ODE carry exact draws of `p_0.98` to the
# same law at `t = 0.4`; the numbers are the two-sample Kolmogorov-Smirnov statistic against fresh
# draws of `p_0.4` on the first coordinate (`tests/test_interpolants.py` checks three projections,
# three times and three paths against 0.065):

# %%
path = PATHS["gvp"]
v_ex, s_ex = process.oracle(mix, path, "velocity"), process.oracle(mix, path, "score")
n_m = 1000 if FAST else 3000
ts = np.linspace(0.98, 0.4, 60 if FAST else 300)
start = mix.noised(float(path.alpha(0.98)), float(path.sigma(0.98))).sample(n_m, rng)
exact = mix.noised(float(path.alpha(0.4)), float(path.sigma(0.4))).sample(n_m, rng)
ends = {"ode": interpolants.sample_ode(v_ex, start, ts)}
for w in interpolants.DIFFUSIONS:
    ends[w] = interpolants.sample_sde(v_ex, s_ex, path, w, start, ts, rng, denoise=False)
fig, axes = plt.subplots(1, len(ends) + 1, figsize=(3 * (len(ends) + 1), 3))
plot.points(axes[0], exact, s=1)
axes[0].set_title("exact p_0.4")
for ax, (label, x) in zip(axes[1:], ends.items(), strict=True):
    plot.points(ax, x, s=1)
    ks = stats.ks_2samp(x[:, 0], exact[:, 0]).statistic
    ax.set_title(f"{label}: KS {ks:.3f}")
plt.show()
w_plot = np.linspace(0.01, 0.99, 99)
fig, ax = plt.subplots(figsize=(5, 3))
for w in interpolants.DIFFUSIONS:
    for name in ("vp", "gvp"):
        if w != "g2" and name == "vp":
            continue
        ax.plot(w_plot, [interpolants.diffusion(w, PATHS[name], t) for t in w_plot],
                label=f"{w}" + (f" ({name})" if w == "g2" else ""))
ax.set_ylim(0, 6)
ax.set_xlabel("t")
ax.set_title("w_t")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# The ODE's own discretisation: Heun against `scipy.integrate.solve_ivp` (RK45 at 1e-10) on the
# exact GVP flow from `t = 0.98` to `0.05`, 20 starting points. The error falls 2.3x, 2.5x and
# 3.3x per doubling here, approaching second order's 4x as the steps shrink (the eight narrow
# modes make the flow sharp near the data; `tests/test_interpolants.py` checks a log-log slope
# above 1.7 at 16-64 steps on a wider mixture).

# %%
x_ref = rng.standard_normal((20, 2))
ref, nfe = sde.solve_ode(v_ex, x_ref, 0.98, 0.05, rtol=1e-10, atol=1e-10)
for n in (8, 16, 32, 64):
    err = np.abs(interpolants.sample_ode(v_ex, x_ref, np.linspace(0.98, 0.05, n + 1)) - ref).max()
    print(f"Heun, {n:2d} steps ({2 * n - 1:3d} evaluations): max error {err:.1e}   "
          f"(solve_ivp used {nfe})")

# %% [markdown]
# The property has a price the figure hides: the SDE's drift contains `(w_t / 2) s`, and near the
# data the score's Jacobian is about `-1 / sigma_t²`. An Euler–Maruyama step of size `h` is a
# Langevin step of size `h w_t / 2`, stable only while it stays below about `sigma_t²`: at 40
# steps (`h = 0.025`) and `w_t = 1 - t`, that fails for `sigma_t` below about 0.1 — the last few
# steps overshoot. `sin²(pi t)` and `sigma_t` vanish at the data and do not have this problem.
#
# ## 4. The walk on 2D
#
# `interpolants.toy_walk`: each of SiT's training rows — discrete-time VP with the noise target
# (DDPM), continuous-time VP noise, VP velocity, Linear velocity, GVP velocity — trains the same
# MLP for the same steps on the eight-mode mixture, then samples the same noises with the ODE
# (Heun, 25 steps: 49 evaluations) and the SDE with each admissible `w_t` (Euler–Maruyama, 50
# steps). Yardsticks, exact where they can be: **each model's own likelihood** of held-out
# draws, by its probability-flow ODE with the exact divergence (`interpolants.model_nll`, in nats;
# a proper score whose minimum is the mixture's entropy, printed as the data's row; solved at
# tolerance 1e-3, within 0.005 nats of 1e-5 on the Linear model); and for each
# sampler, the samples' mean negative log-density under the true mixture (lower than the data's
# own value means too concentrated) and their sliced Wasserstein-2 distance to fresh draws (cells
# read NLL / SW2).

# %%
t0 = time.perf_counter()
walk2d = interpolants.toy_walk(mix, train_steps=100 if FAST else 1500, n=500 if FAST else 2000,
                               steps=10 if FAST else 50, n_nll=100 if FAST else 300,
                               nll_tol=1e-3)
print(f"({time.perf_counter() - t0:.0f} s)   data itself: entropy {walk2d['data']['model_nll']:.2f}"
      f" nats; its draws: NLL {walk2d['data']['nll']:.2f}, SW2 {walk2d['data']['sw2']:.3f}")
print(f"{'formulation':>27} {'model NLL':>9} "
      + " ".join(f"{s:>13}" for s in ("ode", *interpolants.DIFFUSIONS)))
table2d = {}
for row in walk2d["rows"]:
    table2d.setdefault(row["formulation"], {})[row["sampler"]] = row
for form, cells in table2d.items():
    print(f"{form:>27} {cells['ode']['model_nll']:9.3f} " + " ".join(
        f"{cells[s]['nll']:6.2f}/{cells[s]['sw2']:.3f}" if s in cells else f"{'-':>13}"
        for s in ("ode", *interpolants.DIFFUSIONS)))
fig, axes = plt.subplots(1, 5, figsize=(15, 3))
for ax, form in zip(axes, table2d, strict=True):
    plot.points(ax, walk2d["samples"][form, "ode"], s=1)
    ax.set_title(f"{form}, ODE", fontsize=8)
plt.show()

# %% [markdown]
# **Reading the 2D table** (full mode, one seed). By each model's own likelihood (the mixture's
# entropy is 1.65 nats): DDPM's discrete noise model 2.165, continuous 2.163 — discrete against
# continuous time changes nothing measurable, as a thousand grid times are as good as a
# continuum to a network smooth in `t` — then the velocity target on VP 1.854, Linear 1.764 and
# GVP 1.788: the order SiT reports, and the order the MNIST walk below finds. By the samples'
# sliced Wasserstein distance (the data's own draws: 0.094), the VP noise models sit at
# 0.11-0.14 whatever the sampler, the velocity models at 0.09-0.12 (but for `1 - t` on Linear).
# Among samplers, `1 - t` gives a sample NLL *below* the data's own on Linear (1.02 against 1.72)
# and GVP (1.55): its strong Langevin steps near the data pull the samples onto the modes'
# centres (the previous section's stability argument), which SW2 does not reward on Linear
# (0.157, the worst cell);
# `sin²` is the best sampler on Linear by SW2 (0.090 against the ODE's 0.096), `sigma_t` is
# slightly worse than the ODE everywhere at 50 steps.

# %% [markdown]
# ## 5. The walk on MNIST latents
#
# The same walk on chapter 10's DiT with cross-attention to the caption (width 96, depth 4,
# patch 1 on the 7 x 7 x 4 latents; 0.85M parameters): five models, one per training row, each
# 1,000 steps at batch 128 on two worker processes with uniform times, seed 0 — the same network,
# steps and batch, only the formulation differs. Each is sampled on 500 prompts of the
# validation digits (50 per class) with guidance 1.5 and the ODE (Heun, 20 steps: 39
# evaluations); then the SDE with each `w_t` (Euler–Maruyama, 40 steps) on the best velocity
# model on Linear/GVP, and `g2` on the VP models. The chosen model and sampler are then reported
# on 500 test prompts. Made by `python -m minidiff.tools.flow_eval walk` (commands in
# `data/weights/README.md`).

# %%
walk = json.loads((WEIGHTS_DIR / "sit_walk.json").read_text())
print(f"{'row':>22} {'formulation':>27} {'sampler':>7} {'FD':>6} {'agree':>6} {'train':>6}")
for key, r in walk["rows"].items():
    print(f"{key:>22} {r['formulation']:>27} {r['solver']:>7} {r['fd']:6.2f} "
          f"{r['agreement']:6.1%} {r['train_seconds'] / 60:5.1f}m")
te = walk["test"]
print(f"chosen on validation: {walk['chosen']}; on the test prompts FD {te['fd']:.2f}, "
      f"agreement {te['agreement']:.1%} (real test digits vs training digits at this n: FD "
      f"{te['fd_real']:.2f})")

# %% [markdown]
# **What the walk shows** (one seed per row; FD-MNIST of 500 samples against the validation
# digits, whose real-vs-real FD at this n is 9.1; agreement: the classifier names the prompt's
# digit):
#
# - **Discrete -> continuous time** (DDPM's 1,000 grid times against `t ~ U(0.001, 1)`, VP,
#   noise target): FD 94.2 -> 109.9, agreement 76.6% -> 73.8%. SiT reports a small gain from
#   continuous time; here both are poor and the difference is in the wrong direction, by an
#   amount a second seed could plausibly move (not measured). On 2D the two are
#   indistinguishable (model NLL within 0.01 nats).
# - **Noise -> velocity target** (continuous VP): FD 109.9 -> 27.0, agreement 73.8% -> 92.0%:
#   the largest single step, as in SiT. The two losses weigh the same errors differently: per
#   example, on this path the velocity loss is the noise loss times `beta(t)² / (4 sigma_t²)`
#   (`targets.x0_error_factor`), which grows toward the clean end and with `beta`; which part of
#   that reweighting buys the gain was not isolated here.
# - **VP -> Linear / GVP** (velocity): FD 27.0 -> 19.5 (Linear), 18.5 (GVP); agreement 92.0% ->
#   96.8%, 95.8%. SiT's direction again; GVP and Linear are within a point of each other, as in
#   SiT's table.
# - **ODE -> SDE** (on GVP, the best by the ODE's validation FD): `sigma_t` 19.3, `1 - t` 18.8,
#   `sin²` 18.7 against the ODE's 18.5, all at the same number of network calls: no gain at this
#   size and step count, where SiT finds the SDE ahead at 250 steps. Where the model is weaker,
#   the noise helps: the score SDE's own `w = g²` on the three VP models gives 94.2 -> 71.4,
#   109.9 -> 88.5 and 27.0 -> 23.0 — the reverse SDE's noise corrects part of the errors the ODE
#   carries to the end (Karras et al. 2022, sec. 4, make the same observation about
#   stochasticity).
#
# Chosen on validation: the GVP model with the ODE, shipped as `sit_mnist.npz`; on 500 test
# prompts it reaches FD 20.3 (real-vs-real 9.4) and names the digit 97.0% of the time. The
# budget: each model trained 7.4-9.7 minutes (1,000 steps, 128,000 latents seen, two processes),
# about 60% of chapter 10's `flow_mnist.npz`.

# %% [markdown]
# The shipped model of the walk (`sit_mnist.npz`), the same noise and prompts under the ODE and
# each SDE:

# %%
models = latent_flow.load_models(SHIPPED["sit"])
prompts = ["a bold seven leaning right", "a thin two", "an upright eight", "a wide zero"]
per_prompt = 4 if FAST else 6
z = np.random.default_rng(3).standard_normal((len(prompts) * per_prompt, 4, 7, 7))
labels = ["ode", "sigma", "1-t", "sin2"]
images = [latent_flow.sample(models, [p for p in prompts for _ in range(per_prompt)],
                             np.random.default_rng(4), steps=(10 if FAST else 20) * (1 + (s != "heun")),
                             guidance=walk["guidance"], solver=s, noise=z)
          for s in ("heun", "sigma", "1-t", "sin2")]
for label, im in zip(labels, images, strict=True):
    fig = plot.prompt_rows(im, [f"{label}: {p}" for p in prompts], per_prompt)
    plt.show()

# %% [markdown]
# ## Where this lives in the wild
#
# - SiT's code (`willisma/SiT`): `transport/path.py` (`ICPlan` = Linear, `GVPCPlan`, `VPCPlan`;
#   `get_score_from_velocity`; `compute_diffusion` with the forms "SBDM", "sigma", "linear",
#   "decreasing", "increasing-decreasing"), `transport/integrators.py` (Euler–Maruyama with a
#   noise-free last step; the ODE through `torchdiffeq`). Its time runs from noise (0) to data (1).
# - diffusers' `FlowMatchEulerDiscreteScheduler` samples Linear velocity models (SD3, FLUX) by
#   the ODE; `stochastic_sampling` there adds noise in the spirit of this chapter's SDEs.
#
# ## Exercises (course build)
#
# 11.1 `interpolants.sde_drift` (section 3); 11.2 `interpolants.sit_score_from_velocity`
# (section 2); 11.3 the Euler–Maruyama step of `interpolants.sample_sde` (section 3).
#
# ## Checks

# %%
assert max(worst.values()) < 1e-10
assert all(r["finite"] == 1.0 for r in walk2d["rows"])
assert math.isfinite(walk["test"]["fd"])
