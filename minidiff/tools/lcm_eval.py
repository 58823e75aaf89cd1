"""Chapter 12's latent measurements: does the latent consistency model listen in 1-4 steps?

    python -m minidiff.tools.lcm_eval [--lcm out/ch12/lcm.npz] [--guidance 1.5 2 3]
                                      [--split validation test] [--out out/lcm_eval.json]

Chapter 8's protocol (``tools.latent_eval``): 100 digits of each class of a split give 1,000
held-out prompts (``latent.evaluation_prompts``), the starting latents come from seed 0 (the same
ones ``latent.sample`` draws), and every row records FD-MNIST against that split, class agreement
and attribute adherence (``latent.adherence``). At each guidance scale ``w``:

- **teacher**: chapter 8's latent model, guided DDIM in 50 steps (two network calls per step;
  the samples ``tools.latent_eval`` caches are reused), and in 4 and 2 steps (no training, few
  steps);
- **lcm**: the latent consistency model (``distill_latent.train_lcm``) with ``w`` as its input,
  in 1 evaluation and in 2 and 4 with each candidate re-noising schedule of
  ``tools.few_step.TAUS`` (one network call per evaluation).

The schedule for 2 and 4 evaluations is chosen on the validation prompts (lowest FD averaged
over the scales); the test split is scored with the chosen ones only. Samples are cached in
``--cache``.
"""

import argparse
import json
from pathlib import Path

import numpy as onp

from .few_step import TAUS
from .latent_eval import _samples, _score


def _lcm_samples(path, prompts, w, taus, cache):
    import time

    from .. import distill_latent

    if cache.exists():
        with onp.load(cache, allow_pickle=False) as f:
            return f["x"], float(f["seconds"])
    z = onp.random.default_rng(0).standard_normal((len(prompts), 4, 7, 7)).astype(onp.float32)
    t0 = time.perf_counter()
    x = distill_latent.sample_lcm(path, prompts, w, z, taus, onp.random.default_rng(1))
    seconds = time.perf_counter() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    onp.savez(cache, x=x, seconds=seconds)
    return x, seconds


def _name(taus):
    return f"lcm_{len(taus) + 1}" + (f"_tau{'-'.join(f'{t:g}' for t in taus)}" if taus else "")


def main(argv=None):
    from .. import latent, text_encoder
    from ..images import SHIPPED, load_classifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lcm", default="out/ch12/lcm.npz", help="latent consistency model file")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    ap.add_argument("--split", nargs="+", default=["validation", "test"],
                    choices=["validation", "test"])
    ap.add_argument("--cache", default="out/lcm_eval", help="folder of the cached samples")
    ap.add_argument("--teacher-cache", default="out/latent_eval",
                    help="the teacher's 50-step samples (shared with tools.latent_eval)")
    ap.add_argument("--out", default="out/lcm_eval.json", help="the table (JSON)")
    args = ap.parse_args(argv)
    teacher = latent.load_models(SHIPPED["ldm"])
    _, _, thresholds = text_encoder.load_text_encoder(SHIPPED["clip"])
    clf = load_classifier(SHIPPED["classifier"])
    cache, table = Path(args.cache), {"lcm": args.lcm, "rows": {}, "chosen_taus": {}}
    if Path(args.out).exists():  # keep the other split's rows (and the schedules chosen)
        table = {**table, **json.loads(Path(args.out).read_text())}
        table["rows"] = {k: v for k, v in table["rows"].items() if k not in args.split}
    for split in args.split:
        prompts, _, labels = latent.evaluation_prompts(thresholds, 100, split=split)
        rows = table["rows"].setdefault(split, {})
        for w in args.guidance:
            row = rows.setdefault(f"{w:g}", {})
            options = [()] + [t for k in (2, 4) for t in (
                TAUS[k] if split == "validation" else [tuple(table["chosen_taus"][str(k)])])]
            runs = [("teacher_50", 50, Path(args.teacher_cache) / f"{split}_w{w:g}.npz")]
            runs += [(f"teacher_{s}", s, cache / f"{split}_w{w:g}_ddim{s}.npz") for s in (4, 2)]
            runs += [(_name(t), t, cache / f"{split}_w{w:g}_{_name(t)}.npz") for t in options]
            for name, how, path in runs:
                x, seconds = _samples(teacher, prompts, w, path, how) if isinstance(how, int) \
                    else _lcm_samples(args.lcm, prompts, w, how, path)
                row[name] = r = {**_score(x, prompts, labels, thresholds, clf, split),
                                 "sample_seconds": seconds}
                hits = ", ".join(f"{a} {v['hit']:.2f}" for a, v in r["attributes"].items())
                print(f"{split} w={w:g} {name}: FD {r['fd']:.2f}, agreement "
                      f"{r['agreement']:.3f}, {hits} ({seconds:.0f} s)", flush=True)
        if split == "validation":
            for k in (2, 4):
                fd = {t: onp.mean([rows[w][_name(t)]["fd"] for w in rows]) for t in TAUS[k]}
                table["chosen_taus"][str(k)] = list(min(fd, key=fd.get))
            print("chosen taus:", table["chosen_taus"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
