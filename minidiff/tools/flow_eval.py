"""Chapter 10's measurements: three rectified-flow transformers at one budget, and reflow.

    python -m minidiff.tools.flow_eval table --models out/ch10/dit.npz out/ch10/mmdit.npz ...
                                       [--guidance 1.5 3] [--out out/ch10/flow_table.json]
    python -m minidiff.tools.flow_eval reflow --teacher out/ch10/mmdit.npz
                                       --student out/ch10/mmdit_reflow.npz [--out ...]
    python -m minidiff.tools.flow_eval walk --models out/ch11/{ddpm,vp_eps,...}.npz
                                       [--per-class 50] [--out out/ch11/walk.json]

**table**: for each model file, 1,000 held-out prompts of the validation digits (100 per class,
``latent.evaluation_prompts``) sampled at each ``--guidance`` (Euler, ``--steps`` steps, seed 0);
the scale with the lowest FD-MNIST on validation is then used on 1,000 prompts of the test digits
(reported, never chosen on). Beside quality: parameters, forward multiply-adds per image
(``tools.flops``), the measured training step at batch 128 in one process (the models timed in
turns, the median of five) and the recorded training time.

**reflow**: teacher (guided, at its pair guidance, chosen for the teacher on validation digits)
and reflowed student (guidance 1: the guidance is baked into its coupling) at 1, 2, 4 and 20
Euler steps, on the same test prompts and noise (a report: nothing is chosen on it): FD,
agreement, adherence, and the straightness ``S`` of each flow on the latents (``flow.straightness``
over 20 steps, 500 validation prompts).

**walk** (chapter 11): SiT's table in miniature (``walk``'s docstring).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as onp


def _score(x, prompts, labels, thresholds, clf, split):
    from minidiff import latent, metrics

    r = metrics.evaluate_samples(x, labels, clf, onp.random.default_rng(0), reference=split)
    return {"fd": r["fd"], "fd_real": r["fd_real"], "precision": r["precision"],
            "recall": r["recall"], **latent.adherence(x, prompts, thresholds, clf)}


def _prompts(thresholds, split, per_class):
    from minidiff import latent

    prompts, _, labels = latent.evaluation_prompts(thresholds, per_class, split=split)
    return prompts, labels


def _run(models, prompts, labels, thresholds, clf, split, steps, guidance, seed=0,
         solver="euler"):
    from minidiff import latent_flow

    t0 = time.perf_counter()
    x = latent_flow.sample(models, prompts, onp.random.default_rng(seed), steps=steps,
                           guidance=guidance, solver=solver)
    return {**_score(x, prompts, labels, thresholds, clf, split), "steps": steps,
            "guidance": guidance, "solver": solver,
            "sample_seconds": round(time.perf_counter() - t0, 1)}


def step_times(models, batch=128, repeats=5):
    """Median seconds of one training step (forward + backward of ``latent_flow.flow_loss``) per
    model at ``batch``, in one process, the models timed in turns."""
    import autograd

    from minidiff import latent_flow

    rng = onp.random.default_rng(0)
    b = {"xt": rng.standard_normal((batch, 4, 7, 7)).astype(onp.float32),
         "t": rng.uniform(size=batch).astype(onp.float32),
         "x0": rng.standard_normal((batch, 4, 7, 7)).astype(onp.float32),
         "eps": rng.standard_normal((batch, 4, 7, 7)).astype(onp.float32),
         "context": rng.standard_normal((batch, 12, 64)).astype(onp.float32),
         "mask": onp.ones((batch, 12), bool),
         "pooled": rng.standard_normal((batch, 64)).astype(onp.float32)}
    b.update(latent_flow.interpolants.Formulation().coefficients(b["t"], onp.float32))
    grads = {k: autograd.grad(lambda p, c=m["flow"][1]: latent_flow.flow_loss(c, p, b))
             for k, m in models.items()}
    times = {k: [] for k in models}
    for _ in range(repeats + 1):  # the first round warms up
        for k, m in models.items():
            t0 = time.perf_counter()
            grads[k](m["flow"][0])
            times[k].append(time.perf_counter() - t0)
    return {k: float(onp.median(v[1:])) for k, v in times.items()}


def compute(models):
    """Parameters and forward multiply-adds per image (12 caption tokens) of each model."""
    from minidiff import latent_flow
    from minidiff.nn import tree_size
    from minidiff.tools.flops import macs_per_image

    rng = onp.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 7)).astype(onp.float32)
    y = {"context": rng.standard_normal((2, 12, 64)).astype(onp.float32),
         "mask": onp.ones((2, 12), bool), "pooled": rng.standard_normal((2, 64)).astype("f4")}
    return {k: {"params": tree_size(m["flow"][0]),
                "gmacs_per_image": macs_per_image(
                    lambda m=m: latent_flow.apply(m["flow"][0], x, onp.full(2, 0.5, "f4"), y,
                                                  m["flow"][1]), 2)}
            for k, m in models.items()}


def table(args, thresholds, clf):
    from minidiff import latent_flow

    models = {Path(p).stem: latent_flow.load_models(p) for p in args.models}
    out = {"steps": args.steps, "per_class": args.per_class, "models": {}}
    val = _prompts(thresholds, "validation", args.per_class)
    test = _prompts(thresholds, "test", args.per_class)
    for name, m in models.items():
        meta = m["meta"]
        rows = {f"{w:g}": _run(m, *val, thresholds, clf, "validation", args.steps, w)
                for w in args.guidance}
        best = min(rows, key=lambda w: rows[w]["fd"])
        out["models"][name] = {
            "arch": meta["arch"], "density": meta["density"], "file": str(args.models[
                list(models).index(name)]), "train_seconds": meta["train_seconds"],
            "train_steps": meta["steps"], "workers": meta["workers"],
            "validation": rows, "chosen_guidance": float(best),
            "test": _run(m, *test, thresholds, clf, "test", args.steps, float(best))}
        print(name, json.dumps(out["models"][name]), flush=True)
    times, comp = step_times(models), compute(models)
    for name in models:
        out["models"][name].update(comp[name], step_seconds=times[name])
    return out


def reflow(args, thresholds, clf):
    from minidiff import flow, latent_flow

    teacher, student = (latent_flow.load_models(p) for p in (args.teacher, args.student))
    w = float(student["meta"]["pair_guidance"])
    out = {"teacher": args.teacher, "student": args.student, "pair_guidance": w, "rows": {}}
    for split in ("test",):  # a report: nothing is chosen here
        prompts, labels = _prompts(thresholds, split, args.per_class)
        out["rows"][split] = {
            f"{who} {n}": _run(m, prompts, labels, thresholds, clf, split, n, g)
            for n in args.steps for who, m, g in (("teacher", teacher, w),
                                                  ("student", student, 1.0))}
        print(split, json.dumps(out["rows"][split]), flush=True)
    prompts, _ = _prompts(thresholds, "validation", 50)
    z1 = onp.random.default_rng(1).standard_normal((len(prompts), 4, 7, 7)).astype("f4")
    out["straightness"] = {
        who: flow.straightness(latent_flow.guided_velocity(m, prompts, g), z1, steps=20)[0]
        for who, m, g in (("teacher", teacher, w), ("student", student, 1.0))}
    print("straightness", out["straightness"])
    return out


def walk(args, thresholds, clf):
    """Chapter 11: SiT's walk. Every model with the ODE (Heun, ``--steps`` steps), then the SDE
    with each diffusion coefficient (Euler–Maruyama, ``2 --steps`` steps: the same evaluations)
    on the model chosen by the ODE's validation FD among the velocity models on the linear and
    GVP paths, and ``g2`` on the VP ones (the only path whose ``g²`` stays finite at ``t = 1``);
    validation prompts throughout, the chosen model and sampler then on the test prompts."""
    from minidiff import latent_flow

    models = {Path(p).stem: latent_flow.load_models(p) for p in args.models}
    val = _prompts(thresholds, "validation", args.per_class)
    out = {"steps": args.steps, "per_class": args.per_class, "guidance": args.guidance,
           "rows": {}}

    def row(name, solver, split, prompts):
        m = models[name]
        steps = args.steps if solver == "heun" else 2 * args.steps
        r = _run(m, *prompts, thresholds, clf, split, steps, args.guidance, solver=solver)
        r.update(formulation=m["formulation"].name(), train_seconds=m["meta"]["train_seconds"],
                 train_steps=m["meta"]["steps"], model=name)
        print(name, solver, split, json.dumps(r), flush=True)
        return r

    for name in models:
        out["rows"][f"{name} ode"] = row(name, "heun", "validation", val)
    flows = [k for k, m in models.items() if m["formulation"].path != "vp"
             and m["formulation"].kind == "velocity"]
    best = min(flows, key=lambda k: out["rows"][f"{k} ode"]["fd"])
    for w in ("sigma", "1-t", "sin2"):
        out["rows"][f"{best} {w}"] = row(best, w, "validation", val)
    for name in (k for k, m in models.items() if m["formulation"].path == "vp"):
        out["rows"][f"{name} g2"] = row(name, "g2", "validation", val)
    chosen = min((k for k in out["rows"] if k.startswith(best + " ")),
                 key=lambda k: out["rows"][k]["fd"])
    out["chosen"] = chosen
    out["test"] = row(best, chosen.split(" ", 1)[1].replace("ode", "heun"), "test",
                      _prompts(thresholds, "test", args.per_class))
    return out


def main(argv=None):
    from minidiff.images import SHIPPED, load_classifier
    from minidiff.nn.memory import keep_freed_memory
    from minidiff.text_encoder import load_text_encoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table", help="the architectures at one budget")
    t.add_argument("--models", nargs="+", required=True, help="flow model files")
    t.add_argument("--guidance", type=float, nargs="+", default=[1.5, 3.0])
    t.add_argument("--steps", type=int, default=20, help="Euler steps")
    t.add_argument("--out", default="out/ch10/flow_table.json")
    r = sub.add_parser("reflow", help="a flow and its reflowed student")
    r.add_argument("--teacher", required=True)
    r.add_argument("--student", required=True)
    r.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 20])
    r.add_argument("--out", default="out/ch10/reflow.json")
    k = sub.add_parser("walk", help="chapter 11: SiT's walk, one axis at a time")
    k.add_argument("--models", nargs="+", required=True, help="flow model files")
    k.add_argument("--guidance", type=float, default=1.5)
    k.add_argument("--steps", type=int, default=20, help="Heun steps (the SDE takes twice)")
    k.add_argument("--out", default="out/ch11/walk.json")
    for p in (t, r, k):
        p.add_argument("--per-class", type=int, default=100, help="prompts per class")
    args = ap.parse_args(argv)
    keep_freed_memory()
    _, _, thresholds = load_text_encoder(SHIPPED["clip"])
    clf = load_classifier(SHIPPED["classifier"])
    result = {"table": table, "reflow": reflow, "walk": walk}[args.what](args, thresholds, clf)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
