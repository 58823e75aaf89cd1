"""One training loop for every chapter: a generator of records, resumable bit for bit.

    state = init_state(params, seed=0)
    for record in tqdm(train(loss, state, batch_fn, steps=2000), total=2000):
        ...                         # record: {"step", "loss", "grad_norm", "lr", "state"}

- ``loss(params, batch) -> scalar`` is a deterministic function: every random number it needs
  (data indices, noise levels, the noise itself) is drawn by ``batch_fn(rng)`` and handed in
  through ``batch``, so a loss can be gradient-checked and unit-tested.
- ``batch_fn(rng)`` draws from ``state.rng``, the one generator of the run; the checkpoint stores
  its state beside parameters, Adam moments, EMA and step, so an interrupted run resumes to
  exactly the numbers an uninterrupted one would have produced.
- Per step: gradient, optional clipping by global norm, learning-rate warm-up, Adam, EMA.
"""

import dataclasses
import math
import os

import autograd
import numpy as onp
from tqdm import tqdm

from .nn import (
    adam_init,
    adam_update,
    checkpoint,
    clip_by_global_norm,
    ema_decay,
    ema_update,
    lr_schedule,
    tree_map,
)


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a run needs to continue: parameters, Adam state, EMA, step count, generator.

    ``rng`` is the run's ``numpy.random.Generator``; it advances as batches are drawn, so it is
    shared by every state a run yields (the checkpoint captures its position at save time).
    """

    params: dict
    opt: dict
    ema: dict
    step: int
    rng: onp.random.Generator


def init_state(params, seed):
    """A fresh run: Adam at zero, EMA equal to the initial parameters, step 0."""
    rng = seed if isinstance(seed, onp.random.Generator) else onp.random.default_rng(seed)
    return TrainState(params, adam_init(params), tree_map(onp.copy, params), 0, rng)


def save_state(path, state, run=None):
    """Write a resumable checkpoint of ``state`` (atomic, no pickle; see ``nn.checkpoint``).
    ``run`` (JSON-able) records the arguments that define the run (``run_of`` reads them back),
    so that a later run can refuse to resume a checkpoint made with other arguments."""
    tree = {"params": state.params, "opt": state.opt, "ema": state.ema}
    rng_state = state.rng.bit_generator.state  # a dict of Python ints: JSON holds them exactly
    checkpoint.save(path, tree, step=int(state.step), rng=rng_state, run=run)


def run_of(path):
    """The ``run`` arguments a checkpoint was saved with (None if it recorded none)."""
    return checkpoint.load(path)[1].get("run")


def resume_or_init(path, run, init):
    """The state a run starts from: the checkpoint at ``path`` if there is one, else ``init()``.

    A checkpoint made with other ``run`` arguments is refused with a ``ValueError`` that names
    each one that differs (resuming it would train a different run and record false
    provenance); the total number of steps is not part of ``run``, so a finished run can be
    continued further. Temporary files left by a save that was killed are deleted first.
    Returns ``(state, resumed)``."""
    for stale in checkpoint.stale_temporaries(path):
        stale.unlink()
    if not os.path.exists(path):
        return init(), False
    saved = run_of(path) or {}
    differ = [k for k in run if k in saved and saved[k] != run[k]]
    if differ:
        raise ValueError(f"{path!s} is the checkpoint of another run ("
                         + ", ".join(f"--{k.replace('_', '-')} {saved[k]} there, {run[k]} here"
                                     for k in differ)
                         + "): pass --checkpoint for a new run, or delete it")
    return load_state(path), True


def load_state(path):
    """Read a checkpoint written by ``save_state`` back into a ``TrainState``."""
    tree, meta = checkpoint.load(path)
    if not ({"params", "opt", "ema"} <= set(tree) and {"step", "rng"} <= set(meta)):
        raise ValueError(f"checkpoint {str(path)!r} is not a training state "
                         f"(trees {sorted(tree)}, metadata {sorted(meta)})")
    bit_generator = getattr(onp.random, meta["rng"]["bit_generator"])()
    bit_generator.state = meta["rng"]
    return TrainState(tree["params"], tree["opt"], tree["ema"], int(meta["step"]),
                      onp.random.Generator(bit_generator))


def train(loss, state, batch_fn, steps, *, lr=1e-3, warmup=0, cooldown=0, clip=None, ema=0.999,
          ema_warmup=True, checkpoint_path=None, checkpoint_every=None, value_and_grad=None,
          run=None):
    """Run from ``state.step`` up to ``steps`` total steps, yielding one record per step.

    ``lr`` is the peak Adam rate, reached linearly over ``warmup`` steps and (``cooldown > 0``)
    brought down linearly to zero over the last ``cooldown`` steps (``nn.lr_schedule``); ``clip``
    is a maximum global gradient norm (``None``: no clipping); ``ema`` is the EMA decay (warmed
    up as in ``nn.ema_decay`` unless ``ema_warmup=False``). With ``checkpoint_path``, a
    resumable checkpoint is written every ``checkpoint_every`` steps and at the end, recording
    ``run`` (``save_state``).
    ``value_and_grad(params, batch)`` replaces ``autograd.value_and_grad(loss)`` (e.g.
    ``parallel.DataParallel``; ``loss`` is then not called).
    """
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"`steps` must be a non-negative integer (got {steps!r})")
    if not (isinstance(cooldown, int) and 0 <= cooldown):
        raise ValueError(f"`cooldown` must be a non-negative integer (got {cooldown!r})")
    if not lr > 0:
        raise ValueError(f"`lr` must be positive (got {lr!r})")
    if checkpoint_every is not None and not (isinstance(checkpoint_every, int)
                                             and checkpoint_every > 0):
        raise ValueError("`checkpoint_every` must be a positive integer "
                         f"(got {checkpoint_every!r})")
    if value_and_grad is None:
        value_and_grad = autograd.value_and_grad(loss)
    while state.step < steps:
        batch = batch_fn(state.rng)
        value, grads = value_and_grad(state.params, batch)
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {state.step}: lower `lr` "
                                     "or set `clip`")
        grads, grad_norm = clip_by_global_norm(grads, clip)
        lr_now = lr_schedule(state.step, lr, warmup, steps, cooldown)
        params, opt = adam_update(grads, state.opt, state.params, lr_now)
        ema_now = ema_update(state.ema, params, ema_decay(state.step, ema, ema_warmup))
        state = TrainState(params, opt, ema_now, state.step + 1, state.rng)
        if checkpoint_path is not None and (
            state.step == steps or (checkpoint_every and state.step % checkpoint_every == 0)
        ):
            save_state(checkpoint_path, state, run)
        yield {"step": state.step, "loss": value, "grad_norm": grad_norm, "lr": lr_now,
               "state": state}


def fit(loss, state, batch_fn, steps, *, progress=True, desc="train", **kwargs):
    """Run ``train`` to the end under a tqdm progress bar; returns ``(final_state, losses)``."""
    state_out, losses = state, []
    records = train(loss, state, batch_fn, steps, **kwargs)
    total = max(steps - state.step, 0)
    for record in tqdm(records, total=total, desc=desc, disable=not progress, mininterval=1.0):
        state_out = record["state"]
        losses.append(record["loss"])
    return state_out, onp.asarray(losses)


def fit_parallel(loss_factory, state, batch_fn, steps, workers=1, **kwargs):
    """``fit`` with the loss ``loss_factory()``, each batch split over ``workers`` processes when
    there are more than one (``nn.parallel.DataParallel``; ``loss_factory`` must then be
    picklable: a module-level function or a ``functools.partial`` of one)."""
    if workers == 1:
        return fit(loss_factory(), state, batch_fn, steps, **kwargs)
    from .nn.parallel import DataParallel

    with DataParallel(loss_factory, state.params, workers) as value_and_grad:
        return fit(None, state, batch_fn, steps, value_and_grad=value_and_grad, **kwargs)

