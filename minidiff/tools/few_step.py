"""Chapter 12's measurements on MNIST: training-free solvers against the number of network
evaluations (NFE), and the distilled students against their teacher.

    python -m minidiff.tools.few_step solvers [--nfe 4 6 8 10 15 20 50] [--only ddim_karras ...]
    python -m minidiff.tools.few_step students out/ch12/pd_*.npz out/ch12/cd.npz
    python -m minidiff.tools.few_step progressive | consistency | lcm   (training)

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

from .. import datasets, distill, distill_mnist, images, metrics
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


TAUS = {2: ((5.0,), (2.0,), (0.8,)), 4: ((20.0, 5.0, 1.5), (5.0, 2.0, 0.8), (2.0, 0.8, 0.3))}


def student_piece(path, taus, labels, z):
    return distill_mnist.sample_student(path, labels, z, taus, onp.random.default_rng(SEED + 1))


def teacher_piece(weights, levels, labels, z):
    denoiser, _ = clipped_denoiser(weights, labels)
    x = distill.solve(denoiser, "ddim", onp.asarray(levels), levels[0] * z.astype(onp.float64))
    return onp.clip(x, -1.0, 1.0).astype(onp.float32)


def _in_processes(fn, args, workers):
    from ..nn.parallel import map_in_processes

    labels, z = labels_and_noise()
    t0 = time.perf_counter()
    pieces = [(*args, y, n) for y, n in zip(onp.array_split(labels, 2 * workers),
                                            onp.array_split(z, 2 * workers), strict=True)]
    x = onp.concatenate(map_in_processes(fn, pieces, workers))
    return x, labels, time.perf_counter() - t0


def students(args):
    """Every student file: a progressive student by DDIM on its own levels, beside the teacher's
    guided DDIM on the same levels; a consistency model in 1, 2 and 4 evaluations, with each
    candidate of ``TAUS`` (the choice is read on the validation digits)."""
    clf = images.load_classifier(args.classifier)
    folder, out = Path(args.samples), Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.exists() else {"points": {}}
    ref_x = cached(folder, "reference", lambda: (_ for _ in ()).throw(
        FileNotFoundError("run `few_step solvers` first: it makes the reference")))[0]

    def record(name, row):
        table["points"][name] = row
        atomic_write(out, lambda f: f.write(json.dumps(table, indent=1).encode()))
        _print(name, row)

    for path in args.files:
        _, _, meta = distill_mnist.load_student(path)
        d, stem = meta["distilled"], Path(path).stem
        if d["method"] == "progressive":
            runs = [(stem, student_piece, (str(path), ()), d["steps"]),
                    (f"teacher_{stem}", teacher_piece, (d["teacher"], d["levels"]), d["steps"])]
        else:
            runs = [(f"{stem}_1", student_piece, (str(path), ()), 1)]
            runs += [(f"{stem}_{k}_tau{'-'.join(f'{t:g}' for t in taus)}", student_piece,
                      (str(path), taus), k) for k, options in TAUS.items() for taus in options]
        for name, fn, fn_args, nfe in runs:
            if name in table["points"] and not args.rescore:
                continue
            x, labels, seconds = cached(folder, name, functools.partial(
                _in_processes, fn, fn_args, args.workers))
            record(name, {"file": str(path), "method": d["method"], "nfe": nfe,
                          "taus": list(fn_args[1]) if fn is student_piece else None,
                          "sample_seconds": seconds, **evaluate_point(x, labels, clf, ref_x)})
    return 0


def summary(args):
    """The shipped table: both runs' points, the fewest evaluations each solver and grid needs
    to come within 10% of the reference's validation FD, and the consistency model's ``taus``
    with the lowest validation FD at 2 and 4 evaluations."""
    solvers_t = json.loads(Path(args.solvers).read_text())
    students_t = json.loads(Path(args.students).read_text())
    pts = solvers_t["points"]
    bar = 1.1 * pts["reference"]["validation"]["fd"]
    need = {}
    for solver in distill.SOLVERS:
        for grid in distill.GRIDS:
            rows = sorted((r["nfe"], r["validation"]["fd"]) for r in pts.values()
                          if r["solver"] == solver and r.get("grid") == grid)
            hit = [n for n, fd in rows if fd <= bar]
            need[f"{solver}_{grid}"] = (f"NFE {hit[0]}" if hit else
                                        f"not within 10% by NFE {rows[-1][0]}" if rows else "-")
    solvers_t["within_10_percent"] = need
    chosen = {}
    for k in ("2", "4"):
        rows = [(r["validation"]["fd"], r["taus"]) for r in students_t["points"].values()
                if r["method"] == "consistency" and str(r["nfe"]) == k]
        if rows:
            chosen[k] = min(rows)[1]
    students_t["chosen_taus"] = chosen
    table = {"solvers": solvers_t, "students": students_t}
    atomic_write(Path(args.out), lambda f: f.write(json.dumps(table, indent=1).encode()))
    print(json.dumps({"within_10_percent": need, "chosen_taus": chosen}, indent=1))
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
    t = sub.add_parser("students", help="distilled students against the teacher")
    t.add_argument("files", nargs="+", help="student files (distill_mnist.train_progressive/"
                   "train_consistency)")
    t.add_argument("--rescore", action="store_true")
    for q in (s, t):
        q.add_argument("--classifier", default=str(images.SHIPPED["classifier"]))
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--samples", default="out/few_step")
        q.add_argument("--out", default=f"out/few_step_{q.prog.split()[-1]}.json")
    sm = sub.add_parser("summary", help="both tables as one file, with the NFE each solver "
                        "needs and the consistency model's chosen taus")
    sm.add_argument("--solvers", default="out/few_step_solvers.json")
    sm.add_argument("--students", default="out/few_step_students.json")
    sm.add_argument("--out", default="out/few_step.json",
                    help="the shipped copy is data/weights/few_step.json (name it to replace it)")
    pd = sub.add_parser("progressive", help="train the progressive students (distill_mnist."
                        "train_progressive)")
    pd.add_argument("--out-dir", default="out/ch12")
    pd.add_argument("--base", type=int, default=8)
    pd.add_argument("--final", type=int, default=1)
    pd.add_argument("--grid", choices=sorted(distill.GRIDS), default="karras")
    pd.add_argument("--stage-steps", type=int, default=200)
    pd.add_argument("--round-steps", type=int, default=200)
    pd.add_argument("--lr", type=float, default=2e-4)
    cd = sub.add_parser("consistency", help="train a consistency model (distill_mnist."
                        "train_consistency)")
    cd.add_argument("--start", required=True, help="a guided student to start from (pd_N.npz)")
    cd.add_argument("--out", default="out/ch12/cd.npz")
    cd.add_argument("--steps", type=int, default=400)
    cd.add_argument("--levels", type=int, default=18)
    cd.add_argument("--mu", type=float, default=0.95)
    cd.add_argument("--lr", type=float, default=1e-4)
    lcm = sub.add_parser("lcm", help="train a latent consistency model of chapter 8's latent "
                         "model (distill_latent.train_lcm)")
    lcm.add_argument("--out", default="out/ch12/lcm.npz")
    lcm.add_argument("--stage-steps", type=int, default=300)
    lcm.add_argument("--steps", type=int, default=600)
    lcm.add_argument("--levels", type=int, default=18)
    lcm.add_argument("--w-range", type=float, nargs=2, default=[1.0, 3.0])
    for q in (pd, cd, lcm):
        q.add_argument("--teacher", default=str(images.SHIPPED[
            "ldm" if q is lcm else "unet"].relative_to(images.WEIGHTS_DIR.parent.parent)))
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "progressive":
        distill_mnist.train_progressive(
            args.teacher, args.out_dir, base=args.base, final=args.final, grid=args.grid,
            stage_steps=args.stage_steps, round_steps=args.round_steps,
            batch_size=args.batch_size, lr=args.lr, workers=args.workers, seed=args.seed)
        return 0
    if args.command == "consistency":
        distill_mnist.train_consistency(
            args.teacher, args.start, args.out, levels=args.levels, steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, mu=args.mu, workers=args.workers,
            seed=args.seed)
        return 0
    if args.command == "lcm":
        from .. import distill_latent

        distill_latent.train_lcm(args.teacher, args.out, levels=args.levels,
                                 w_range=tuple(args.w_range), stage_steps=args.stage_steps,
                                 steps=args.steps, batch_size=args.batch_size,
                                 workers=args.workers, seed=args.seed)
        return 0
    return {"solvers": solvers, "students": students, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
