"""Chapter 7's guidance trade-off on MNIST: one curve per kind of guidance.

    python -m minidiff.tools.guidance_curve [--only NAME ...] [--workers 2] --out curve.json

Every point is 1,000 images (100 per class) from the shipped U-Net, 50 DDIM steps, sampling seed
0 (the same starting noise at every point), scored by ``metrics.evaluate_samples`` twice: against
the validation digits (the last 10,000 training digits: the split to read choices from) and
against the test digits (reported). The kinds:

- ``cfg``: classifier-free guidance at scale ``w`` (``w = 0`` unconditional, ``1`` conditional);
- ``interval``: the same, guiding only where the noise level ``sigma / alpha`` lies in
  Kynkäänniemi et al.'s (2024) interval (0.28, 5.42] (the conditional model elsewhere);
- ``highnoise``: guiding only at steps 600 to 999 (``sigma / alpha`` above 6.2), where chapter 6
  found that this network decides the class, and the conditional model below;
- ``auto``: autoguidance (Karras et al. 2024): the U-Net guided by a small, briefly trained
  U-Net of the same family (``--bad``), both conditional;
- ``classifier``: classifier guidance (Dhariwal & Nichol 2021) of the unconditional U-Net by the
  noise-conditional classifier (``--noisy-classifier``).

Each point's samples are kept in ``--samples`` (default ``out/guidance_curve/``) with their
sampling time, and a point whose file is there is not sampled again; the table is written to
``--out`` (atomically) after every point.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as onp

from .. import datasets, images, metrics
from ..guidance import interval_from_ratios
from ..nn.checkpoint import atomic_write

N, STEPS, SEED = 1000, 50, 0
SIGMA_INTERVAL = (0.28, 5.42)  # Kynkäänniemi et al. 2024, their EDM2 interval (sigma frame)
POINTS = ([("cfg", w) for w in (0.0, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)]
          + [("auto", w) for w in (1.5, 2.0, 3.0, 4.0, 5.0)]
          + [("classifier", s) for s in (1.0, 3.0)]
          + [("interval", w) for w in (2.0, 3.0, 5.0)]
          + [("highnoise", w) for w in (2.0, 3.0, 5.0)])
HIGH_NOISE = (600, 1000)
POINTS_KINDS = ("cfg", "interval", "highnoise", "auto", "classifier")


def point_name(kind, w):
    return f"{kind}_w{w:g}"


def sample_point(kind, w, model, bad, noisy_classifier, workers, progress=None):
    """1,000 images for one point of the curve and the seconds they took."""
    apply, params, cfg, sched = model
    labels = onp.repeat(onp.arange(10), N // 10)
    kw = {}
    if kind == "interval":
        kw["guidance_interval"] = interval_from_ratios(sched, *SIGMA_INTERVAL)
    elif kind == "highnoise":
        kw["guidance_interval"] = HIGH_NOISE
    elif kind == "auto":
        kw["bad"] = bad
    elif kind == "classifier":
        kw["classifier"] = noisy_classifier
    elif kind != "cfg":
        raise ValueError(f"unknown kind of guidance {kind!r}")
    t0 = time.perf_counter()
    x = images.sample(apply, params, cfg, labels, onp.random.default_rng(SEED), steps=STEPS,
                      guidance=w, workers=workers, sched=sched, progress=progress, **kw)
    return x, labels, time.perf_counter() - t0


def evaluate_point(x, labels, classifier_params):
    """``evaluate_samples`` against the validation digits and against the test digits."""
    out = {}
    for ref in ("validation", "test"):
        r = metrics.evaluate_samples(x, labels, classifier_params, onp.random.default_rng(SEED),
                                     reference=ref)
        out[ref] = {"fd": r["fd"], "fd_real": r["fd_real"], "agreement": r["agreement"],
                    "precision": r["precision"], "recall": r["recall"],
                    "precision_real": r["precision_real"], "recall_real": r["recall_real"],
                    "between": r["spread"]["between"], "within": r["spread"]["within"],
                    "between_real": r["spread_real"]["between"],
                    "within_real": r["spread_real"]["within"], "fd_aligned": r["fd_aligned"]}
    return out


def _rel(path):
    """A path as the table records it: relative to the repository when inside it."""
    root = Path(__file__).resolve().parents[2]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=str(images.SHIPPED["unet"]), help="the guided model")
    p.add_argument("--bad", default=str(images.SHIPPED["unet_small"]),
                   help="autoguidance's weaker model (a U-Net file)")
    p.add_argument("--noisy-classifier", default=str(images.SHIPPED["noisy_classifier"]),
                   help="classifier guidance's noise-conditional classifier")
    p.add_argument("--classifier", default=str(images.SHIPPED["classifier"]),
                   help="the evaluator")
    p.add_argument("--only", nargs="+", default=None,
                   help="points to run, in this order, e.g. cfg_w2 auto_w3 (default: all)")
    p.add_argument("--workers", type=int, default=2, help="sampling processes")
    p.add_argument("--samples", default="out/guidance_curve", help="folder of the samples")
    p.add_argument("--out", default="out/guidance_curve.json", help="the table (JSON)")
    args = p.parse_args(argv)

    by_name = {point_name(k, w): (k, w) for k, w in POINTS}
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        p.error(f"--only: no such point {unknown} (the points: {' '.join(by_name)})")
    points = [by_name[n] for n in args.only] if args.only else POINTS  # in the order given
    apply, params, cfg, meta = images.load_model(args.weights)
    model = (apply, params, cfg, images.model_schedule(meta))
    bad = noisy = None
    if any(k == "auto" for k, _ in points):
        b_apply, b_params, b_cfg, _ = images.load_model(args.bad)
        bad = (b_apply, b_params, b_cfg)
    if any(k == "classifier" for k, _ in points):
        noisy = images.load_classifier(args.noisy_classifier, kind="noisy_classifier")
    clf = images.load_classifier(args.classifier)
    folder, out = Path(args.samples), Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.exists() else {"points": {}}
    table.update(protocol={"n": N, "ddim_steps": STEPS, "seed": SEED, "weights": _rel(args.weights),
                           "bad": _rel(args.bad), "noisy_classifier": _rel(args.noisy_classifier),
                           "interval_sigmas": SIGMA_INTERVAL,
                           "interval_steps": interval_from_ratios(model[3], *SIGMA_INTERVAL)})
    for kind, w in points:
        name = point_name(kind, w)
        path, timing = folder / f"{name}.npz", folder / f"{name}.seconds"
        if path.exists():
            pixels, labels = datasets.load_samples(path)
            x = metrics.images_from_uint8(pixels)
            seconds = float(timing.read_text()) if timing.exists() else None
        else:
            x, labels, seconds = sample_point(kind, w, model, bad, noisy, args.workers)
            datasets.save_samples(path, datasets.to_uint8(x[:, 0]), labels)
            atomic_write(timing, lambda f, s=seconds: f.write(f"{s:.1f}".encode()))
            x = metrics.images_from_uint8(datasets.to_uint8(x[:, 0]))  # as the file holds them
        row = {"kind": kind, "w": w, "sample_seconds": seconds, **evaluate_point(x, labels, clf)}
        table["points"][name] = row
        atomic_write(out, lambda f: f.write(json.dumps(table, indent=1).encode()))
        v, t = row["validation"], row["test"]
        print(f"{name}: validation FD {v['fd']:.2f} (real {v['fd_real']:.2f}), agreement "
              f"{100 * v['agreement']:.1f}%, P {v['precision']:.3f} R {v['recall']:.3f} | test FD "
              f"{t['fd']:.2f}, P {t['precision']:.3f} R {t['recall']:.3f} | "
              f"{seconds if seconds is None else round(seconds)} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
