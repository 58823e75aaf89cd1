"""``make demo``: one function per chapter, each running the chapter's headline experiment.

Each writes its figures under ``out`` and prints what it measured; ``fast`` (``--fast`` or
``MINIDIFF_FAST=1``) shrinks every run for CI. Chapters 6 and 9 sample the shipped weights
(``data/weights/``) rather than train. ``run`` calls them in order.
"""

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures go to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import datasets, plot, score, train  # noqa: E402
from .images import SHIPPED  # noqa: E402
from .models import mlp  # noqa: E402


def demo_chapter1(out, fast, seed=0):
    """Langevin's wrong weights and the annealed fix; an NCSN trained on gmm8."""
    rng = np.random.default_rng(seed)
    print("Chapter 1 — scores and Langevin dynamics")

    # (a) Two separated modes with weights 0.2 / 0.8: exact score, plain vs annealed Langevin.
    gm = datasets.unequal_modes()
    n = 1000 if fast else 4000
    plain = score.langevin(gm.score, rng.uniform(-8, 8, (n, 2)), 0.1, 1000, rng)
    sigmas = score.geometric_sigmas(10.0, 0.1, 10)
    annealed = score.annealed_langevin(lambda x, s: gm.noised(1.0, s).score(x), sigmas,
                                       rng.uniform(-8, 8, (n, 2)), rng, step_lr=5e-3)
    f_plain = score.mode_fractions(plain, gm.means)[1]
    f_annealed = score.mode_fractions(annealed, gm.means)[1]
    print(f"  weight of the heavy mode (true 0.800): plain Langevin {f_plain:.3f}, "
          f"annealed Langevin {f_annealed:.3f}   ({n} chains, exact scores)")
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, x, title in zip(axes, [gm.sample(n, rng), plain, annealed],
                            ["data", f"Langevin: {f_plain:.2f} heavy",
                             f"annealed: {f_annealed:.2f} heavy"], strict=True):
        plot.points(ax, x, lim=8)
        ax.set_title(title)
    plot.save(fig, out / "01_langevin_weights.png")

    # (b) An NCSN (noise-conditional score network) trained by denoising score matching on gmm8.
    gm8 = datasets.gmm8()
    sigmas = score.geometric_sigmas(4.0, 0.05, 10)
    steps = 300 if fast else 3000
    params = mlp.init(rng, hidden=128, depth=3, emb_dim=32)
    state = train.init_state(params, seed)
    batch_fn = score.ncsn_batches(gm8.sample(20_000, rng), sigmas, batch_size=256)
    t0 = time.perf_counter()
    state, losses = train.fit(score.ncsn_loss(mlp.apply), state, batch_fn, steps, lr=2e-3,
                              warmup=100, desc="NCSN on gmm8")
    seconds = time.perf_counter() - t0
    learned = score.ncsn_score(mlp.apply, state.ema)
    errors = []
    for s in sigmas[::3]:
        noisy = gm8.noised(1.0, s)
        errors.append(score.relative_score_error(learned, noisy.score, noisy.sample(4000, rng), s))
    print(f"  NCSN: {steps} steps in {seconds:.1f} s, final loss {losses[-100:].mean():.3f}")
    print("  relative score error (EMA) at sigma = "
          + ", ".join(f"{s:.2f}: {e:.3f}" for s, e in zip(sigmas[::3], errors, strict=True)))
    samples = score.annealed_langevin(learned, sigmas, rng.uniform(-4, 4, (2000, 2)), rng,
                                      step_lr=1e-4, n_steps_each=100)
    fractions = score.mode_fractions(samples, gm8.means)
    print(f"  annealed Langevin with the learned score: mode weights {np.round(fractions, 3)} "
          f"(true 0.125 each)")
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    plot.score_field(axes[0], gm8.noised(1.0, 0.5).score)
    axes[0].set_title("exact score, sigma 0.5")
    plot.score_field(axes[1], lambda x: learned(x, 0.5))
    axes[1].set_title("learned score, sigma 0.5")
    plot.points(axes[2], samples)
    axes[2].set_title("annealed Langevin samples")
    plot.save(fig, out / "01_ncsn_gmm8.png")


def _demo_shipped(weights, name, fast, seed):
    """Sample a shipped image model (guidance 2), print its scores; returns the samples."""
    from . import images, metrics

    apply, params, cfg, meta = images.load_model(weights)
    clf = images.load_classifier(images.SHIPPED["classifier"])
    per_class, steps = (2, 10) if fast else (10, 50)
    labels = np.repeat(np.arange(10), per_class)
    t0 = time.perf_counter()
    x = images.sample(apply, params, cfg, labels, np.random.default_rng(seed), steps=steps,
                      guidance=2.0, sched=images.model_schedule(meta))
    seconds = time.perf_counter() - t0
    r = metrics.evaluate_samples(x, labels, clf, np.random.default_rng(seed))
    print(f"  {name}: {len(labels)} samples, {steps} DDIM steps, guidance 2, in {seconds:.0f} s: "
          f"class agreement {100 * r['agreement']:.0f}%, FD-MNIST {r['fd']:.1f} "
          f"(real-vs-real at this n: {r['fd_real']:.1f})")
    for k in sorted(meta):
        if k.startswith("eval_"):
            print(f"  stored full evaluation, {k[5:]}: {meta[k]}")
    return x, per_class


def demo_chapter6(out, fast, seed=0):
    """Samples of the shipped U-Net, a grid in out/ (one class per column), and their scores."""
    print("Chapter 6 — the U-Net on MNIST (shipped weights)")
    x, per_class = _demo_shipped(SHIPPED["unet"], "U-Net", fast, seed)
    fig, ax = plt.subplots(figsize=(5, 0.5 * per_class + 0.3))
    plot.digits(ax, x, per_class)
    plot.save(fig, out / "06_unet_samples.png")
    return x


DEMO_PROMPTS = ("a bold seven leaning right", "a thin seven leaning left", "2, wide and bold",
                "the digit two, narrow and thin", "a right-leaning 4", "an eight standing upright")


def demo_chapter8(out, fast, seed=0):
    """The shipped latent model (autoencoder, text encoder, U-Net with cross-attention) turns
    sentences into digits: a grid of prompts in out/, and how many came out the digit named."""
    from . import latent
    from .captions import parse
    from .models import classifier

    print("Chapter 8 — latent diffusion with text (shipped weights)")
    models = latent.load_models(SHIPPED["ldm"])
    per_prompt, steps = (4, 10) if fast else (8, 50)
    prompts = [p for p in DEMO_PROMPTS for _ in range(per_prompt)]
    t0 = time.perf_counter()
    x = latent.sample(models, prompts, np.random.default_rng(seed), steps=steps, guidance=3.0)
    seconds = time.perf_counter() - t0
    from .images import load_classifier

    clf = load_classifier(SHIPPED["classifier"])
    agree = np.mean(classifier.predict(clf, x) == np.array([parse(p)[0] for p in prompts]))
    print(f"  {len(prompts)} samples of {len(DEMO_PROMPTS)} prompts, {steps} DDIM steps, "
          f"guidance 3, in {seconds:.0f} s: the evaluator reads the digit named in "
          f"{100 * agree:.0f}% of them")
    plot.save(plot.prompt_rows(x, list(DEMO_PROMPTS), per_prompt), out / "08_prompts.png")


def demo_chapter9(out, fast, seed=0, unet_samples=None):
    """Samples of the shipped DiT beside the U-Net's (same labels and noise), and their scores."""
    print("Chapter 9 — the DiT on MNIST (shipped weights)")
    x, per_class = _demo_shipped(SHIPPED["dit"], "DiT", fast, seed)
    panels = [("DiT (patch 4)", x)] + ([("U-Net", unet_samples)] if unet_samples is not None
                                       else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.5 * per_class + 0.5))
    for ax, (title, imgs) in zip(np.atleast_1d(axes), panels, strict=True):
        plot.digits(ax, imgs, per_class, title)
    plot.save(fig, out / "09_dit_samples.png")


def demo_chapter10(out, fast, seed=0):
    """The shipped rectified-flow transformer (the best of chapter 10's three at one budget) in a
    few Euler steps, and its reflowed student in one: the same prompts and noise, one grid
    each."""
    from . import latent_flow
    from .captions import parse
    from .images import load_classifier
    from .models import classifier

    print("Chapter 10 — rectified flow and MMDiT (shipped weights)")
    teacher, student = (latent_flow.load_models(SHIPPED[k]) for k in ("flow", "reflow"))
    per_prompt = 4 if fast else 8
    prompts = [p for p in DEMO_PROMPTS for _ in range(per_prompt)]
    z = np.random.default_rng(seed).standard_normal((len(prompts), 4, 7, 7)).astype(np.float32)
    clf = load_classifier(SHIPPED["classifier"])
    named = np.array([parse(p)[0] for p in prompts])
    w = float(student["meta"]["pair_guidance"])
    for name, models, steps, g in (("flow", teacher, 4 if fast else 20, w),
                                   ("reflow", student, 1, 1.0)):
        t0 = time.perf_counter()
        x = latent_flow.sample(models, prompts, np.random.default_rng(seed), steps=steps,
                               guidance=g, noise=z)
        agree = np.mean(classifier.predict(clf, x) == named)
        print(f"  {name}: {steps} Euler step(s), guidance {g:g}, {time.perf_counter() - t0:.0f} s:"
              f" the digit named in {100 * agree:.0f}%")
        plot.save(plot.prompt_rows(x, list(DEMO_PROMPTS), per_prompt), out / f"10_{name}.png")


def demo_chapter11(out, fast, seed=0):
    """The shipped model of SiT's walk sampled twice from the same noise: by the ODE (Heun) and
    by the SDE with ``w_t = sigma_t`` (Euler–Maruyama, the same number of network calls)."""
    from . import latent_flow
    from .captions import parse
    from .images import load_classifier
    from .models import classifier

    print("Chapter 11 — SiT's interpolants (shipped weights)")
    models = latent_flow.load_models(SHIPPED["sit"])
    per_prompt = 4 if fast else 8
    prompts = [p for p in DEMO_PROMPTS for _ in range(per_prompt)]
    z = np.random.default_rng(seed).standard_normal((len(prompts), 4, 7, 7)).astype(np.float32)
    clf = load_classifier(SHIPPED["classifier"])
    named = np.array([parse(p)[0] for p in prompts])
    steps = 5 if fast else 20
    print(f"  the model: {models['formulation'].name()}")
    for solver, n in (("heun", steps), ("sigma", 2 * steps)):
        t0 = time.perf_counter()
        x = latent_flow.sample(models, prompts, np.random.default_rng(seed), steps=n,
                               guidance=1.5, solver=solver, noise=z)
        agree = np.mean(classifier.predict(clf, x) == named)
        print(f"  {'ODE (Heun)' if solver == 'heun' else 'SDE, w = sigma_t'}, {n} steps, "
              f"{time.perf_counter() - t0:.0f} s: the digit named in {100 * agree:.0f}%")
        plot.save(plot.prompt_rows(x, list(DEMO_PROMPTS), per_prompt), out / f"11_{solver}.png")


def demo_chapter12(out, fast, seed=0):
    """The shipped few-step students from the same noise: the progressive students in 4 and 2
    DDIM steps and the consistency model in one evaluation, each above the teacher's guided DDIM
    on the same noise levels; the classifier's agreement with the requested digit."""
    from . import distill_mnist, samplers
    from .images import load_classifier
    from .models import classifier

    print("Chapter 12 — few-step students of the shipped U-Net (shipped weights)")
    labels = np.repeat(np.arange(10), 2 if fast else 10)
    z = np.random.default_rng(seed).standard_normal((len(labels), 1, 28, 28)).astype(np.float32)
    clf = load_classifier(SHIPPED["classifier"])
    teacher = distill_mnist.guided_teacher(distill_mnist.teacher_model(SHIPPED["unet"]), labels)
    fig, axes = plt.subplots(2, 3, figsize=(12, 2 + 0.4 * len(labels) // 10))
    for col, name in enumerate(("pd4", "pd2", "cm")):
        d = distill_mnist.load_student(SHIPPED[name])[2]["distilled"]
        levels = np.asarray(d["levels"] if name != "cm" else [d["sigma_max"], 0.0])
        x = distill_mnist.sample_student(SHIPPED[name], labels, z)
        t = np.clip(samplers.euler(teacher, levels[0] * z, levels), -1, 1)
        who = (f"progressive student, {len(levels) - 1} steps" if name != "cm"
               else "consistency model, 1 evaluation")
        for row, (title, im) in enumerate(((who, x), (f"teacher, {len(levels) - 1} DDIM "
                                                       "step(s)", t))):
            agree = np.mean(classifier.predict(clf, im.astype(np.float32)) == labels)
            print(f"  {title}: the digit asked for in {100 * agree:.0f}%")
            plot.digits(axes[row, col], im, len(labels) // 10, f"{title}: {100 * agree:.0f}%")
    plot.save(fig, out / "12_students.png")


def run(out="out", fast=False, seed=0):
    """Every chapter's demo in order (chapters 1, 6, 8, 9, 10, 11 and 12 so far); returns the
    seconds taken.
    Sets the allocator option of ``nn.memory`` for this process (an entry point's choice)."""
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    demo_chapter1(out, fast, seed)
    unet_samples = demo_chapter6(out, fast, seed)
    demo_chapter8(out, fast, seed)
    demo_chapter9(out, fast, seed, unet_samples)
    demo_chapter10(out, fast, seed)
    demo_chapter11(out, fast, seed)
    demo_chapter12(out, fast, seed)
    seconds = time.perf_counter() - t0
    print(f"figures in {out}/ ; demo took {seconds:.0f} s")
    return seconds
