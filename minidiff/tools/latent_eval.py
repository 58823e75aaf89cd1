"""Chapter 8's measurements: does the latent model listen, and what did the latent space buy?

    python -m minidiff.tools.latent_eval [--guidance 1 2 3 5] [--split validation test]
                                         [--out out/ldm_eval.json]

For each split (validation digits to choose the guidance scale on, test digits to report), 100
digits of each class give 1,000 held-out prompts (``latent.evaluation_prompts``); the shipped latent
model samples each prompt at each guidance scale (50 DDIM steps, seed 0) and the table records
FD-MNIST (``metrics.evaluate_samples`` against that split), class agreement and attribute
adherence (``latent.adherence``), and the sampling time. Beside them:

- **floor**: the same model asked for the class alone (``latent.class_only``) at the same
  guidance scales, scored against the bins the full prompts asked for;
- **ceiling**: the prompts' own digits, and their VAE reconstructions (what a perfect latent
  model could reach through this decoder);
- **compute**: multiply-adds per forward pass (``tools.flops``) and the measured training-step
  time, pixel-space U-Net (chapter 6) against the latent one, in one process, taking turns.

Samples are cached in ``out/latent_eval/`` (delete them to resample).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as onp

CACHE = Path("out/latent_eval")


def _samples(models, prompts, w, path, steps, seed=0):
    from minidiff import latent

    if path.exists():
        with onp.load(path, allow_pickle=False) as f:
            return f["x"], float(f["seconds"])
    t0 = time.perf_counter()
    x = latent.sample(models, prompts, onp.random.default_rng(seed), steps=steps, guidance=w)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    onp.savez(path, x=x, seconds=seconds)
    return x, seconds


def _score(x, prompts, labels, thresholds, clf, split):
    from minidiff import latent, metrics

    r = metrics.evaluate_samples(x, labels, clf, onp.random.default_rng(0), reference=split)
    return {"fd": r["fd"], "fd_real": r["fd_real"], "fd_ratio": r["fd"] / r["fd_real"],
            "precision": r["precision"], "recall": r["recall"],
            **latent.adherence(x, prompts, thresholds, clf)}


def step_times(repeats=5, batch=128):
    """Median seconds of a training step (forward, backward) of the chapter-6 pixel U-Net and of
    the latent U-Net at ``batch``, timed in turns; and their multiply-adds per image."""
    import autograd

    from minidiff import latent
    from minidiff.models import unet
    from minidiff.tools.flops import macs_per_image

    rng = onp.random.default_rng(0)
    cases = {}
    for name, cfg, shape in (("pixel", unet.UNetConfig(), (batch, 1, 28, 28)),
                             ("latent", latent.ldm_config(), (batch, 4, 7, 7))):
        params = unet.init(rng, cfg)
        x = rng.standard_normal(shape).astype(onp.float32)
        t = onp.full(batch, 500.0, onp.float32)
        y = onp.zeros(batch, int) if cfg.context_dim is None else {
            "context": rng.standard_normal((batch, 16, 64)).astype(onp.float32),
            "mask": onp.ones((batch, 16), bool)}
        def loss(p, x=x, t=t, y=y, cfg=cfg):  # L_simple against stand-in noise
            return autograd.numpy.mean((unet.apply(p, x, t, y, cfg) - x) ** 2)
        gmacs = macs_per_image(lambda params=params, x=x, t=t, y=y, cfg=cfg: unet.apply(
            params, x[:2], t[:2], _first(y, 2), cfg), 2)
        step = autograd.grad(loss)
        cases[name] = (step, params, gmacs)
    times = {name: [] for name in cases}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (step, params, _) in cases.items():
            t0 = time.perf_counter()
            step(params)
            times[name].append(time.perf_counter() - t0)
    out = {name: {"step_seconds": float(onp.median(v[1:])), "gmacs_per_image": cases[name][2]}
           for name, v in times.items()}
    out["batch"] = batch
    return out


def _first(y, n):
    return y[:n] if not isinstance(y, dict) else {k: v[:n] for k, v in y.items()}


def main(argv=None):
    from minidiff import latent, text_encoder
    from minidiff.images import SHIPPED, load_classifier
    from minidiff.nn.memory import keep_freed_memory

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ldm", default=str(SHIPPED["ldm"]), help="latent model file")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    ap.add_argument("--split", nargs="+", default=["validation", "test"],
                    choices=["validation", "test"])
    ap.add_argument("--floor-guidance", type=float, nargs="+", default=[1.0, 2.0],
                    help="guidance scales of the class-only floor")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--per-class", type=int, default=100, help="prompts per class")
    ap.add_argument("--cache", default=str(CACHE), help="folder of the cached samples")
    ap.add_argument("--out", default="out/ldm_eval.json", help="the table (JSON)")
    args = ap.parse_args(argv)
    keep_freed_memory()
    models = latent.load_models(args.ldm)
    _, _, thresholds = text_encoder.load_text_encoder(SHIPPED["clip"])
    clf = load_classifier(SHIPPED["classifier"])
    table = {"guidance": {}, "floor": {}, "ceiling": {}, "steps": args.steps,
             "n_per_class": args.per_class, "ldm": args.ldm}
    cache = Path(args.cache)
    for split in args.split:
        prompts, digits, labels = latent.evaluation_prompts(thresholds, args.per_class,
                                                            split=split)
        table["guidance"][split] = {}
        for w in args.guidance:
            x, seconds = _samples(models, prompts, w, cache / f"{split}_w{w:g}.npz", args.steps)
            table["guidance"][split][f"{w:g}"] = {**_score(x, prompts, labels, thresholds, clf,
                                                           split), "sample_seconds": seconds}
            print(split, w, json.dumps(table["guidance"][split][f"{w:g}"]), flush=True)
        table["floor"][split] = {}
        for w in args.floor_guidance:
            x, _ = _samples(models, latent.class_only(prompts), w,
                            cache / f"{split}_classonly_w{w:g}.npz", args.steps)
            table["floor"][split][f"{w:g}"] = _score(x, prompts, labels, thresholds, clf, split)
        recon = latent.decode(models["vae"][0], latent.encode(models["vae"][0], digits))
        table["ceiling"][split] = {"digits": latent.adherence(digits, prompts, thresholds, clf),
                                   "reconstructions": latent.adherence(recon, prompts,
                                                                       thresholds, clf)}
        print(split, "floor", json.dumps(table["floor"][split]), "ceiling",
              json.dumps(table["ceiling"][split]), flush=True)
    table["compute"] = step_times(repeats=1 if args.per_class < 10 else 5)
    print("compute", json.dumps(table["compute"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
