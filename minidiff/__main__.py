"""The command line: argument parsing and dispatch only (the work lives in the package).

An error is one line on stderr and exit status 2 (``--debug`` shows the traceback instead).
Outputs go under ``out/`` unless ``--out`` names a file; an existing file is replaced only with
``--overwrite``, so the shipped files in ``data/`` change only when named and asked for.
"""
# line budget: 440 -- argparse declares some sixty-five options, one call and a help text each; the
# command functions only check arguments, call the package and print (--minutes and a cool-down
# given as a share of the run added 30 lines).

import argparse
import functools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

DESCRIPTION = """\
minidiff: score-based diffusion models from scratch in NumPy and autograd.

  demo       every chapter's headline experiment (figures in out/)
  train      train a U-Net, a DiT, the evaluator, the noisy classifier, or chapter 8's
             autoencoder, text encoder and latent model on MNIST
  sample     sample digits from a model file (or the ideal denoiser, or a --prompt) into an .npz
  evaluate   FD-MNIST, its real-vs-real baseline and class agreement of an .npz of samples
  sweep      the DiT scaling sweep of chapter 9 (FD-MNIST against Gflops)

Run `python -m minidiff COMMAND --help` for a command's options."""


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- argument types

def _number(kind, test, expected):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
count = _number(int, lambda v: v >= 0, "a non-negative integer")
finite = _number(float, math.isfinite, "a finite number")
positive = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
probability = _number(float, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")


def steps_or_percent(text):
    """``--cooldown``: a number of steps (``126``) or a share of the run (``20%``, a float 0.2)."""
    expected = "a non-negative number of steps or a percentage below 100 (e.g. 126 or 20%)"
    if text.endswith("%"):
        share = _number(float, lambda v: 0.0 <= v < 100.0, expected)(text[:-1])
        return share / 100.0
    return _number(int, lambda v: v >= 0, expected)(text)


steps_or_percent.__name__ = "steps or percent"


def _output(path, overwrite, default_folder=False):
    """Check an output path before any work: its folder exists (the default ``out/`` is made)
    and it is not an existing file unless ``overwrite``."""
    path = Path(path)
    if default_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise UsageError(f"--out {path} exists; pass --overwrite to replace it, or choose "
                         "another file")
    return path


def _provenance():
    """The command as typed and the code's git commit (None outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"command": "python -m minidiff " + " ".join(sys.argv[1:]), "commit": commit}


# ----------------------------------------------------------------------------- commands

RUN_ARGS = ("model", "seed", "batch_size", "lr", "warmup", "cooldown", "target", "weighting",
            "p_uncond", "paired", "channels", "num_res_blocks", "resblock_updown", "patch",
            "width", "depth", "heads", "conditioning")


def cmd_train(args):
    import numpy as np

    from . import images, train
    from .datasets import mnist
    from .nn.memory import keep_freed_memory

    if args.paired and args.p_uncond != 0.5:
        raise UsageError("--paired drops exactly half of the labels: it needs --p-uncond 0.5 "
                         f"(got --p-uncond {args.p_uncond})")
    flow = args.model in ("mmdit", "flux", "flow-dit")
    if args.minutes is not None and args.model not in ("unet", "dit"):
        raise UsageError(f"--minutes is a budget for unet and dit (got {args.model}): give "
                         "--steps")
    if isinstance(args.cooldown, float) and args.model not in ("unet", "dit"):
        raise UsageError(f"--cooldown as a percentage is for unet and dit (got {args.model})")
    if args.steps is None and args.model not in ("unet", "dit"):
        args.steps = 1600  # unet and dit: see _budget
    if args.target is None:
        args.target = "velocity" if flow else "eps"
    if args.target not in (("velocity", "eps", "score") if flow else ("eps", "v")):
        raise UsageError(f"--target {args.target} is not a target of {args.model}")
    if args.width is None:  # chapter 10's transformers on 49 latent tokens are narrower
        args.width = 96 if args.model in ("mmdit", "flux", "flow-dit") else 128
    default_out = f"out/{args.model.replace('-', '_')}_mnist.npz"
    out = _output(args.out or default_out, args.overwrite, args.out is None)
    if args.model in ("classifier", "noisy-classifier"):
        return _train_classifier(args, out)
    if args.model in ("vae", "clip", "ldm", "mmdit", "flux", "flow-dit"):
        return _train_latent(args, out)
    if args.model == "dit":
        from .models import dit as arch
        cfg = arch.DiTConfig(patch=args.patch, width=args.width, depth=args.depth,
                             heads=args.heads, conditioning=args.conditioning)
    else:
        from .models import unet as arch
        cfg = arch.UNetConfig(channels=tuple(args.channels), num_res_blocks=args.num_res_blocks,
                              resblock_updown=args.resblock_updown)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.stem + ".train.npz")
    if not ckpt.parent.is_dir():
        raise UsageError(f"--checkpoint {ckpt}: the folder {ckpt.parent} does not exist")
    run = {k: getattr(args, k) for k in RUN_ARGS}
    state, resumed = train.resume_or_init(
        ckpt, run, lambda: train.init_state(arch.init(np.random.default_rng(args.seed), cfg),
                                            args.seed))
    steps, cooldown, spent, seconds = train.budget(ckpt if resumed else None, args.steps,
                                                   args.cooldown, args.minutes)
    if resumed:
        print(f"resuming from {ckpt} at step {state.step}"
              + (f" ({spent / 60:.1f} min trained)" if spent else ""))
    keep_freed_memory()
    x, y = mnist("train")
    t0 = time.perf_counter()
    try:
        state, losses = images.train_mnist(
            arch, cfg, state, x, y, steps, batch_size=args.batch_size, lr=args.lr,
            warmup=args.warmup, cooldown=cooldown, target=args.target,
            weighting=args.weighting, p_uncond=args.p_uncond, workers=args.workers,
            paired=args.paired, checkpoint_path=ckpt, checkpoint_every=args.checkpoint_every,
            desc=f"{args.model} on MNIST", run=run, seconds=seconds, spent=spent)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {ckpt} holds the last checkpoint (every {args.checkpoint_every} "
              "steps); the same command resumes from it", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - t0
    plan = train.plan_of(ckpt) or {}
    meta = {k: v for k, v in run.items() if k not in ("model", "target")}
    if plan.get("cooldown") is not None:
        meta["cooldown"] = plan["cooldown"]  # a percentage, resolved to steps
    images.save_model(out, state.ema, cfg, kind=args.model, target=args.target, steps=state.step,
                      planned_steps=plan.get("steps", steps), minutes=args.minutes,
                      workers=args.workers, train_seconds_this_run=round(seconds, 1),
                      train_seconds=plan.get("seconds"),
                      images_seen=state.step * args.batch_size,
                      final_loss=float(losses[-100:].mean()) if len(losses) else None,
                      **meta, **_provenance())
    stopped = ("" if plan.get("steps") is None or state.step >= plan["steps"]
               else f" of {plan['steps']} planned: the budget ran out first")
    print(f"saved the EMA weights to {out} after {state.step} steps{stopped} "
          f"({seconds / 60:.1f} min in this run)")
    return 0


def _train_classifier(args, out):
    import numpy as np

    from . import images
    from .datasets import mnist
    from .models import classifier
    from .nn import checkpoint
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    noisy = args.model == "noisy-classifier"  # chapter 7's, measured on the last 10,000 digits
    x, y = mnist("fit" if noisy else "train")
    kw = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    t0 = time.perf_counter()
    params = (images.train_noisy_classifier(x, y, images.model_schedule({}), **kw) if noisy
              else images.train_classifier(x, y, **kw))
    seconds = time.perf_counter() - t0
    if noisy:
        acc = images.noisy_classifier_accuracy(params)
        meta = {"accuracy_by_step": acc, "trained_on": "fit (the first 50,000 training digits)"}
        report = f"accuracy by step {acc}"
    else:
        test_x, test_y = mnist("test")
        meta = {"test_accuracy": float(np.mean(classifier.predict(params, test_x) == test_y))}
        report = f"test accuracy {100 * meta['test_accuracy']:.2f}%"
    checkpoint.save(out, params, model=args.model.replace("-", "_"), seed=args.seed,
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, **meta,
                    train_seconds=round(seconds, 1), **_provenance())
    print(f"{args.model}: {report}, after {args.steps} steps ({seconds:.0f} s) -> {out}")
    return 0


def _train_latent(args, out):
    """Chapter 8's three networks: the autoencoder, the text encoder, the latent model."""
    from . import latent, text_encoder
    from .nn.memory import keep_freed_memory

    keep_freed_memory()
    kw = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    if args.model in ("mmdit", "flux", "flow-dit"):  # chapter 10's rectified-flow transformers
        from . import latent_flow

        command = functools.partial(
            latent_flow.train_flow_command, arch=args.model.removeprefix("flow-"),
            workers=args.workers, vae_file=Path(args.vae), text_file=Path(args.text_encoder),
            density=args.density, qk_norm=args.qk_norm, width=args.width, depth=args.depth,
            reflow_from=args.reflow_from and Path(args.reflow_from), pairs=args.pairs,
            pair_steps=args.pair_steps, pair_guidance=args.pair_guidance,
            formulation=latent_flow.interpolants.Formulation(args.path, args.target,
                                                             args.discrete_time))
    else:
        command = {"vae": latent.train_vae_command, "clip": text_encoder.train_command,
                   "ldm": latent.train_ldm_command}[args.model]
    if args.model == "ldm":
        kw.update(workers=args.workers, vae=Path(args.vae), text_encoder=Path(args.text_encoder))
    t0 = time.perf_counter()
    report = command(out, **kw, extra=_provenance())
    print(f"{args.model}: {report} ({(time.perf_counter() - t0) / 60:.1f} min) -> {out}")
    return 0


def cmd_sweep(args):
    from . import images
    from .datasets import mnist
    from .nn.memory import keep_freed_memory
    from .tools import sweep

    out = _output(args.out, args.overwrite, args.out == "out/dit_sweep.json")
    shapes = [sweep.parse_shape(spec) for spec in args.shapes]
    clf = images.load_classifier(args.classifier)
    keep_freed_memory()
    x, y = mnist("train")
    t0 = time.perf_counter()
    rows = sweep.dit_sweep(x, y, clf, shapes, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, n_eval=args.n,
                           eval_steps=args.sample_steps, guidance=args.guidance)
    sweep.save_sweep(out, rows, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     seed=args.seed, n_eval=args.n, eval_steps=args.sample_steps,
                     guidance=args.guidance, seconds=round(time.perf_counter() - t0, 1),
                     **_provenance())
    print(sweep.format_rows(rows))
    print(f"-> {out}")
    return 0


def cmd_sample(args):
    import numpy as np
    from tqdm import tqdm

    from . import datasets, images
    from .nn.memory import keep_freed_memory

    if args.prompt:
        return _sample_prompts(args)
    if args.n % 10:
        raise UsageError(f"--n must be a multiple of 10, the same number of images for each "
                         f"class (got {args.n})")
    if args.steps > 1000:
        raise UsageError(f"--steps must be at most 1000, the schedule's length (got {args.steps})")
    out = _output(args.out, args.overwrite)
    if args.ideal:
        if args.workers != 1:
            raise UsageError("--ideal runs in one process (its matrix products already use "
                             f"every core; got --workers {args.workers})")
        sched = images.model_schedule({})
        apply, params, cfg = images.ideal_model(*datasets.mnist("train"), sched)
    else:
        apply, params, cfg, meta = images.load_model(args.weights)
        sched = images.model_schedule(meta)
    keep_freed_memory()
    labels = np.repeat(np.arange(10), args.n // 10)
    interval = None if args.guidance_interval is None else tuple(args.guidance_interval)
    t0 = time.perf_counter()
    with tqdm(total=len(labels), desc="sampling", unit="image", mininterval=1.0) as bar:
        x = images.sample(apply, params, cfg, labels, np.random.default_rng(args.seed),
                          steps=args.steps, guidance=args.guidance, workers=args.workers,
                          guidance_interval=interval, sched=sched, progress=bar.update)
    datasets.save_samples(out, datasets.to_uint8(x[:, 0]), labels)
    where = "" if interval is None else f" at steps {interval[0]} <= i < {interval[1]}"
    seconds = time.perf_counter() - t0
    print(f"{len(labels)} samples ({args.steps} DDIM steps, guidance {args.guidance}{where}) in "
          f"{seconds:.0f} s, {len(labels) / seconds:.2f} images/s -> {out}")
    return 0


def _sample_prompts(args):
    """Chapters 8 and 10: ``--n`` digits for each ``--prompt`` from a latent model (chapter 8's
    U-Net, or with a ``train mmdit|flux|flow-dit`` file, its rectified flow); a grid beside."""
    from . import latent
    from .images import SHIPPED
    from .nn import checkpoint

    out = _output(args.out, args.overwrite)
    weights = SHIPPED["ldm"] if args.weights == str(SHIPPED["unet"]) else args.weights
    flow = checkpoint.load(weights)[1].get("model") == "flow"
    if flow:
        from . import latent_flow as latent  # noqa: F811  (its sample_command: the flow's)
    t0 = time.perf_counter()
    grid = latent.sample_command(out, weights, args.prompt, args.n, args.steps, args.guidance,
                                 args.seed)
    print(f"{args.n * len(args.prompt)} samples of {len(args.prompt)} prompt(s) ({args.steps} "
          f"{'Euler' if flow else 'DDIM'} steps, guidance {args.guidance}) in "
          f"{time.perf_counter() - t0:.0f} s -> {out}, {grid}")
    return 0


def cmd_evaluate(args):
    import numpy as np
    from tqdm import tqdm

    from . import images, metrics
    from .datasets import load_samples

    pixels, labels = load_samples(args.samples)
    if len(labels) < 20:
        raise UsageError(f"{args.samples} holds {len(labels)} images: FD needs a covariance of "
                         "as many test digits per class, so at least 20 (two per class; 1,000 "
                         "for a number worth reporting)")
    if labels.min() < 0 or labels.max() > 9:
        raise UsageError(f"{args.samples}: labels must be MNIST classes 0..9 (got "
                         f"{labels.min()}..{labels.max()})")
    clf = images.load_classifier(args.classifier)
    if len(labels) < 1000:
        print(f"warning: FD-MNIST from {len(labels)} images is biased upward (about 1/N, and the "
              "128-dimensional feature covariance is singular below 129 images): compare it "
              "only with the real-vs-real baseline at the same N", file=sys.stderr)
    with tqdm(total=3 * len(labels), desc="evaluating", unit="image", mininterval=1.0) as bar:
        r = metrics.evaluate_samples(metrics.images_from_uint8(pixels), labels, clf,
                                     np.random.default_rng(args.seed), progress=bar.update,
                                     reference=args.reference)
    print(metrics.format_report(r))
    return 0


def cmd_demo(args):
    from . import demo

    demo.run(args.out, args.fast or os.environ.get("MINIDIFF_FAST") == "1", args.seed)
    return 0


# ----------------------------------------------------------------------------- the parser

def parser():
    from .images import SHIPPED

    top = argparse.ArgumentParser(prog="python -m minidiff", description=DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter, "parents": [common]}
    demo = sub.add_parser("demo", help="every chapter's headline experiment", **fmt)
    demo.add_argument("--out", default="out", help="folder for the figures")
    demo.add_argument("--fast", action="store_true", help="tiny runs (also MINIDIFF_FAST=1)")
    demo.add_argument("--seed", type=count, default=0, help="random seed")

    tr = sub.add_parser("train", help="train an image model on MNIST (resumable)", **fmt)
    tr.add_argument("model", choices=["unet", "dit", "classifier", "noisy-classifier", "vae",
                                      "clip", "ldm", "mmdit", "flux", "flow-dit"],
                    help="what to train (noisy-classifier: chapter 7's p_t(c | x_t); vae, clip, "
                         "ldm: chapter 8's autoencoder, text encoder and latent model; mmdit, "
                         "flux, flow-dit: chapter 10's rectified-flow transformers on the "
                         "latents)")
    tr.add_argument("--steps", type=positive_int, default=None,
                    help="total optimiser steps (default 1600; with --minutes, as many as fit)")
    tr.add_argument("--minutes", type=positive, default=None,
                    help="unet, dit: a time budget; training stops after the step that reaches "
                         "it, checkpointed. Without --steps the run's length is planned from the "
                         "speed of its first 10 steps and again when the cool-down begins, so a "
                         "--cooldown ends with the budget")
    tr.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    tr.add_argument("--lr", type=positive, default=1e-3, help="peak Adam learning rate")
    tr.add_argument("--warmup", type=count, default=200, help="steps of linear LR warm-up")
    tr.add_argument("--cooldown", type=steps_or_percent, default=0,
                    help="steps at the end over which the LR falls linearly to zero, or a "
                         "share of the run (20%%)")
    tr.add_argument("--workers", type=positive_int, default=1,
                    help="processes sharing each batch, one BLAS thread each (2 on a 2-core "
                         "machine is 1.4-2x faster; the same result up to float32 rounding)")
    tr.add_argument("--seed", type=count, default=0, help="seed of the weights and the batches")
    tr.add_argument("--target", choices=["eps", "v", "velocity", "score"], default=None,
                    help="what the network predicts (unet, dit: eps or v, sampling converts it "
                         "to eps; mmdit, flux, flow-dit: velocity, eps or score, chapter 11; "
                         "default eps, velocity)")
    tr.add_argument("--weighting", choices=["min_snr"], default=None,
                    help="loss weighting (default: L_simple, every step weighted 1)")
    tr.add_argument("--p-uncond", type=probability, default=0.1,
                    help="probability that a label is replaced by the null label, which trains "
                         "the unconditional model guidance needs")
    tr.add_argument("--paired", action="store_true",
                    help="with --p-uncond 0.5: each image twice, with its label and the null one")
    tr.add_argument("--channels", type=positive_int, nargs="+", default=[32, 64, 64],
                    help="U-Net channels per resolution level")
    tr.add_argument("--num-res-blocks", type=positive_int, default=1,
                    help="U-Net residual blocks per level")
    tr.add_argument("--resblock-updown", action="store_true",
                    help="U-Net: resample inside residual blocks (BigGAN style)")
    tr.add_argument("--patch", type=positive_int, default=4, help="DiT patch size")
    tr.add_argument("--width", type=positive_int, default=None,
                    help="transformer width (default: 128 for dit, 96 for chapter 10's)")
    tr.add_argument("--depth", type=positive_int, default=4, help="DiT depth")
    tr.add_argument("--heads", type=positive_int, default=4, help="DiT heads")
    tr.add_argument("--conditioning", default="adaln_zero",
                    choices=["adaln_zero", "cross_attention", "in_context"],
                    help="DiT conditioning")
    tr.add_argument("--vae", default=str(SHIPPED["vae"]),
                    help="ldm, mmdit, flux, flow-dit: the frozen autoencoder")
    tr.add_argument("--text-encoder", default=str(SHIPPED["clip"]),
                    help="ldm, mmdit, flux, flow-dit: the frozen text encoder")
    tr.add_argument("--density", default="logit_normal",
                    choices=["uniform", "logit_normal", "mode", "cosmap"],
                    help="mmdit, flux, flow-dit: the training time density (SD3, sec. 3.1)")
    tr.add_argument("--qk-norm", action="store_true", help="mmdit, flux: RMSNorm on q and k")
    tr.add_argument("--reflow-from", default=None,
                    help="mmdit, flux, flow-dit: a flow model file to straighten (reflow): "
                         "train on the couplings its ODE makes, starting from its weights")
    tr.add_argument("--pairs", type=positive_int, default=4000,
                    help="--reflow-from: how many (noise, latent) pairs to generate")
    tr.add_argument("--pair-steps", type=positive_int, default=10,
                    help="--reflow-from: Heun steps of the teacher's ODE per pair")
    tr.add_argument("--pair-guidance", type=positive, default=2.0,
                    help="--reflow-from: the teacher's guidance scale (baked into the pairs)")
    tr.add_argument("--path", default="linear", choices=["linear", "gvp", "vp"],
                    help="mmdit, flux, flow-dit: chapter 11's interpolant (SiT)")
    tr.add_argument("--discrete-time", action="store_true",
                    help="mmdit, flux, flow-dit with --path vp: train on DDPM's 1,000 times")
    tr.add_argument("--out", default=None, help="weights file (default out/<model>_mnist.npz)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    tr.add_argument("--checkpoint", default=None,
                    help="resumable checkpoint (default: beside --out, <name>.train.npz)")
    tr.add_argument("--checkpoint-every", type=positive_int, default=100,
                    help="steps between checkpoints")

    sw = sub.add_parser("sweep", help="the DiT scaling sweep: FD-MNIST against Gflops", **fmt)
    sw.add_argument("--shapes", nargs="+", default=["7x64", "7x128", "4x64", "4x128", "2x64",
                                                    "4x64:cross_attention", "4x64:in_context",
                                                    "4x64:adaln_zero:min_snr"],
                    help="PATCHxWIDTH[:conditioning[:weighting]] for each model")
    sw.add_argument("--steps", type=positive_int, default=1500, help="training steps per model")
    sw.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    sw.add_argument("--lr", type=positive, default=1e-3, help="peak Adam learning rate")
    sw.add_argument("--seed", type=count, default=0, help="random seed")
    sw.add_argument("--n", type=positive_int, default=200, help="images per model for FD-MNIST")
    sw.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps")
    sw.add_argument("--guidance", type=finite, default=2.0, help="guidance scale w")
    sw.add_argument("--classifier", default=str(SHIPPED["classifier"]), help="evaluator weights")
    sw.add_argument("--out", default="out/dit_sweep.json", help="the table (JSON)")
    sw.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    sa = sub.add_parser("sample", help="sample MNIST digits, 10 classes, into an .npz", **fmt)
    sa.add_argument("--weights", default=str(SHIPPED["unet"]), help="model file")
    sa.add_argument("--n", type=positive_int, default=1000,
                    help="number of images, a multiple of 10 (equal per class)")
    sa.add_argument("--steps", type=positive_int, default=100, help="DDIM steps")
    sa.add_argument("--guidance", type=finite, default=2.0,
                    help="guidance scale w: eps_u + w (eps_c - eps_u); 1 = conditional model")
    sa.add_argument("--guidance-interval", type=count, nargs=2, metavar=("LO", "HI"),
                    default=None, help="guide only at DDPM steps LO <= i < HI, the conditional "
                                       "model elsewhere (default: every step)")
    sa.add_argument("--seed", type=count, default=0, help="seed of the starting noise")
    sa.add_argument("--workers", type=positive_int, default=1,
                    help="processes sharing the batches, one BLAS thread each (the images are "
                         "the same up to float32 rounding)")
    sa.add_argument("--ideal", action="store_true",
                    help="sample the ideal denoiser of the 60,000 training digits (the exact "
                         "posterior mean; models/ideal.py) instead of --weights: the yardstick")
    sa.add_argument("--prompt", nargs="+", default=None, metavar="TEXT",
                    help="chapter 8: caption(s) for the latent model (--weights defaults to it); "
                         "--n images each, e.g. --prompt \"a bold seven leaning right\"")
    sa.add_argument("--out", required=True, help="samples file (.npz)")
    sa.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    ev = sub.add_parser("evaluate", help="FD-MNIST and class agreement of an .npz of samples",
                        **fmt)
    ev.add_argument("samples", help="an .npz written by `sample`")
    ev.add_argument("--classifier", default=str(SHIPPED["classifier"]), help="evaluator weights")
    ev.add_argument("--seed", type=count, default=0, help="seed of the real-vs-real baseline")
    ev.add_argument("--reference", choices=["test", "validation"], default="test",
                    help="real digits: test (to report) or validation (to choose runs on)")
    return top


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sweep": cmd_sweep, "sample": cmd_sample,
            "evaluate": cmd_evaluate}


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError,
            FloatingPointError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
