"""The DiT scaling sweep (chapter 9): one DiT per patch x width, FD-MNIST against Gflops.

    python -m minidiff sweep [--shapes 7x64 4x128 ...] [--steps 1500] --out table.json

A tool, not a chapter: it trains several models with the chapter 6 recipe (``images.py``) and
scores them, the DiT paper's scaling experiment in miniature (Peebles & Xie 2023, figs. 2, 5, 8).
"""

import json
import time

import numpy as onp

from .. import metrics, nn, train
from ..images import sample, train_mnist
from ..models import dit
from ..nn import checkpoint

# (patch, width): 3.5 to 58 forward Mflops per image. (2, 128), 194 Mflops, costs as much to
# train as the other five together on 2 cores; add it with ``--shapes`` when there is time.
SWEEP_SHAPES = ((7, 64), (7, 128), (4, 64), (4, 128), (2, 64))
# beside (4, 64) with adaLN-zero and L_simple: the conditioning ablation and Min-SNR-5 weighting
ABLATION_SHAPES = ((4, 64, "cross_attention"), (4, 64, "in_context"),
                   (4, 64, "adaln_zero", "min_snr"))


def dit_sweep(images, labels, classifier_params, shapes=SWEEP_SHAPES + ABLATION_SHAPES, *,
              steps=1500, batch_size=32, lr=1e-3, seed=0, depth=4, heads=4, n_eval=200,
              eval_steps=50, guidance=2.0, progress=True):
    """The DiT paper's scaling experiment in miniature (Peebles & Xie 2023, figs. 2 and 8): train
    one DiT per ``(patch, width[, conditioning[, weighting]])`` (conditioning: the paper's fig. 5
    ablation, adaLN-zero if not given; weighting: ``images.train_mnist``'s) for the same ``steps``,
    sample ``n_eval`` images (equal per class; DDIM, ``eval_steps`` steps, guidance
    ``guidance``) from each EMA, and score them.

    Returns one row per model: its shape, parameter count, forward Gflops (``dit.gflops``),
    training seconds, final loss, FD-MNIST, the real-vs-real baseline at ``n_eval`` and the class
    agreement. Every model sees the same seed, batches and evaluation noise."""
    rows = []
    eval_labels = onp.repeat(onp.arange(10), n_eval // 10)
    for shape in shapes:
        patch, width, conditioning, weighting = (tuple(shape) + ("adaln_zero", None)[
            len(shape) - 2:])
        cfg = dit.DiTConfig(patch=patch, width=width, depth=depth, heads=heads,
                            conditioning=conditioning)
        params = dit.init(onp.random.default_rng(seed), cfg)
        t0 = time.perf_counter()
        state, losses = train_mnist(dit, cfg, train.init_state(params, seed), images, labels,
                                    steps, batch_size=batch_size, lr=lr, weighting=weighting,
                                    progress=progress,
                                    desc=f"DiT {patch}x{width} {conditioning}")
        seconds = time.perf_counter() - t0
        x = sample(dit.apply, state.ema, cfg, eval_labels, onp.random.default_rng(seed),
                   steps=eval_steps, guidance=guidance)
        r = metrics.evaluate_samples(x, eval_labels, classifier_params,
                                     onp.random.default_rng(seed))
        rows.append({"patch": patch, "width": width, "depth": depth, "heads": heads,
                     "conditioning": conditioning, "weighting": weighting or "none",
                     "tokens": cfg.tokens, "params": nn.tree_size(params),
                     "gflops": dit.gflops(cfg), "train_seconds": round(seconds, 1),
                     "final_loss": float(onp.mean(losses[-100:])), "fd": r["fd"],
                     "fd_real": r["fd_real"], "agreement": r["agreement"]})
    return rows


def save_sweep(path, rows, **meta):
    """The sweep's table as JSON (``{"meta": ..., "rows": [...]}``), written atomically."""
    text = json.dumps({"meta": meta, "rows": rows}, indent=1)
    checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def load_sweep(path):
    """``(rows, meta)`` from ``save_sweep``'s file."""
    with open(path) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path!r} is not a DiT sweep table (no `rows`)")
    return data["rows"], data.get("meta", {})


def parse_shape(spec):
    """``"PATCHxWIDTH[:conditioning[:weighting]]"`` (``4x128``, ``4x64:in_context``,
    ``4x64:adaln_zero:min_snr``) -> the tuple ``dit_sweep`` takes."""
    size, *rest = spec.split(":")
    try:
        patch, width = (int(v) for v in size.split("x"))
    except ValueError:
        raise ValueError("--shapes: expected PATCHxWIDTH[:conditioning[:weighting]] such as "
                         f"4x128, 4x64:in_context or 4x64:adaln_zero:min_snr (got {spec!r})"
                         ) from None
    return (patch, width, *rest)


def format_rows(rows):
    """The sweep's table as text, one model per line."""
    lines = [f"{'patch':>5} {'width':>5} {'conditioning':>15} {'weighting':>9} {'params':>8} "
             f"{'Gflops':>7} {'train s':>8} {'FD':>7} {'real':>6} {'agree':>6}"]
    for r in rows:
        lines.append(f"{r['patch']:5d} {r['width']:5d} {r['conditioning']:>15} "
                     f"{r['weighting']:>9} {r['params']:8d} {r['gflops']:7.4f} "
                     f"{r['train_seconds']:8.0f} {r['fd']:7.1f} {r['fd_real']:6.1f} "
                     f"{100 * r['agreement']:5.0f}%")
    return "\n".join(lines)
