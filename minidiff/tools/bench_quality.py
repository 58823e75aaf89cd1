"""``make bench-quality``: what a training budget buys, as FD-MNIST and class agreement.

    python -m minidiff.tools.bench quality --model unet --minutes 15 [--seeds 0 1]
                                           [--train-args "--num-res-blocks 2 --batch-size 64"]

For each seed: ``python -m minidiff train MODEL --minutes N`` with the model's recipe (below;
``--train-args`` adds to it or overrides it), the run's length planned from its own speed so the
cool-down ends with the budget; then the full sampling protocol (``sample --n 1000 --steps 100
--guidance 2``, the same starting noise for every run); then FD-MNIST and class agreement twice:
against the **validation digits** (the last 10,000 training digits, which no model here trains
on and which every choice between runs is made on) and against the **test digits** (reported
only). Step time alone is not the point: a faster step is worth what it adds to these numbers.

Everything goes to ``--out`` (``out/quality`` by default): the weights, the samples and
``report.json``. A run whose weights or samples are already there is not redone, so an
interrupted benchmark continues where it stopped, and seeds run in separate calls add up in one
report (with their mean). A folder belongs to one recipe: other settings in the same ``--out``
stop with an error rather than reuse weights trained otherwise.
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

# The recipes it trains, with the length left to the budget (data/weights/README.md, "Quality
# per CPU-minute"): the DiT's is the shipped DiT's; the U-Net's is the shipped U-Net's at the
# channels chosen for 15 minutes (16 32 32 against the shipped 32 64 64: more steps in the
# budget; validation ratio 2.46 against 3.01, the mean of two seeds each).
RECIPES = {
    "unet": "--workers 2 --batch-size 128 --lr 1e-3 --p-uncond 0.5 --cooldown 20% "
            "--channels 16 32 32",
    "dit": "--batch-size 64 --weighting min_snr",
}


def _run(argv):
    """``python -m minidiff ARGV`` in a subprocess (its own memory, its own progress bar)."""
    cmd = [sys.executable, "-m", "minidiff", *argv]
    print("$ python -m minidiff " + shlex.join(argv), flush=True)
    subprocess.run(cmd, check=True)


def score(samples, classifier, seed=0):
    """FD-MNIST, its ratio to the real-vs-real baseline and class agreement of an ``.npz`` of
    samples against the validation digits and against the test digits."""
    import numpy as np

    from minidiff import images, metrics
    from minidiff.datasets import load_samples

    pixels, labels = load_samples(samples)
    clf = images.load_classifier(classifier)
    out = {}
    for reference in ("validation", "test"):
        r = metrics.evaluate_samples(metrics.images_from_uint8(pixels), labels, clf,
                                     np.random.default_rng(seed), reference=reference)
        out[reference] = {"fd": round(r["fd"], 3), "fd_real": round(r["fd_real"], 3),
                          "ratio": round(r["fd"] / r["fd_real"], 3),
                          "agreement": round(r["agreement"], 4)}
    return out


def quality(model, minutes, seeds, out, train_args="", n=1000, steps=100, guidance=2.0,
            sample_workers=2, classifier=None):
    """Train, sample and score one run per seed; returns the rows written to
    ``out/report.json``."""
    from minidiff import images

    classifier = classifier or str(images.SHIPPED["classifier"])
    out.mkdir(parents=True, exist_ok=True)
    recipe = shlex.split(RECIPES[model]) + shlex.split(train_args)
    settings = {"model": model, "minutes": minutes, "recipe": " ".join(recipe), "n": n,
                "sample_steps": steps, "guidance": guidance}
    rows = _earlier_runs(out / "report.json", settings, seeds)
    for seed in seeds:
        weights = out / f"{model}_seed{seed}.npz"
        samples = out / f"{model}_seed{seed}_samples.npz"
        if not weights.exists():
            _run(["train", model, *recipe, "--minutes", f"{minutes:g}", "--seed", str(seed),
                  "--out", str(weights)])
        t1 = time.perf_counter()
        if not samples.exists():
            _run(["sample", "--weights", str(weights), "--n", str(n), "--steps", str(steps),
                  "--guidance", f"{guidance:g}", "--workers", str(sample_workers), "--out",
                  str(samples)])
        t2 = time.perf_counter()
        _, _, _, meta = images.load_model(weights)
        rows.append({"seed": seed, "steps": meta["steps"], "planned_steps": meta["planned_steps"],
                     "images_seen": meta["images_seen"], "train_seconds": meta["train_seconds"],
                     "sample_seconds": round(t2 - t1, 1) if t2 - t1 > 1 else None,
                     **score(samples, classifier)})
        print(format_row(model, rows[-1]), flush=True)
        rows.sort(key=lambda r: r["seed"])
        _write_report(out / "report.json", settings, rows)
    if len(rows) > 1:
        print(format_mean(rows), flush=True)
    return rows


def _earlier_runs(path, settings, seeds):
    """The rows of ``path`` for seeds other than ``seeds``, so that seeds run one call at a
    time add up in one report; an error if ``path`` holds runs of other settings (its cached
    weights and samples would be reused for a recipe they were not trained with)."""
    if not path.exists():
        _write_report(path, settings, [])  # claims the folder before anything is trained
        return []
    report = json.loads(path.read_text())
    earlier = {k: report.get(k) for k in settings}
    if earlier != settings:
        changed = ", ".join(f"{k} {earlier[k]!r} (now {v!r})" for k, v in settings.items()
                            if earlier[k] != v)
        raise ValueError(f"--out {path.parent} holds runs of other settings: {changed}; give a "
                         "new --out for a new recipe")
    return [r for r in report["runs"] if r["seed"] not in seeds]


def _write_report(path, settings, rows):
    """``report.json``: the settings, one row per seed and, over two seeds or more, their
    mean (written atomically: a new file renamed over the old)."""
    report = {**settings, "runs": rows}
    if len(rows) > 1:
        report["mean"] = mean_of(rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


def format_row(model, r):
    v, t = r["validation"], r["test"]
    return (f"{model} seed {r['seed']}: {r['steps']} steps ({r['images_seen']} images) in "
            f"{r['train_seconds'] / 60:.1f} min | validation FD-MNIST {v['fd']:.2f}, ratio "
            f"{v['ratio']:.2f}, agreement {100 * v['agreement']:.1f}% | test: {t['fd']:.2f}, "
            f"ratio {t['ratio']:.2f}, {100 * t['agreement']:.1f}%")


def mean_of(rows):
    """Each split's FD-MNIST, ratio and agreement averaged over the seeds' rows."""
    return {split: {k: round(sum(r[split][k] for r in rows) / len(rows), 4)
                    for k in ("fd", "ratio", "agreement")} for split in ("validation", "test")}


def format_mean(rows):
    mean = mean_of(rows)
    v, t = mean["validation"], mean["test"]
    return (f"mean of {len(rows)} seeds | validation ratio {v['ratio']:.2f}, agreement "
            f"{100 * v['agreement']:.1f}% | test: ratio {t['ratio']:.2f}, "
            f"{100 * t['agreement']:.1f}%")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidiff.tools.bench quality",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(RECIPES), default="unet")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-args", default="", help="added to the model's recipe")
    parser.add_argument("--n", type=int, default=1000, help="samples (a multiple of 10)")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2, help="sampling processes")
    parser.add_argument("--out", default="out/quality", help="folder for everything it writes")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive (got {args.minutes})")
    try:
        quality(args.model, args.minutes, args.seeds, Path(args.out), args.train_args, args.n,
                args.steps, args.guidance, args.workers)
    except ValueError as e:
        parser.error(str(e))
    print(f"-> {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
