"""The command line.

    python -m minidiff demo [--fast] [--out DIR]
    python -m minidiff train unet [--steps N] [--batch-size B] [--seed S] [--out weights.npz]
    python -m minidiff train dit [--patch 4] [--width 128] [--depth 4] [--heads 4] ...
    python -m minidiff sweep [--shapes 7x64 4x128 2x64 ...] [--steps 1000] [--out table.json]
    python -m minidiff sample --weights W.npz [--n 1000] [--steps 100] [--guidance 2] --out s.npz
    python -m minidiff evaluate samples.npz

``demo`` runs each landed chapter's headline experiment, writes its figures under ``--out`` and
prints what it measured; ``--fast`` (or ``MINIDIFF_FAST=1``) shrinks every run for CI. ``train``
resumes from its checkpoint if one exists. Training and sampling set the allocator option of
``nn.memory`` for this process (it is a process-wide choice, made here and not on import).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed; figures go to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import datasets, plot, score, train  # noqa: E402
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


def cmd_train(args):
    from . import pipeline
    from .datasets import mnist
    from .models import unet
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    if args.paired and args.p_uncond != 0.5:
        raise SystemExit("--paired drops exactly half of the labels: it needs --p-uncond 0.5 "
                         f"(got --p-uncond {args.p_uncond})")
    if args.model == "dit":
        from .models import dit as arch
        cfg = arch.DiTConfig(patch=args.patch, width=args.width, depth=args.depth,
                             heads=args.heads, conditioning=args.conditioning)
    else:
        arch = unet
        cfg = unet.UNetConfig(channels=tuple(args.channels), num_res_blocks=args.num_res_blocks,
                              resblock_updown=args.resblock_updown)
    images, labels = mnist("train")
    ckpt = Path(args.checkpoint)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if ckpt.exists():
        state = train.load_state(ckpt)
        print(f"resuming from {ckpt} at step {state.step}")
    else:
        state = train.init_state(arch.init(np.random.default_rng(args.seed), cfg), args.seed)
    elapsed = float(getattr(args, "_elapsed", 0.0))
    t0 = time.perf_counter()
    state, losses = pipeline.train_mnist(arch, cfg, state, images, labels, args.steps,
                                         batch_size=args.batch_size, lr=args.lr,
                                         warmup=args.warmup, cooldown=args.cooldown,
                                         target=args.target, weighting=args.weighting,
                                         p_uncond=args.p_uncond, workers=args.workers,
                                         paired=args.paired, checkpoint_path=ckpt,
                                         checkpoint_every=args.checkpoint_every,
                                         desc=f"{args.model} on MNIST")
    seconds = elapsed + time.perf_counter() - t0
    command = "python -m minidiff " + " ".join(sys.argv[1:]) if args.command_line is None \
        else args.command_line
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    pipeline.save_model(args.out, state.ema, cfg, kind=args.model, target=args.target,
                        seed=args.seed, commit=commit,
                        steps=state.step,
                        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                        cooldown=args.cooldown, p_uncond=args.p_uncond, paired=args.paired,
                        workers=args.workers, command=command,
                        train_seconds_this_run=round(seconds, 1),
                        final_loss=float(losses[-100:].mean()) if len(losses) else None)
    print(f"saved the EMA weights to {args.out} after {state.step} steps "
          f"({seconds / 60:.1f} min in this run)")
    return 0


def _demo_shipped(weights, name, fast, seed):
    """Sample a shipped image model (guidance 2), print its scores; returns the samples."""
    from . import metrics, pipeline
    from .nn import checkpoint
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    apply, params, cfg, meta = pipeline.load_model(weights)
    clf, _ = checkpoint.load("data/weights/classifier_mnist.npz")
    per_class, steps = (2, 10) if fast else (10, 50)
    labels = np.repeat(np.arange(10), per_class)
    t0 = time.perf_counter()
    x = pipeline.sample(apply, params, cfg, labels, np.random.default_rng(seed), steps=steps,
                        guidance=2.0)
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
    x, per_class = _demo_shipped("data/weights/unet_mnist.npz", "U-Net", fast, seed)
    fig, ax = plt.subplots(figsize=(5, 0.5 * per_class + 0.3))
    plot.digits(ax, x, per_class)
    plot.save(fig, out / "06_unet_samples.png")
    return x


def demo_chapter9(out, fast, seed=0, unet_samples=None):
    """Samples of the shipped DiT beside the U-Net's (same labels and noise), and their scores."""
    print("Chapter 9 — the DiT on MNIST (shipped weights)")
    x, per_class = _demo_shipped("data/weights/dit_mnist.npz", "DiT", fast, seed)
    panels = [("DiT (patch 4)", x)] + ([("U-Net", unet_samples)] if unet_samples is not None
                                       else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.5 * per_class + 0.5))
    for ax, (title, imgs) in zip(np.atleast_1d(axes), panels, strict=True):
        plot.digits(ax, imgs, per_class, title)
    plot.save(fig, out / "09_dit_samples.png")


def cmd_train_classifier(args):
    from .datasets import mnist
    from .models import classifier
    from .nn import checkpoint
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    images, labels = mnist("train")
    t0 = time.perf_counter()
    params = classifier.train_classifier(images, labels, steps=args.steps,
                                         batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    seconds = time.perf_counter() - t0
    test_x, test_y = mnist("test")
    acc = float(np.mean(classifier.predict(params, test_x) == test_y))
    checkpoint.save(args.out, params, model="classifier", seed=args.seed, steps=args.steps,
                    test_accuracy=acc, train_seconds=round(seconds, 1),
                    command="python -m minidiff " + " ".join(sys.argv[1:]))
    print(f"classifier: test accuracy {100 * acc:.2f}% after {args.steps} steps "
          f"({seconds:.0f} s) -> {args.out}")
    return 0


def cmd_sweep(args):
    from . import pipeline
    from .datasets import mnist
    from .nn import checkpoint
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    images, labels = mnist("train")
    clf, _ = checkpoint.load(args.classifier)
    shapes = []
    for spec in args.shapes:  # PATCHxWIDTH[:conditioning[:weighting]]
        size, *rest = spec.split(":")
        try:
            patch, width = (int(v) for v in size.split("x"))
        except ValueError:
            raise SystemExit("--shapes: expected PATCHxWIDTH[:conditioning[:weighting]] such as "
                             f"4x128, 4x64:in_context or 4x64:adaln_zero:min_snr (got {spec!r})"
                             ) from None
        shapes.append((patch, width, *rest))
    t0 = time.perf_counter()
    rows = pipeline.dit_sweep(images, labels, clf, shapes, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              n_eval=args.n, eval_steps=args.sample_steps,
                              guidance=args.guidance)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    pipeline.save_sweep(args.out, rows, command="python -m minidiff " + " ".join(sys.argv[1:]),
                        commit=commit, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, n_eval=args.n, eval_steps=args.sample_steps,
                        guidance=args.guidance, seconds=round(time.perf_counter() - t0, 1))
    print(f"{'patch':>5} {'width':>5} {'conditioning':>15} {'weighting':>9} {'params':>8} "
          f"{'Gflops':>7} {'train s':>8} {'FD':>7} {'real':>6} {'agree':>6}")
    for r in rows:
        print(f"{r['patch']:5d} {r['width']:5d} {r['conditioning']:>15} {r['weighting']:>9} "
              f"{r['params']:8d} "
              f"{r['gflops']:7.4f} "
              f"{r['train_seconds']:8.0f} {r['fd']:7.1f} {r['fd_real']:6.1f} "
              f"{100 * r['agreement']:5.0f}%")
    print(f"-> {args.out}")
    return 0


def cmd_sample(args):
    from . import pipeline
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    if args.ideal:
        from .datasets import mnist
        from .models import ideal

        if args.workers != 1:
            raise SystemExit("--ideal runs in one process (its matrix products already use every "
                             f"core; got --workers {args.workers})")
        apply, params, cfg = ideal.apply, ideal.init(*mnist("train")), ideal.IdealConfig()
    else:
        apply, params, cfg, _ = pipeline.load_model(args.weights)
    labels = np.repeat(np.arange(10), args.n // 10)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    interval = None if args.guidance_interval is None else tuple(args.guidance_interval)
    x = pipeline.sample(apply, params, cfg, labels, rng, steps=args.steps,
                        guidance=args.guidance, workers=args.workers, guidance_interval=interval)
    pipeline.save_samples(args.out, pipeline.to_uint8(x[:, 0]), labels)
    where = "" if interval is None else f" at steps {interval[0]} <= i < {interval[1]}"
    print(f"{len(labels)} samples ({args.steps} DDIM steps, guidance {args.guidance}{where}) in "
          f"{time.perf_counter() - t0:.0f} s -> {args.out}")
    return 0


def cmd_evaluate(args):
    from . import metrics, pipeline
    from .nn import checkpoint

    pixels, labels = pipeline.load_samples(args.samples)
    classifier_params, _ = checkpoint.load(args.classifier)
    r = metrics.evaluate_samples(metrics.images_from_uint8(pixels), labels, classifier_params,
                        np.random.default_rng(args.seed))
    print(f"{r['n']} samples: FD-MNIST {r['fd']:.2f} (real-vs-real baseline {r['fd_real']:.2f}, "
          f"ratio {r['fd'] / r['fd_real']:.2f}); classifier agrees with the requested class on "
          f"{100 * r['agreement']:.1f}%")
    sp, sr = r["spread"], r["spread_real"]
    print(f"feature spread (law of total variance): between classes {sp['between']:.0f} (test "
          f"digits {sr['between']:.0f}), within a class {sp['within']:.0f} ({sr['within']:.0f})")
    print(f"with each class's mean moved onto the test digits' class mean: FD-MNIST "
          f"{r['fd_aligned']:.2f} (real-vs-real {r['fd_real_aligned']:.2f}); the rest of the FD "
          "is where the class means sit")
    print("FD-MNIST is the Frechet distance on minidiff's MNIST classifier's features, not the "
          "Inception FID.")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every chapter's headline experiment")
    demo.add_argument("--out", default="out", help="folder for figures (default: out)")
    demo.add_argument("--fast", action="store_true", help="tiny runs (also MINIDIFF_FAST=1)")
    demo.add_argument("--seed", type=int, default=0)
    tr = sub.add_parser("train", help="train an image model on MNIST")
    tr.add_argument("model", choices=["unet", "dit", "classifier"])
    tr.add_argument("--steps", type=int, default=1600)
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--warmup", type=int, default=200)
    tr.add_argument("--cooldown", type=int, default=0,
                    help="steps at the end over which the LR falls linearly to zero (default 0)")
    tr.add_argument("--workers", type=int, default=1,
                    help="processes sharing each batch, one BLAS thread each (default 1; "
                         "2 on a 2-core machine is 1.4-2x faster)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--target", choices=["eps", "v"], default="eps",
                    help="what the network predicts (default eps; sampling converts to eps)")
    tr.add_argument("--weighting", choices=["min_snr"], default=None,
                    help="loss weighting (default: L_simple, every step weighted 1)")
    tr.add_argument("--p-uncond", type=float, default=0.1,
                    help="probability that a training label is replaced by the null label, "
                         "which trains the unconditional model guidance needs (default 0.1)")
    tr.add_argument("--paired", action="store_true",
                    help="with --p-uncond 0.5: each image in the batch twice, with its label and "
                         "with the null label, at the same step and noise")
    tr.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    tr.add_argument("--num-res-blocks", type=int, default=1)
    tr.add_argument("--resblock-updown", action="store_true")
    tr.add_argument("--patch", type=int, default=4, help="DiT patch size")
    tr.add_argument("--width", type=int, default=128, help="DiT width")
    tr.add_argument("--depth", type=int, default=4, help="DiT depth")
    tr.add_argument("--heads", type=int, default=4, help="DiT heads")
    tr.add_argument("--conditioning", default="adaln_zero", help="DiT conditioning")
    tr.add_argument("--out", default=None, help="weights file (default data/weights/"
                    "<model>_mnist.npz)")
    tr.add_argument("--checkpoint", default=None, help="resumable checkpoint (default "
                    "out/<model>_train.npz)")
    tr.add_argument("--checkpoint-every", type=int, default=100)
    tr.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    sw = sub.add_parser("sweep", help="the DiT scaling sweep: FD-MNIST against Gflops")
    sw.add_argument("--shapes", nargs="+", default=["7x64", "7x128", "4x64", "4x128", "2x64",
                                                    "4x64:cross_attention", "4x64:in_context",
                                                    "4x64:adaln_zero:min_snr"],
                    help="PATCHxWIDTH[:conditioning[:weighting]] for each model")
    sw.add_argument("--steps", type=int, default=1500)
    sw.add_argument("--batch-size", type=int, default=32)
    sw.add_argument("--lr", type=float, default=1e-3)
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--n", type=int, default=200, help="images per model for FD-MNIST")
    sw.add_argument("--sample-steps", type=int, default=50)
    sw.add_argument("--guidance", type=float, default=2.0)
    sw.add_argument("--classifier", default="data/weights/classifier_mnist.npz")
    sw.add_argument("--out", default="data/weights/dit_sweep.json")
    sa = sub.add_parser("sample", help="sample MNIST digits, 10 classes, to an .npz")
    sa.add_argument("--weights", default="data/weights/unet_mnist.npz")
    sa.add_argument("--n", type=int, default=1000)
    sa.add_argument("--steps", type=int, default=100)
    sa.add_argument("--guidance", type=float, default=2.0)
    sa.add_argument("--guidance-interval", type=int, nargs=2, metavar=("LO", "HI"),
                    default=None, help="guide only at DDPM steps LO <= i < HI, the conditional "
                                       "model elsewhere (default: every step)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--workers", type=int, default=1,
                    help="processes sharing the batches, one BLAS thread each (default 1; the "
                         "images are the same up to float32 rounding)")
    sa.add_argument("--ideal", action="store_true",
                    help="sample the ideal denoiser of the 60,000 training digits (the exact "
                         "posterior mean; models/ideal.py) instead of --weights: the yardstick")
    sa.add_argument("--out", required=True)
    ev = sub.add_parser("evaluate", help="FD-MNIST and class agreement of an .npz of samples")
    ev.add_argument("samples")
    ev.add_argument("--classifier", default="data/weights/classifier_mnist.npz")
    ev.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    if args.command == "train":
        args.out = args.out or f"data/weights/{args.model}_mnist.npz"
        args.checkpoint = args.checkpoint or f"out/{args.model}_train.npz"
        if args.model == "classifier":
            return cmd_train_classifier(args)
        return cmd_train(args)
    if args.command == "sample":
        return cmd_sample(args)
    if args.command == "sweep":
        return cmd_sweep(args)
    if args.command == "demo":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        fast = args.fast or os.environ.get("MINIDIFF_FAST") == "1"
        t0 = time.perf_counter()
        demo_chapter1(out, fast, args.seed)
        unet_samples = demo_chapter6(out, fast, args.seed)
        demo_chapter9(out, fast, args.seed, unet_samples)
        print(f"figures in {out}/ ; demo took {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
