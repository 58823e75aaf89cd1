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
# # Chapter 12 — Few-step sampling: solvers against evaluations, progressive distillation, consistency models
#
# The seed article: "distillation ... collapse[s] sampling to 1-4 steps, where training-free
# samplers still need 10+. Latent Consistency Models predict the PF-ODE solution in latent space
# for 2-4 steps; SDXL-Turbo uses adversarial+score distillation for a single step; SDXL-Lightning
# uses progressive adversarial distillation." This chapter measures the first two claims on this
# book's models, the latent consistency model included (section 4); the adversarial losses of
# SDXL-Turbo and SDXL-Lightning are left out.
#
# Every sampler so far solves the probability-flow ODE of a score network; its cost is the number
# of network evaluations (NFE). There are two ways to spend fewer:
#
# 1. **Better solvers** of the same ODE, with the same network (training-free): higher order,
#    multistep, a better grid of noise levels.
# 2. **A new network** trained to take big steps: progressive distillation (Salimans & Ho 2022)
#    halves a teacher's steps round by round; a consistency model (Song et al. 2023) learns the
#    ODE's endpoint from any point of a trajectory, so one evaluation can sample.
#
# Both work in the sigma frame of chapter 5 (`x = x0 + sigma eps`, the ODE `dx/dsigma = (x -
# D(x, sigma)) / sigma`), where any model of the book is a denoiser `D`.
#
# Code: `minidiff/distill.py` (the mathematics; the 2D experiments), `minidiff/distill_mnist.py`
# (the shipped U-Net as a teacher; the students), `minidiff/distill_latent.py` (the latent
# consistency model), `minidiff/samplers.py` (the solvers and grids), `python -m
# minidiff.tools.few_step` and `python -m minidiff.tools.lcm_eval` (the MNIST tables). Proofs: `tests/test_distill.py`,
# `tests/test_samplers.py`.

# %%
import json
import os

import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

from minidiff import (
    datasets,
    distill,
    distill_latent,
    distill_mnist,
    interpolants,
    latent,
    plot,
    samplers,
)
from minidiff.images import SHIPPED, WEIGHTS_DIR
from minidiff.nn.memory import keep_freed_memory

FAST = os.environ.get("MINIDIFF_FAST") == "1"
keep_freed_memory()
rng = np.random.default_rng(0)
plt.rcParams["figure.dpi"] = 64
mix = datasets.gmm8()
D_exact = distill.mixture_denoiser(mix)  # E[x0 | x] in the sigma frame, closed form
SMIN, SMAX = 0.002, 20.0

# %% [markdown]
# ## 1. Training-free solvers against NFE
#
# With the exact denoiser of the eight-mode mixture, every solver's error is measurable: the
# reference is the ODE solved by `scipy.integrate.solve_ivp` (tolerance 1e-8) from the same
# noise down to `sigma_min`, then denoised (the last step of every solver here lands on `sigma =
# 0` by returning `D`). `distill.solver_levels` gives each solver the grid on which it spends at
# most `nfe` evaluations (Heun's last step is Euler, so `s` steps cost `2s - 1`). DDIM is Euler
# in the sigma frame (chapter 5 checks it to 1e-13), so it appears as `ddim`.

# %%
n_pts = 300 if FAST else 1000
x_T = SMAX * rng.standard_normal((n_pts, 2))
ode = solve_ivp(lambda s, y: ((y.reshape(-1, 2) - D_exact(y.reshape(-1, 2), s)) / s).ravel(),
                (SMAX, SMIN), x_T.ravel(), rtol=1e-8, atol=1e-8)
x_ode = D_exact(ode.y[:, -1].reshape(-1, 2), SMIN)
nfes = [4, 6, 8, 10, 15, 20, 50] if not FAST else [4, 8, 20]
errors = {}
for solver in distill.SOLVERS:
    for grid in distill.GRIDS:
        for nfe in nfes:
            sigmas, used = distill.solver_levels(solver, nfe, grid, SMIN, SMAX)
            x = distill.solve(D_exact, solver, sigmas, x_T)
            errors[solver, grid, used] = float(np.sqrt(np.mean(np.sum((x - x_ode) ** 2, 1))))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, grid in zip(axes, distill.GRIDS, strict=True):
    for k, solver in enumerate(distill.SOLVERS):
        pts = sorted((n, e) for (s, g, n), e in errors.items() if s == solver and g == grid)
        ax.loglog(*zip(*pts, strict=True), "o-", color=f"C{k}", label=solver)
    ax.set_title(f"{grid} grid: RMS distance to the exact ODE end")
    ax.set_xlabel("network evaluations")
axes[0].legend()
plt.show()
print("RMS distance at 8 and 20 evaluations:")
for (s, g, n), e in sorted(errors.items()):
    if n in (7, 8, 19, 20):
        print(f"  {s:>6} {g:>7} NFE {n:>2}: {e:.4f}")

# %% [markdown]
# What the plot shows (full mode): at 20 evaluations the multistep exponential integrators
# (DPM-Solver++ 2M and 3M) land 0.017-0.024 from the exact end where DDIM lands 0.07-0.09. At 8
# evaluations nothing is good and the higher orders are no safer: 3M on the Karras grid lands
# 0.77 away against DDIM's 0.21. A multistep method extrapolates from past denoiser outputs, and
# with steps this large (a handful of levels spanning `sigma` from 20 to 0.002) the extrapolation
# overshoots; on the Karras grid, whose steps in `log sigma` vary by a factor of ten along the
# grid, more so than on the lambda grid, whose steps are equal (3M there: 0.16). The third order
# of 3M (proved in `tests/test_samplers.py`: log-log slope -3.3 as the steps shrink) shows only
# once the steps are small. Heun's two evaluations a step do not pay at these budgets (0.09 at 19
# against DDIM's 0.07 at 20, both on Karras).

# %% [markdown]
# **On MNIST** (the shipped chapter 6 U-Net with guidance 2; 1,000 images, 100 per class, the
# same noise for every point; FD-MNIST against the held-out training digits, which is where
# choices are read; `python -m minidiff.tools.few_step solvers`). The reference is the project's
# standard protocol, 100 DDIM steps; the dashed line is 10% above its FD.

# %%
table = json.loads((WEIGHTS_DIR / "few_step.json").read_text())
sol = table["solvers"]["points"]
ref = sol["reference"]["validation"]["fd"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, grid in zip(axes, distill.GRIDS, strict=True):
    for k, solver in enumerate(distill.SOLVERS):
        pts = sorted((r["nfe"], r["validation"]["fd"]) for r in sol.values()
                     if r.get("grid") == grid and r["solver"] == solver)
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=f"C{k}", label=solver)
    ax.axhline(1.1 * ref, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_title(f"MNIST, {grid} grid")
    ax.set_xlabel("network evaluations (each: conditional + unconditional)")
axes[0].set_ylabel("FD-MNIST (validation digits)")
axes[0].legend()
plt.show()
print(f"reference (DDIM, 100 steps): FD {ref:.2f}, agreement "
      f"{sol['reference']['validation']['agreement']:.1%}")
for name, need in table["solvers"]["within_10_percent"].items():
    print(f"  {name:>14}: {need}")

# %% [markdown]
# With guidance 2 and the clipped denoiser, the MNIST picture is not the 2D one. At 4-8
# evaluations DDIM holds up best: its one-step-at-a-time form cannot overshoot, and the clip
# repairs much of what a large step breaks. 3M on the Karras grid is unusable below ten
# evaluations, and Heun below seven (its steps are twice as long for the same budget). The first
# to come within 10% of the 100-step reference is DPM-Solver++(3M) on the lambda grid at 10
# evaluations, then 3M on Karras at 15 (once its steps are small enough, the most accurate: FD
# 11.0 at 20); DDIM and 2M on Karras need 20, 2M on lambda 50 (it misses at 20 by 0.01), Heun
# 49 on either grid. The table measures NFE 4-20 for every pair and 50 for five of them.
# These are the NFE the distilled students of the next sections are measured against.

# %% [markdown]
# ## 2. Progressive distillation
#
# A student learns to take in one DDIM step what its teacher takes in two (Salimans & Ho 2022,
# Algorithm 2). From `x` at level `sigma`, the teacher steps to `sigma_mid` and on to
# `sigma_next`; the student's target is the data prediction `x_tilde` whose single DDIM step
# lands exactly there (`distill.progressive_target`, exercise 12.1). With the exact teacher the
# identity holds to rounding:

# %%
lv = np.array([8.0, 2.5, 0.7])
x = rng.standard_normal((500, 2)) * lv[0]
x_tilde = distill.progressive_target(D_exact, x, lv[0], lv[1], lv[2])
two = distill.ddim_step(D_exact(x, lv[0]), x, 1.0, lv[0], 1.0, lv[1])
two = distill.ddim_step(D_exact(two, lv[1]), two, 1.0, lv[1], 1.0, lv[2])
one = distill.ddim_step(x_tilde, x, 1.0, lv[0], 1.0, lv[2])
print(f"one student step with x_tilde against two teacher steps: max |difference| "
      f"{np.abs(one - two).max():.1e}; x_tilde differs from the teacher's own D by up to "
      f"{np.abs(x_tilde - D_exact(x, lv[0])).max():.2f}")

# %% [markdown]
# Rounds on the mixture: the exact teacher's 16-step DDIM (Karras grid, `sigma` from 20 to
# 0.002) is distilled into 8 steps, that student into 4, and so on to 1 (`distill.
# fit_toy_progressive`; each student an EDM-preconditioned MLP, the loss weighted by
# `max(SNR, 1)`, Salimans & Ho's "truncated SNR"). Against each, the exact teacher's DDIM on
# the same levels:

# %%
base = 8 if FAST else 16
D_student, students = distill.fit_toy_progressive(mix, base=base, final=1,
                                                  steps=60 if FAST else 300)
z = rng.standard_normal((2000, 2))
fig, axes = plt.subplots(2, len(students), figsize=(2.6 * len(students), 5.4))
pd_rows = []
for col, (n, (p, levels)) in enumerate(students.items()):
    xs = samplers.euler(lambda x, s, p=p: D_student(p, x, s), levels[0] * z, levels)
    xt = samplers.euler(D_exact, levels[0] * z, levels)
    ms, mt = (interpolants.sample_metrics(v, mix, rng) for v in (xs, xt))
    pd_rows.append((n, ms["sw2"], mt["sw2"]))
    for row, (v, who) in enumerate(((xt, "teacher DDIM"), (xs, "student"))):
        plot.points(axes[row, col], v, lim=3.2, s=1)
        axes[row, col].set_title(f"{who}, {n} step{'s' * (n > 1)}", fontsize=9)
plt.tight_layout()
plt.show()
sw_data = interpolants.sample_metrics(mix.sample(2000, rng), mix, rng)["sw2"]
for n, s_sw, t_sw in pd_rows:
    print(f"{n:>2} steps: sliced W2 to the data, student {s_sw:.3f}, teacher's DDIM {t_sw:.3f} "
          f"(two draws of the data: {sw_data:.3f})")

# %% [markdown]
# The teacher's DDIM falls apart below 8 steps (one step lands everything on the mixture's
# mean); each student keeps the modes, down to a single step, because it was trained to land
# where its teacher's two steps land, not to follow the local slope.
#
# **On MNIST** (`distill_mnist.train_progressive`): the shipped U-Net with guidance 2 is the
# teacher. First a v-predicting student of the same shape, started from the teacher's weights,
# regresses the guided teacher's `x0` at the 8 levels of a Karras grid: guidance folded into one
# network, one evaluation per step instead of two (the first stage of Meng et al. 2023). Then
# rounds 8 -> 4 -> 2 -> 1, each student started from its teacher. The FD of each student beside
# the teacher's guided DDIM on the same levels:

# %%
stu = table["students"]["points"]
print(f"{'model':>26} {'NFE':>3} {'FD (valid.)':>11} {'agree':>6} {'FD (test)':>9} {'RMS to ref':>10}")
for name, r in stu.items():
    v, t = r["validation"], r["test"]
    print(f"{name:>26} {r['nfe']:>3} {v['fd']:11.2f} {v['agreement']:6.1%} {t['fd']:9.2f} "
          f"{r['rms_to_reference']:10.3f}")
print(f"teacher, DDIM 100 steps: FD {ref:.2f} (validation), "
      f"{sol['reference']['test']['fd']:.2f} (test); real-vs-real "
      f"{sol['reference']['validation']['fd_real']:.2f}")

# %% [markdown]
# Read across a row pair (`pd_n` against `teacher_pd_n`, the same levels): the students barely
# lose anything as their steps halve (FD 16.7, 16.8, 18.4 at 4, 2 and 1 steps) where the
# teacher's DDIM collapses (57.8, 82.3, 538). Each round only has to learn what two of its
# teacher's steps do. The target for the best 4-step model (within 1.5x the teacher's 11.6, at
# least 95% of digits as asked) is met by the 4-step progressive student (1.44x on validation,
# 99.1%) and by the consistency model below (1.15x, 97.6%).
#
# What limits the progressive students: their FD floor of about 16 is set before any halving.
# The first stage (a guided eps network turned into a v network in 200 steps) already sits at
# 16.2 with 8 steps, above the 100-step teacher; each round then adds almost nothing. A longer
# first stage is the first thing to try. Their agreement (99%) is above the teacher's (97.8%)
# while their FD is worse: a student regressing onto its teacher's average step commits to the
# class and loses some of the spread within it.

# %% [markdown]
# ## 3. Consistency models
#
# A consistency model learns `f(x, sigma)`: the end, at `sigma_min`, of the ODE trajectory
# through `x` at `sigma` (Song et al. 2023). The boundary condition `f(x, sigma_min) = x` is built
# into the parametrisation, `f = c_skip x + c_out F` with `c_skip(sigma_min) = 1` and
# `c_out(sigma_min) = 0` (`distill.consistency_scalings`, exercise 12.2), so it holds for any
# weights. Distillation trains it on adjacent levels of a grid: from `x` at `sigma_n`, one Heun
# step of the teacher's ODE gives `x_hat` at `sigma_{n+1}`, and `f(x, sigma_n)` is pulled towards
# a slowly moving copy of itself (an EMA, the "target network") at `(x_hat, sigma_{n+1})`
# (`distill.consistency_batch`, exercise 12.3). Consistency at every adjacent pair and the
# boundary at the bottom make `f` the endpoint everywhere.

# %%
cd_steps = 300 if FAST else 2000
f_cd, p_cd, losses_cd = distill.fit_toy_consistency(mix, steps=cd_steps, sigma_max=SMAX)
d_cd = np.linalg.norm(f_cd(p_cd, x_T, SMAX) - x_ode, axis=1)
d_one = np.linalg.norm(D_exact(x_T, SMAX) - x_ode, axis=1)  # the teacher's one-step guess
print(f"consistency distillation, {cd_steps} steps: one evaluation lands {d_cd.mean():.3f} from "
      f"the exact ODE's end on average (median {np.median(d_cd):.3f}; the modes' std is 0.2); "
      f"the teacher's own one-step guess D(x, {SMAX:g}) lands {d_one.mean():.2f} away")

# %%
fig, ax = plt.subplots(figsize=(5, 5))
plot.density(ax, mix.log_prob, lim=3.2)
few = x_T[:12]
fine = samplers.karras_sigmas(60, SMIN, SMAX)
path = [few]
for s, s_next in zip(fine[:-2], fine[1:-1], strict=True):
    path.append(distill.heun_step(D_exact, path[-1], s, s_next))
path = np.stack(path)  # (levels, 12, 2)
x_mid = path[np.searchsorted(-fine[:-1], -2.0)]  # the trajectories at sigma ≈ 2
jump_top, jump_mid = f_cd(p_cd, few, SMAX), f_cd(p_cd, x_mid, 2.0)
for k in range(len(few)):
    ax.plot(*np.clip(path[:, k], -3.2, 3.2).T, color="C0", lw=0.8, alpha=0.7)
ax.scatter(*jump_top.T, color="C3", s=25, label="f(x, 20): one jump from the noise")
ax.scatter(*jump_mid.T, color="C2", s=12, marker="x", label="f(x, 2): from mid-trajectory")
ax.scatter(*path[-1].T, facecolors="none", edgecolors="k", s=45, label="the ODE's end")
ax.legend(loc="lower left", fontsize=7)
ax.set_title("teacher's ODE (lines, clipped to the view) and the consistency model's jumps",
             fontsize=9)
plt.show()

# %% [markdown]
# Multistep sampling (Song et al. 2023, Algorithm 1; `distill.multistep_sample`, exercise 12.4):
# jump to the end, add noise back up to a lower level `tau`, jump again. Each extra evaluation
# trades the first jump's error for fresh noise at a level the model handles better.
#
# **Consistency training** needs no teacher: the ODE step is replaced by the same data point
# with the same noise at the next level down (`distill.consistency_training_batch`), which is the
# teacher's step in expectation. Song & Dhariwal (2023) made it work: a grid that doubles in size
# during training (`distill.ict_levels`, 10 to 1280 levels), lognormal sampling of the levels,
# weights `1 / (sigma_n - sigma_{n+1})`, the pseudo-Huber distance and no EMA in the target.

# %%
f_ct, p_ct, _ = distill.fit_toy_consistency(mix, steps=200 if FAST else cd_steps, teacher=None,
                                            sigma_max=80.0)
schedules = {1: [], 2: [2.0], 4: [5.0, 1.0, 0.3]}
rows = []
fig, axes = plt.subplots(2, 3, figsize=(8, 5.4))
for row, (name, f, p, smax) in enumerate([("distilled", f_cd, p_cd, SMAX),
                                          ("trained", f_ct, p_ct, 80.0)]):
    for col, (k, taus) in enumerate(schedules.items()):
        xs = distill.multistep_sample(lambda x, s, f=f, p=p: f(p, x, s), smax * z, smax, taus,
                                      np.random.default_rng(k))
        rows.append((name, k, interpolants.sample_metrics(xs, mix, rng)["sw2"]))
        plot.points(axes[row, col], xs, lim=3.2, s=1)
        axes[row, col].set_title(f"CM {name}, {k} evaluation{'s' * (k > 1)}", fontsize=9)
plt.tight_layout()
plt.show()
for name, k, sw in rows:
    print(f"{name:>9}, {k} evaluations: sliced W2 {sw:.3f} (data vs data {sw_data:.3f})")

# %% [markdown]
# At the same number of training steps, consistency training lands further from the data than
# distillation in one evaluation (sliced W2 0.39 against 0.11 in full mode): it learns the ODE
# from single noisy pairs whose expectation is the step, so its gradient is noisier. A second
# evaluation helps the trained model (0.17); the distilled one is best in one, and its extra
# jumps re-noise to levels where it is less accurate (0.12 in two, 0.22 in four).
#
# **On MNIST** (`distill_mnist.train_consistency`): the student starts from the guided v-student
# of section 2's first stage and is written `f = c_skip x + c_out D` (`distill.
# consistency_from_denoiser`, the form of Luo et al. 2023, whose network predicts `x0`: far from
# `sigma_min`, `f` starts as the denoiser). The teacher is the shipped U-Net with guidance 2,
# one Heun step between adjacent levels of an 18-level Karras grid from `sigma / alpha = 157`
# to `0.01`. The rows `cd_*` of the table above; the values of `tau` were chosen on the
# validation digits.

# %% [markdown]
# The consistency model (rows `cd_*`) trained 400 steps from the same start: one evaluation gives
# FD 14.0, better than any progressive student; two and four evaluations help only when the
# re-noising levels are low (`tau = 0.8`: 13.4; `2, 0.8, 0.3`: 13.3; with `tau = 5` first, 19.3
# and 17.5). Re-noising to a high level throws away the first jump's class and shape, and this
# short-trained model is weakest there.
#
# The shipped students from the same noise (`pd4_mnist.npz`, `pd2_mnist.npz`, `cm_mnist.npz`):

# %%
labels = np.repeat(np.arange(10), 2 if FAST else 4)
noise = np.random.default_rng(7).standard_normal((len(labels), 1, 28, 28)).astype(np.float32)
shown = [(f"progressive, {n} steps", SHIPPED[f"pd{n}"], ()) for n in (4, 2)]
best = table["students"]["chosen_taus"]
shown += [(f"consistency, {len(t) + 1} evaluation(s)", SHIPPED["cm"], tuple(t))
          for t in ([], best["2"], best["4"])]
fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 0.8 * len(labels) // 10 + 1))
for ax, (title, path_, taus) in zip(axes, shown, strict=True):
    x = distill_mnist.sample_student(path_, labels, noise, taus, np.random.default_rng(8))
    plot.digits(ax, x, len(labels) // 10, title)
plt.show()

# %% [markdown]
# ## 4. In latent space: a latent consistency model
#
# Luo et al. (2023) distil Stable Diffusion into a consistency model of its *latents*, with two
# changes to section 3's recipe. The guidance scale `w` becomes an input: the teacher's ODE is
# the guided one, `eps_u + w (eps_c - eps_u)`, so its solution depends on the caption and on `w`,
# and one network learns it for every `w` in a range (their augmented probability-flow ODE).
# The student then needs one network call per evaluation where the guided teacher needs two.
# And the teacher's step skips: a coarse grid of levels and a good solver in place of every
# step of the chain.
#
# Here the teacher is chapter 8's latent model (captions by cross-attention, 7 x 7 x 4 latents).
# The student is the same U-Net with `UNetConfig(guidance_embedding=True)`: `1000 w` gets the
# time's sinusoidal embedding and a linear map initialised at zero, so the student starts as
# its teacher (a test checks this exactly). `distill_latent.train_lcm` runs two stages: a
# v-student regresses the guided teacher's `x0` at a random `w` in `[1, 3]`, then consistency
# distillation from there, with the teacher's Heun step between adjacent levels of section 3's
# 18-level grid. Chapter 8's protocol scores it: 1,000 held-out prompts, FD-MNIST, whether the
# digit is the one named, and whether each attribute the prompt asks for lands in its bin.

# %%
lcm_table = json.loads((WEIGHTS_DIR / "lcm_eval.json").read_text())
rows = lcm_table["rows"]["validation"]
print(f"{'':>22}" + "".join(f"   w = {w:<21}" for w in rows))
names = {"teacher_50": "teacher, 50 DDIM steps", "teacher_4": "teacher, 4 DDIM steps",
         "teacher_2": "teacher, 2 DDIM steps", "lcm_1": "LCM, 1 evaluation"}
taus = lcm_table["chosen_taus"]
for k in ("2", "4"):
    names[f"lcm_{k}_tau{'-'.join(f'{t:g}' for t in taus[k])}"] = f"LCM, {k} evaluations"
for key, label in names.items():
    cells = []
    for w in rows:
        r = rows[w][key]
        width = r["attributes"]["width"]["hit"]
        cells.append(f"FD {r['fd']:5.1f} {100 * r['agreement']:5.1f}% width {width:.2f}")
    print(f"{label:>22}  " + "   ".join(cells))

# %% [markdown]
# (Network calls: the teacher's DDIM costs two per step, the consistency model one per
# evaluation. "width": the fraction of prompts that ask for a width whose digit lands in that
# bin; the model asked for the class alone scores 0.21.)
#
# One network call of the consistency model at `w = 2` (FD 12.6) comes close to the teacher's
# hundred (11.4) and beats its eight (4 guided DDIM steps, 17.1); at `w = 3` it beats even the
# 50-step teacher, whose FD grows with `w` as guidance pushes the classes apart (chapter 7). The
# named digit is right 97-98% of the time. What the jump loses is the weakest attribute: width
# lands in the asked bin 0.58-0.67 of the time where the teacher reaches 0.84-0.90 (thickness
# and slant hold at 0.87-0.95). The teacher's own 2-step DDIM loses thickness instead.
#
# Unlike the pixel model, this one is best in a single evaluation: re-noising and jumping again
# costs FD (two evaluations, the best schedule chosen on validation: 14.2 at `w = 2`; four:
# 17.3) and width adherence. The model card has the test prompts, and what a second run of
# training changed.

# %%
prompts = ["a bold seven", "a thin two leaning left", "a wide zero", "a narrow one",
           "an eight leaning right"] * (1 if FAST else 2)
z_lat = np.random.default_rng(3).standard_normal((len(prompts), 4, 7, 7)).astype(np.float32)
ldm_models = latent.load_models(SHIPPED["ldm"])
grid_rows = [("teacher, 50 steps", latent.sample(ldm_models, prompts, np.random.default_rng(3),
                                                  steps=10 if FAST else 50, guidance=2.0))]
for k, t in ((1, []), (2, taus["2"]), (4, taus["4"])):
    grid_rows.append((f"LCM, {k} evaluation{'s' * (k > 1)}", distill_latent.sample_lcm(
        SHIPPED["lcm"], prompts, 2.0, z_lat, tuple(t), np.random.default_rng(4))))
fig, axes = plt.subplots(len(grid_rows), 1, figsize=(1.1 * len(prompts), 1.4 * len(grid_rows)))
for ax, (title, x) in zip(axes, grid_rows, strict=True):
    ax.imshow(np.concatenate(list(x[:, 0]), axis=1), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()
print(" | ".join(prompts[:5]))

# %% [markdown]
# ## Where this lives in the wild
#
# - k-diffusion (`crowsonkb/k-diffusion`, `sampling.py`): `sample_dpmpp_2m`, `sample_dpmpp_3m_sde`
#   (with `eta = 0` the deterministic 3M; see `samplers.dpm_solver_pp_3m` for its second
#   difference's weight), `get_sigmas_karras`, `get_sigmas_exponential` (this chapter's lambda grid).
# - diffusers: `DPMSolverMultistepScheduler` (`solver_order=3`), `UniPCMultistepScheduler`,
#   `LCMScheduler`; consistency models' own code (`openai/consistency_models`) has
#   `get_scalings_for_boundary_condition` and the multistep sampler.
# - Latent consistency models: diffusers' `UNet2DConditionModel(time_cond_proj_dim=...)` is the
#   `w` input (`UNetConfig(guidance_embedding=True)` here), and its LCM distillation example
#   script draws `w` per example and embeds `1000 w` the same way; `LCMScheduler` is
#   `multistep_sample` on the DDPM chain.
#
# ## Exercises (course build)
#
# 12.1 `distill.distillation_target` (section 2); 12.2 `distill.consistency_scalings` (section
# 3); 12.3 the consistency distillation pair in `distill.consistency_batch` (section 3); 12.4
# `distill.multistep_sample` (section 3).
#
# ## Checks

# %%
assert np.abs(one - two).max() < 1e-10
assert d_cd.mean() < 0.4 * d_one.mean()
assert all(np.isfinite(sw) for _, sw, _ in pd_rows)
assert all(np.isfinite(x).all() and x.shape == (len(prompts), 1, 28, 28) for _, x in grid_rows)
