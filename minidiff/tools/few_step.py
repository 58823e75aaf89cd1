"""Chapter 12's measurements on MNIST: training-free solvers against the number of network
evaluations (NFE), and the distilled students against their teacher.

    python -m minidiff.tools.few_step solvers [--nfe 4 6 8 10 15 20 50] [--only ddim_karras ...]
    python -m minidiff.tools.few_step students out/ch12/pd_*.npz out/ch12/cd.npz

``solvers``: the shipped U-Net with classifier-free guidance 2, 1,000 images (100 per class),
starting noise from seed 0, the same noise for every point. The reference is the project's
standard protocol, 100 deterministic DDIM steps (``images.sample``). Each solver of
``distill.SOLVERS`` runs on each grid of ``distill.GRIDS`` from the chain's largest noise level
``sigma / alpha`` (157) to its smallest (0.01), then 0, with the denoiser clipped to the pixel
range (the sigma-frame form of the DDIM pipeline's ``x0`` clip; chapter 5). Every point is
scored by ``metrics.evaluate_samples`` against the validation digits (the split choices are read
from) and the test digits (reported), plus the root-mean-square pixel distance to the reference
image from the same noise (how closely the solver follows the ODE the reference solves finely).
Samples are kept in ``--samples``; a point whose file is there is not sampled again; the table is
rewritten (atomically) after every point.
"""

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as onp

from .. import datasets, distill, images, metrics
from ..guidance import guided_eps
from ..nn.checkpoint import atomic_write
from ..samplers import denoiser_from_path

N, SEED, GUIDANCE, REFERENCE_STEPS = 1000, 0, 2.0, 100
NFES = (4, 6, 8, 10, 15, 20, 50)
_MODEL = {}


def labels_and_noise():
    """The 1,000 labels (100 per class) and their starting noise, shared by every point."""
    labels = onp.repeat(onp.arange(10), N // 10)
    z = onp.random.default_rng(SEED).standard_normal((N, 1, 28, 28)).astype(onp.float32)
    return labels, z


def _model(weights):
    if weights not in _MODEL:
        apply, params, cfg, meta = images.load_model(weights)
        _MODEL[weights] = (apply, params, cfg, images.model_schedule(meta))
    return _MODEL[weights]


def clipped_denoiser(weights, labels, guidance=GUIDANCE):
    """``D(x, s)`` of the guided model in the sigma frame, clipped to ``[-1, 1]``, and its
    chain."""
    apply, params, cfg, sched = _model(weights)
    eps = guided_eps(apply, params, cfg, labels, guidance)
    net = denoiser_from_path(lambda xt, t: eps(xt.astype(onp.float32), t), "eps", sched.path)
    return (lambda x, s: onp.clip(net(x, s), -1.0, 1.0)), sched.path


def solve_piece(weights, solver, grid, nfe, labels, z):
    """One worker's share of a point: ``z`` (unit noise) solved to images."""
    denoiser, chain = clipped_denoiser(weights, labels)
    sigmas, _ = distill.solver_levels(solver, nfe, grid, chain.ratios[0], chain.ratios[-1])
    x = distill.solve(denoiser, solver, sigmas, sigmas[0] * z.astype(onp.float64))
    return onp.clip(x, -1.0, 1.0).astype(onp.float32)


def sample_point(weights, solver, grid, nfe, workers):
    labels, z = labels_and_noise()
    t0 = time.perf_counter()
    if solver == "reference":
        apply, params, cfg, sched = _model(weights)
        x = images.sample(apply, params, cfg, labels, onp.random.default_rng(SEED),
                          steps=REFERENCE_STEPS, guidance=GUIDANCE, workers=workers, sched=sched)
    else:
        from ..nn.parallel import map_in_processes

        pieces = [(weights, solver, grid, nfe, y, n) for y, n in
                  zip(onp.array_split(labels, 2 * workers), onp.array_split(z, 2 * workers),
                      strict=True)]
        x = onp.concatenate(map_in_processes(solve_piece, pieces, workers))
    return x, labels, time.perf_counter() - t0


def evaluate_point(x, labels, classifier_params, reference=None):
    """``evaluate_samples`` against the validation and the test digits, and the RMS pixel
    distance to ``reference`` images from the same noise."""
    out = {}
    for ref in ("validation", "test"):
        r = metrics.evaluate_samples(x, labels, classifier_params, onp.random.default_rng(SEED),
                                     reference=ref)
        out[ref] = {"fd": r["fd"], "fd_real": r["fd_real"], "agreement": r["agreement"],
                    "precision": r["precision"], "recall": r["recall"]}
    if reference is not None:
        out["rms_to_reference"] = float(onp.sqrt(onp.mean((x - reference) ** 2)))
    return out


def cached(folder, name, make):
    """Images and labels from ``folder/name.npz``, or made by ``make()`` and stored there (as
    uint8, so a later run reads the same images the first one scored)."""
    path, timing = folder / f"{name}.npz", folder / f"{name}.seconds"
    if not path.exists():
        x, labels, seconds = make()
        datasets.save_samples(path, datasets.to_uint8(x[:, 0]), labels)
        atomic_write(timing, lambda f: f.write(f"{seconds:.1f}".encode()))
    pixels, labels = datasets.load_samples(path)
    seconds = float(timing.read_text()) if timing.exists() else None
    return metrics.images_from_uint8(pixels), labels, seconds


def _print(name, row):
    v, t = row["validation"], row["test"]
    print(f"{name}: NFE {row.get('nfe')}, validation FD {v['fd']:.2f} (real {v['fd_real']:.2f}), "
          f"agreement {100 * v['agreement']:.1f}% | test FD {t['fd']:.2f}, agreement "
          f"{100 * t['agreement']:.1f}% | RMS to reference {row.get('rms_to_reference', 0):.3f} "
          f"| {row['sample_seconds']:.0f} s", flush=True)


def solvers(args):
    clf = images.load_classifier(args.classifier)
    folder, out = Path(args.samples), Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.exists() else {"points": {}}
    table["protocol"] = {"n": N, "seed": SEED, "guidance": GUIDANCE,
                         "reference": f"DDIM, {REFERENCE_STEPS} steps", "weights": args.weights}

    def record(name, row):
        table["points"][name] = row
        atomic_write(out, lambda f: f.write(json.dumps(table, indent=1).encode()))
        _print(name, row)

    ref_x, labels, seconds = cached(folder, "reference", functools.partial(
        sample_point, args.weights, "reference", None, None, args.workers))
    record("reference", {"solver": "ddim", "grid": "leading", "nfe": REFERENCE_STEPS,
                         "sample_seconds": seconds, **evaluate_point(ref_x, labels, clf)})
    combos = [(s, g) for s in distill.SOLVERS for g in distill.GRIDS]
    if args.only:
        combos = [c for c in combos if f"{c[0]}_{c[1]}" in args.only]
    for nfe in args.nfe:
        for solver, grid in combos:
            name = f"{solver}_{grid}_{nfe}"
            if name in table["points"] and not args.rescore:
                continue
            _, used = distill.solver_levels(solver, nfe, grid, 0.01, 157.0)
            x, labels, seconds = cached(folder, name, functools.partial(
                sample_point, args.weights, solver, grid, nfe, args.workers))
            record(name, {"solver": solver, "grid": grid, "nfe": used, "sample_seconds": seconds,
                          **evaluate_point(x, labels, clf, ref_x)})
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("solvers", help="training-free solvers against NFE")
    s.add_argument("--weights", default=str(images.SHIPPED["unet"].relative_to(
        images.WEIGHTS_DIR.parent.parent)))
    s.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    s.add_argument("--only", nargs="+", default=None, help="e.g. ddim_karras dpm3m_lambda")
    s.add_argument("--rescore", action="store_true", help="score points already in the table")
    for q in (s,):
        q.add_argument("--classifier", default=str(images.SHIPPED["classifier"]))
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--samples", default="out/few_step")
        q.add_argument("--out", default="out/few_step_solvers.json")
    args = p.parse_args(argv)
    return solvers(args)


if __name__ == "__main__":
    sys.exit(main())
