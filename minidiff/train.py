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
- A time budget (``seconds``) stops a run after a whole step, checkpointed; with ``steps=None``
  the run's length is *planned* from the speed of its first steps, and planned again from the
  steps since when the cool-down begins, so the learning-rate cool-down ends when the budget
  does. The plan is saved with the checkpoint (``plan_of``), so a run resumed in its cool-down
  keeps the same schedule and stays bit-identical to one that was never stopped.
"""

import dataclasses
import math
import os
import time

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


def save_state(path, state, run=None, plan=None):
    """Write a resumable checkpoint of ``state`` (atomic, no pickle; see ``nn.checkpoint``).
    ``run`` (JSON-able) records the arguments that define the run (``run_of`` reads them back),
    so that a later run can refuse to resume a checkpoint made with other arguments; ``plan``
    records its length and the seconds spent so far (``plan_of``)."""
    tree = {"params": state.params, "opt": state.opt, "ema": state.ema}
    rng_state = state.rng.bit_generator.state  # a dict of Python ints: JSON holds them exactly
    checkpoint.save(path, tree, step=int(state.step), rng=rng_state, run=run, plan=plan)


def run_of(path):
    """The ``run`` arguments a checkpoint was saved with (None if it recorded none)."""
    return checkpoint.load(path)[1].get("run")


def plan_of(path):
    """``{"steps", "cooldown", "seconds", "planned"}`` of a checkpoint written by ``train``:
    the run's length and cool-down in steps (``steps`` None while not yet planned), the seconds
    of training it holds, and whether the length was planned from a time budget (rather than
    given). ``None`` for a checkpoint that recorded none."""
    return checkpoint.load(path)[1].get("plan")


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


def budget(path, steps=None, cooldown=0, minutes=None, default_steps=1600):
    """``(steps, cooldown, spent, seconds)`` for ``train`` from a command line's ``--steps``,
    ``--cooldown`` and ``--minutes``. A run resumed from the checkpoint ``path`` keeps the length
    and cool-down it had (unless ``steps`` is given) and spends only what is left of the budget;
    except that a length planned from a budget whose cool-down has not begun is planned afresh
    (``steps`` None), from the speed of the resumed run, as the run itself would have re-planned
    at the cool-down. With neither ``steps`` nor a budget the run is ``default_steps`` long."""
    meta = checkpoint.load(path)[1] if path else {}
    plan = meta.get("plan") or {}
    spent = plan.get("seconds") or 0.0
    replan = (minutes is not None and plan.get("planned") and plan.get("steps") is not None
              and meta["step"] < plan["steps"] - plan["cooldown"])
    if steps is None and plan.get("steps") is not None and not replan:
        steps, cooldown = plan["steps"], plan["cooldown"]
    elif steps is None and minutes is None:
        steps = default_steps
    seconds = None
    if minutes is not None:
        seconds = 60.0 * minutes - spent
        if seconds <= 0:
            raise ValueError(f"{path} has already trained {spent / 60:.1f} min, the whole "
                             f"--minutes {minutes:g}: raise --minutes, or give --steps without "
                             "it to train further")
    return steps, cooldown, spent, seconds


def _check_budget(steps, seconds, cooldown, spent):
    if steps is None and seconds is None:
        raise ValueError("give `steps`, a time budget `seconds`, or both (got neither)")
    if steps is not None and not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"`steps` must be a non-negative integer (got {steps!r})")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"`seconds` must be a positive time budget (got {seconds!r})")
    if not ((isinstance(cooldown, int) and cooldown >= 0)
            or (isinstance(cooldown, float) and 0 <= cooldown < 1)):
        raise ValueError("`cooldown` must be a non-negative number of steps or a fraction in "
                         f"[0, 1) of the run (got {cooldown!r})")
    if not spent >= 0:
        raise ValueError(f"`spent` must be the non-negative seconds already trained (got "
                         f"{spent!r})")


def _planned(step, seconds_left, per_step, cooldown):
    """The run's length when ``seconds_left`` remain at ``step``, each step taking ``per_step``
    seconds: as many steps as fit, but never so few that a step already taken at the full
    rate falls inside the cool-down (its rate would then have been wrong)."""
    horizon = step + max(0, int(seconds_left / per_step))
    if isinstance(cooldown, float):  # a fraction of the run: step <= (1 - f) horizon
        horizon = max(horizon, math.ceil(step / (1.0 - cooldown)))
        return horizon, round(cooldown * horizon)
    return max(horizon, step + cooldown), cooldown


_clock = time.perf_counter  # the budget's clock (a test replaces it with a fake one)


def train(loss, state, batch_fn, steps, *, lr=1e-3, warmup=0, cooldown=0, clip=None, ema=0.999,
          ema_warmup=True, checkpoint_path=None, checkpoint_every=None, value_and_grad=None,
          run=None, seconds=None, spent=0.0, plan_after=10, clock=None):
    """Run from ``state.step`` up to ``steps`` total steps, yielding one record per step.

    ``lr`` is the peak Adam rate, reached linearly over ``warmup`` steps and (``cooldown > 0``)
    brought down linearly to zero over the last ``cooldown`` steps (``nn.lr_schedule``; a float
    in ``[0, 1)`` is that fraction of ``steps``); ``clip`` is a maximum global gradient norm
    (``None``: no clipping); ``ema`` is the EMA decay (warmed up as in ``nn.ema_decay`` unless
    ``ema_warmup=False``). With ``checkpoint_path``, a resumable checkpoint is written every
    ``checkpoint_every`` steps and at the end, recording ``run`` and the plan (``save_state``).
    ``value_and_grad(params, batch)`` replaces ``autograd.value_and_grad(loss)`` (e.g.
    ``parallel.DataParallel``; ``loss`` is then not called).

    **Time budget.** With ``seconds``, the run stops after the first whole step that ends
    ``seconds`` after the call (on ``clock``, default ``time.perf_counter``), and checkpoints
    there. ``steps=None`` plans the
    length: after ``plan_after`` steps of this call, ``steps`` becomes the current step plus as
    many more as the measured speed fits into the budget (steps 2 to ``plan_after``, so the first
    step's start-up is not counted), and a fractional ``cooldown`` is resolved against it; until
    then the rate is the warm-up's and the constant, which no plan changes. When the planned
    cool-down is about to begin, the run is planned once more, from the speed of the steps since
    the plan (the first steps can run faster than the rest: at 5% too many, a 20% cool-down was
    cut a quarter short, its rate never reaching zero): the cool-down starts at once and takes
    as many steps as the time left holds, so that it ends with the budget. ``spent`` is the
    training time an earlier part of the run used (``plan_of(path)["seconds"]``): it is only
    recorded, so pass the remaining budget as ``seconds``. Each record carries ``"steps"`` (the
    plan, ``None`` before it is made) and ``"seconds"`` (``spent`` plus this call's time).
    """
    _check_budget(steps, seconds, cooldown, spent)
    if not lr > 0:
        raise ValueError(f"`lr` must be positive (got {lr!r})")
    if checkpoint_every is not None and not (isinstance(checkpoint_every, int)
                                             and checkpoint_every > 0):
        raise ValueError("`checkpoint_every` must be a positive integer "
                         f"(got {checkpoint_every!r})")
    if not (isinstance(plan_after, int) and plan_after >= 2):
        raise ValueError(f"`plan_after` must be an integer of at least 2 (got {plan_after!r})")
    if value_and_grad is None:
        value_and_grad = autograd.value_and_grad(loss)
    if steps is not None and isinstance(cooldown, float):
        cooldown = round(cooldown * steps)
    clock = clock or _clock
    start = clock()
    first_done, taken, since_plan, planned = None, 0, None, steps is None
    while steps is None or state.step < steps:
        batch = batch_fn(state.rng)
        value, grads = value_and_grad(state.params, batch)
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} at step {state.step}: lower `lr` "
                                     "or set `clip`")
        grads, grad_norm = clip_by_global_norm(grads, clip)
        # before the plan, no step can be in the cool-down (``_planned`` sees to it)
        lr_now = lr_schedule(state.step, lr, warmup, math.inf if steps is None else steps,
                             0 if steps is None else cooldown)
        params, opt = adam_update(grads, state.opt, state.params, lr_now)
        ema_now = ema_update(state.ema, params, ema_decay(state.step, ema, ema_warmup))
        state = TrainState(params, opt, ema_now, state.step + 1, state.rng)
        now, taken = clock(), taken + 1
        first_done = now if taken == 1 else first_done
        if steps is None and taken == plan_after:
            per_step = (now - first_done) / (plan_after - 1)
            steps, cooldown = _planned(state.step, seconds - (now - start), per_step, cooldown)
            since_plan = (state.step, now) if 0 < cooldown < steps - state.step else None
        elif since_plan and state.step == steps - cooldown:  # the cool-down begins: re-plan
            per_step = (now - since_plan[1]) / (state.step - since_plan[0])
            steps = state.step + max(1, int((seconds - (now - start)) / per_step))
            cooldown, since_plan = steps - state.step, None
        out_of_time = seconds is not None and now - start >= seconds
        done = steps is not None and state.step >= steps
        if checkpoint_path is not None and (
            done or out_of_time or (checkpoint_every and state.step % checkpoint_every == 0)
        ):
            plan = {"steps": steps, "cooldown": cooldown if steps is not None else None,
                    "seconds": round(spent + now - start, 3), "planned": planned}
            save_state(checkpoint_path, state, run, plan)
        yield {"step": state.step, "loss": value, "grad_norm": grad_norm, "lr": lr_now,
               "state": state, "steps": steps, "seconds": spent + now - start}
        if out_of_time:
            return


def fit(loss, state, batch_fn, steps, *, progress=True, desc="train", **kwargs):
    """Run ``train`` to the end under a tqdm progress bar; returns ``(final_state, losses)``."""
    state_out, losses = state, []
    records = train(loss, state, batch_fn, steps, **kwargs)
    total = None if steps is None else max(steps - state.step, 0)
    with tqdm(records, total=total, desc=desc, disable=not progress, mininterval=1.0) as bar:
        for record in bar:
            state_out = record["state"]
            losses.append(record["loss"])
            if record["steps"] is not None and bar.total != record["steps"] - state.step:
                bar.total = record["steps"] - state.step  # the plan was just made, or re-made
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

