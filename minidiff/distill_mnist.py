"""Chapter 12 on MNIST: the shipped U-Net as the teacher of few-step students.

The teacher is the shipped chapter 6 U-Net (noise prediction on DDPM's linear chain) with
classifier-free guidance folded in; every student is a U-Net of the same shape predicting v
(Salimans & Ho 2022, sec. 4: at high noise ``x0`` from ``eps`` divides by ``alpha ≈ 0.006``,
from ``v`` it does not), conditioned on the label, evaluated in the sigma frame at the chain's
fractional step (``samplers.denoiser_from_path``'s rule). The mathematics is in ``distill.py``;
this module is the glue: the guided teacher and the students as sigma-frame denoisers, their
losses, the two training recipes (``train_progressive``, ``train_consistency``) and sampling a
student file (``sample_student``). ``python -m minidiff.tools.few_step`` runs and measures them.
"""

import math

import numpy as onp
from autograd.tracer import getval

from . import samplers
from .distill import (
    GRIDS,
    consistency_batch,
    consistency_from_denoiser,
    multistep_sample,
    progressive_target,
    pseudo_huber,
    truncated_snr_weight,
)
from .targets import per_sample


def on_chain(chain, x, sigma):
    """``(z, t, alpha, sigma_vp)``: the sigma-frame state ``x`` at level ``sigma`` (per sample or
    scalar) as the chain's network sees it, ``z = alpha x`` at fractional step ``t``."""
    s = onp.broadcast_to(onp.asarray(getval(sigma), dtype=onp.float64), (len(x),))
    alpha = 1.0 / onp.sqrt(1.0 + s * s)
    t = onp.asarray(chain.t_from_ratio(s), dtype=onp.float32)
    alpha, sigma_vp = alpha.astype(x.dtype), (s * alpha).astype(x.dtype)
    return per_sample(alpha, x) * x, t, alpha, sigma_vp


def student_denoiser(apply, config, chain, kind="v"):
    """``denoise(params, x, sigma, labels)``: the network ``apply(params, z, t, labels, config)``
    predicting ``kind`` on ``chain``, as a sigma-frame denoiser (differentiable in ``params``)."""
    from .targets import convert

    def denoise(params, x, sigma, labels):
        z, t, alpha, sigma_vp = on_chain(chain, x, sigma)
        return convert(apply(params, z, t, labels, config), kind, "x0", z, alpha, sigma_vp)
    return denoise


def guided_teacher(model, labels, guidance=2.0):
    """``teacher(x, sigma)``: the shipped noise-prediction model ``(apply, params, config,
    sched)`` with classifier-free guidance ``w`` for ``labels``, as a sigma-frame denoiser
    clipped to the pixel range (the DDIM pipeline's ``x0`` clip; chapter 5)."""
    from .guidance import guided_eps
    from .targets import x0_from_eps

    apply, params, config, sched = model
    eps = guided_eps(apply, params, config, labels, guidance)

    def teacher(x, sigma):
        z, t, alpha, sigma_vp = on_chain(sched.path, x, sigma)
        return onp.clip(x0_from_eps(eps(z, t), z, alpha, sigma_vp), -1.0, 1.0)
    return teacher


def frozen_student(model, labels):
    """``teacher(x, sigma)`` from a student ``(denoise, params)``: the next round's teacher."""
    denoise, params = model
    return lambda x, sigma: onp.clip(denoise(params, x, sigma, labels), -1.0, 1.0)


def student_loss(mode, config_dict, schedule, sigma_min=None, huber_c=None):
    """The loss of a student batch (picklable, for ``train.fit_parallel``): ``mode``
    ``"regress"`` (``weight |D(x, sigma) - target|²``: progressive distillation and its
    first stage) or ``"consistency"`` (``pseudo_huber(f(x, sigma), target)``)."""
    import autograd.numpy as anp

    from .ddpm import schedule as make_schedule
    from .models import unet

    config = unet.UNetConfig(**config_dict)
    denoise = student_denoiser(unet.apply, config, make_schedule(**schedule).path)
    if mode == "regress":
        def loss(params, batch):
            err = anp.mean((denoise(params, batch["x"], batch["sigma"], condition(batch))
                            - batch["target"]) ** 2, axis=(1, 2, 3))
            return anp.mean(err * batch["weight"])
        return loss
    if mode != "consistency":
        raise ValueError(f"`mode` must be 'regress' or 'consistency' (got {mode!r})")
    f = consistency_from_denoiser(denoise, sigma_min)

    def loss(params, batch):
        return anp.mean(pseudo_huber(f(params, batch["x"], batch["sigma"], condition(batch)),
                                     batch["target"], huber_c))
    return loss


def condition(batch):
    """The student's condition in a flat batch (one whose entries all split along the first
    axis): the labels ``"y"``, or a caption's ``"context"`` and ``"mask"`` with the guidance
    scale ``"w"`` of a latent consistency model (``distill_latent``)."""
    if "y" in batch:
        return batch["y"]
    return {"context": batch["context"], "mask": batch["mask"], "guidance": batch["w"]}


def teacher_model(path):
    """``(apply, params, config, sched)`` of a shipped noise-prediction U-Net file."""
    from .images import load_model, model_schedule

    apply, params, config, meta = load_model(path)
    return apply, params, config, model_schedule(meta)


def fit_student(mode, state, batch_fn, steps, config, schedule, workers, checkpoint, run,
                lr, ema=0.999, **loss_kw):
    """Train a student on ``batch_fn``'s batches with ``student_loss(mode, ...)`` in ``workers``
    processes, resuming from ``checkpoint`` when it holds the same ``run``: ``(state, losses)``."""
    import functools

    from . import train

    state, resumed = train.resume_or_init(checkpoint, run, lambda: state)
    if resumed:
        print(f"resuming {checkpoint} at step {state.step}", flush=True)
    factory = functools.partial(student_loss, mode, config.to_dict(), schedule, **loss_kw)
    return train.fit_parallel(factory, state, batch_fn, steps, workers, lr=lr, warmup=20,
                              clip=1.0, ema=ema, checkpoint_path=checkpoint,
                              checkpoint_every=50, run=run, desc=run["stage"])


def _save_student(path, params, config, schedule, **distilled):
    from .images import save_model

    save_model(path, params, config, kind="unet", target="v", schedule=schedule,
               distilled=distilled)


def train_progressive(teacher_path, out_dir, *, base=16, final=2, grid="karras",
                      stage_steps=150, round_steps=150, batch_size=64, lr=2e-4, guidance=2.0,
                      workers=2, seed=0):
    """Guided progressive distillation of a noise-prediction U-Net file (Meng et al. 2023's two
    stages, Salimans & Ho 2022's rounds), writing ``out_dir/pd_{n}.npz`` for each student of
    ``n`` steps:

    1. ``pd_{base}``: a v-predicting student, started from the teacher's weights, regresses
       the guided teacher's clipped ``x0`` at the ``base`` levels of ``grid``
       (``truncated_snr_weight``): guidance folded into one network, one evaluation per step
       instead of two.
    2. Each round halves the steps: the student (started from its teacher) learns
       ``progressive_target`` of two of its teacher's DDIM steps, on every second level.

    A finished student's file is not trained again (the next round loads it); a round in progress
    resumes from ``out_dir/pd_state.npz``. Images are the first 50,000 training digits."""
    import time
    from pathlib import Path

    from .datasets import mnist
    from .images import load_model
    from .models import unet

    if base % final or (base // final) & (base // final - 1):
        raise ValueError(f"`base / final` must be a power of two (got {base} / {final})")
    teacher = teacher_model(teacher_path)
    _, t_params, config, sched = teacher
    schedule = load_model(teacher_path)[3].get("schedule", {"name": "linear", "T": 1000})
    chain = sched.path
    levels = GRIDS[grid](base, float(chain.ratios[0]), float(chain.ratios[-1]))
    data_x, data_y = mnist("fit")
    denoise = student_denoiser(unet.apply, config, chain)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "pd_state.npz"
    common = dict(grid=grid, base=base, guidance=guidance, teacher=str(teacher_path),
                  batch_size=batch_size, lr=lr, seed=seed)

    def draw(rng):
        idx = rng.integers(0, len(data_x), size=batch_size)
        return data_x[idx], data_y[idx]

    params, n = t_params, base
    while n >= final:
        path = out_dir / f"pd_{n}.npz"
        if path.exists():
            params = load_model(path)[1]
            n //= 2
            continue
        stride = base // n
        lv = levels[::stride]
        if n == base:
            def batch_fn(rng, lv=lv):
                x0, y = draw(rng)
                k = rng.integers(0, len(lv) - 1, size=len(x0))
                x = x0 + per_sample(lv[k].astype(onp.float32), x0) \
                    * rng.standard_normal(x0.shape).astype(onp.float32)
                return {"x": x, "sigma": lv[k], "y": y, "weight": truncated_snr_weight(lv[k]),
                        "target": guided_teacher(teacher, y, guidance)(x, lv[k])}
            stage, steps = f"guided {n}-step student", stage_steps
        else:
            frozen = params

            def batch_fn(rng, lv=lv, mid=levels[stride // 2::stride], frozen=frozen):
                x0, y = draw(rng)
                k = rng.integers(0, len(lv) - 1, size=len(x0))
                x = x0 + per_sample(lv[k].astype(onp.float32), x0) \
                    * rng.standard_normal(x0.shape).astype(onp.float32)
                target = progressive_target(frozen_student((denoise, frozen), y), x, lv[k],
                                            mid[k], lv[k + 1])
                return {"x": x, "sigma": lv[k], "y": y, "weight": truncated_snr_weight(lv[k]),
                        "target": target.astype(onp.float32)}
            stage, steps = f"round to {n} steps", round_steps
        from .train import init_state

        t0 = time.perf_counter()
        state, losses = fit_student("regress", init_state(params, seed + n), batch_fn, steps,
                                    config, schedule, workers, ckpt,
                                    {"stage": stage, "steps_student": n, **common}, lr)
        params = state.ema
        _save_student(path, params, config, schedule, method="progressive", steps=n,
                      levels=lv.tolist(), train_steps=steps, seconds=time.perf_counter() - t0,
                      final_loss=float(onp.mean(losses[-20:])) if len(losses) else None,
                      **common)
        ckpt.unlink(missing_ok=True)
        print(f"{path}: {steps} steps, {time.perf_counter() - t0:.0f} s", flush=True)
        n //= 2
    return out_dir


def consistency_grid(chain, levels):
    """Karras et al.'s grid of ``levels`` levels from the chain's largest ``sigma / alpha`` down
    to its smallest, ``sigma_min``, where the consistency function is the identity."""
    sigma_min = float(chain.ratios[0])
    grid = samplers.karras_sigmas(levels, sigma_min, float(chain.ratios[-1]))[:-1]
    grid[-1] = sigma_min  # exactly, not its rho-th power of a root: the boundary sits there
    return grid


def train_consistency(teacher_path, start_path, out, *, levels=18, steps=400, batch_size=64,
                      lr=1e-4, mu=0.95, guidance=2.0, workers=2, seed=0):
    """Guided consistency distillation (Song et al. 2023, Algorithm 2) of a noise-prediction
    U-Net file into ``out``: the student ``f = c_skip x + c_out D`` (``consistency_from_denoiser``
    on a v-predicting U-Net, started from ``start_path``, a guided student such as
    ``pd_{base}.npz``); the teacher's one Heun step between adjacent levels of Karras et al.'s
    grid with ``levels`` levels from the chain's largest ``sigma / alpha`` to its smallest (which
    is ``sigma_min``, where ``f(x) = x``); the target network is the EMA of the student with
    decay ``mu`` (the training state's EMA, without warm-up); the distance is ``pseudo_huber``
    with ``c = 0.00054 sqrt(d)`` (Song & Dhariwal 2023). Resumes from ``out`` + ``.state.npz``."""
    import time
    from pathlib import Path

    from .datasets import mnist
    from .images import load_model
    from .models import unet
    from .train import init_state

    teacher = teacher_model(teacher_path)
    _, _, config, sched = teacher
    schedule = load_model(teacher_path)[3].get("schedule", {"name": "linear", "T": 1000})
    chain = sched.path
    grid = consistency_grid(chain, levels)
    sigma_min, sigma_max = float(grid[-1]), float(grid[0])
    data_x, data_y = mnist("fit")
    f = consistency_from_denoiser(student_denoiser(unet.apply, config, chain), sigma_min)
    huber_c = 0.00054 * math.sqrt(28 * 28)
    out = Path(out)
    run = {"stage": "consistency distillation", "teacher": str(teacher_path),
           "start": str(start_path), "levels": levels, "batch_size": batch_size, "lr": lr,
           "mu": mu, "guidance": guidance, "seed": seed}
    state = init_state(load_model(start_path)[1], seed)
    target = {"params": state.ema}  # the EMA the next batch's targets come from

    def batch_fn(rng):
        idx = rng.integers(0, len(data_x), size=batch_size)
        x0, y = data_x[idx], data_y[idx]
        b = consistency_batch(guided_teacher(teacher, y, guidance),
                              lambda x, s: f(target["params"], x, s, y), x0, grid, rng)
        return {**b, "x": b["x"].astype(onp.float32), "y": y,
                "target": onp.asarray(b["target"], onp.float32)}

    t0 = time.perf_counter()
    state, _ = distil_consistency(state, config, schedule, batch_fn, target, steps, lr=lr,
                                  mu=mu, workers=workers, run=run, sigma_min=sigma_min,
                                  huber_c=huber_c,
                                  checkpoint=out.with_name(out.stem + ".state.npz"))
    _save_student(out, state.params, config, schedule, method="consistency",
                  sigma_min=sigma_min, sigma_max=sigma_max, levels_grid=levels, train_steps=steps,
                  seconds=time.perf_counter() - t0, **{k: v for k, v in run.items()
                                                      if k != "stage"})
    return out


def distil_consistency(state, config, schedule, batch_fn, target, steps, *, lr, mu, workers,
                       run, sigma_min, huber_c, checkpoint):
    """The loop of consistency distillation: ``batch_fn(rng)`` makes its targets with the
    parameters in ``target["params"]``, which follow the training state's EMA (decay ``mu``,
    no warm-up) after every step. Resumes from ``checkpoint``. Returns ``(state, losses)``."""
    import functools

    from . import train

    state, _ = train.resume_or_init(checkpoint, run, lambda: state)
    target["params"] = state.ema
    factory = functools.partial(student_loss, "consistency", config.to_dict(), schedule,
                                sigma_min=sigma_min, huber_c=huber_c)
    losses = []
    with _parallel(factory, state.params, workers) as value_and_grad:
        for record in train.train(None if workers > 1 else factory(), state, batch_fn, steps,
                                  lr=lr, warmup=20, clip=1.0, ema=mu, ema_warmup=False,
                                  checkpoint_path=checkpoint, checkpoint_every=50, run=run,
                                  value_and_grad=value_and_grad):
            target["params"] = record["state"].ema
            losses.append(record["loss"])
            if record["step"] % 25 == 0:
                print(f"step {record['step']}: loss {onp.mean(losses[-25:]):.4f}", flush=True)
            state = record["state"]
    return state, losses


def _parallel(factory, params, workers):
    import contextlib

    if workers == 1:
        return contextlib.nullcontext(None)
    from .nn.parallel import DataParallel

    return DataParallel(factory, params, workers)


def load_student(path):
    """``(denoise, params, meta)`` of a student file: ``denoise(params, x, sigma, labels)``."""
    from .images import load_model, model_schedule
    from .models import unet
    _, params, config, meta = load_model(path)
    if "distilled" not in meta or meta.get("target") != "v":
        raise ValueError(f"{path!s} is not a distilled student (written by "
                         "distill.train_progressive or distill.train_consistency)")
    return student_denoiser(unet.apply, config, model_schedule(meta).path), params, meta


def sample_student(path, labels, z, taus=(), rng=None):
    """Images for ``labels`` from unit noise ``z (N, 1, 28, 28)``: a progressive student by
    DDIM over its own levels, a consistency model by ``multistep_sample`` with ``taus``
    (``len(taus) + 1`` evaluations; ``rng`` draws the noise added between them)."""
    denoise, params, meta = load_student(path)
    d = meta["distilled"]
    labels = onp.asarray(labels)
    if d["method"] == "progressive":
        levels = onp.asarray(d["levels"])  # DDIM on them is Euler in the sigma frame
        x = samplers.euler(lambda x, s: onp.clip(denoise(params, x.astype(onp.float32), s,
                                                         labels), -1.0, 1.0),
                           levels[0] * z.astype(onp.float32), levels)
        return onp.clip(x, -1.0, 1.0).astype(onp.float32)
    f = consistency_from_denoiser(denoise, d["sigma_min"])
    clipped = lambda x, s: onp.clip(f(params, x.astype(onp.float32), s, labels), -1.0, 1.0)  # noqa: E731
    x = multistep_sample(clipped, d["sigma_max"] * z, d["sigma_max"], list(taus),
                         rng or onp.random.default_rng(0), d["sigma_min"])
    return x.astype(onp.float32)
