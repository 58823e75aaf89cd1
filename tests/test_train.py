"""The training loop: determinism, bit-identical resume, and clear errors."""

import numpy as np
import pytest

from minidiff import datasets, nn, score, train
from minidiff.models import mlp


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    data = datasets.toy("moons", 512, rng)
    params = mlp.init(rng, hidden=16, depth=1, emb_dim=8)
    loss = score.ncsn_loss(mlp.apply)
    batch_fn = score.ncsn_batches(data, score.geometric_sigmas(2.0, 0.1, 5), batch_size=32)
    return loss, params, batch_fn


def _run(steps, state, **kw):
    loss, _, batch_fn = _setup()
    return list(train.train(loss, state, batch_fn, steps, lr=1e-2, warmup=5, clip=1.0, **kw))


def _same(a, b):
    return all(np.array_equal(x, y) and x.dtype == y.dtype
               for x, y in zip(nn.tree_leaves(a), nn.tree_leaves(b), strict=True))


def test_same_seed_gives_same_losses():
    _, params, _ = _setup()
    a = [r["loss"] for r in _run(20, train.init_state(params, seed=3))]
    b = [r["loss"] for r in _run(20, train.init_state(params, seed=3))]
    c = [r["loss"] for r in _run(20, train.init_state(params, seed=4))]
    assert a == b and a != c


def test_interrupted_run_resumes_bit_identical(tmp_path):
    _, params, _ = _setup()
    full = _run(30, train.init_state(params, seed=1))
    # Interrupt after step 12 (the loop checkpoints at 12), then resume from the file.
    ckpt = tmp_path / "run.npz"
    first = _run(12, train.init_state(params, seed=1), checkpoint_path=ckpt, checkpoint_every=12)
    resumed_state = train.load_state(ckpt)
    assert resumed_state.step == 12
    rest = _run(30, resumed_state)
    assert [r["loss"] for r in first + rest] == [r["loss"] for r in full]
    end, ref = rest[-1]["state"], full[-1]["state"]
    assert _same(end.params, ref.params) and _same(end.ema, ref.ema)
    assert _same(end.opt, ref.opt) and end.step == ref.step == 30
    assert end.rng.bit_generator.state == ref.rng.bit_generator.state


def test_training_reduces_the_loss():
    # Minibatch losses are noisy (random noise levels), so compare on one fixed large batch.
    loss, params, batch_fn = _setup()
    draws = [batch_fn(np.random.default_rng(i)) for i in range(64)]
    held_out = {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}  # 2048 points
    state, _ = train.fit(loss, train.init_state(params, 0), batch_fn, 300, lr=3e-3,
                         progress=False)
    # Measured: 1.06 before, 0.67 after 300 steps.
    assert loss(state.params, held_out) < 0.8 * loss(params, held_out)


def test_bad_arguments_and_nan_loss_are_reported(tmp_path):
    loss, params, batch_fn = _setup()
    state = train.init_state(params, 0)
    with pytest.raises(ValueError, match="`steps` must be a non-negative integer"):
        next(train.train(loss, state, batch_fn, -1))
    with pytest.raises(ValueError, match="`lr` must be positive"):
        next(train.train(loss, state, batch_fn, 5, lr=0.0))
    with pytest.raises(FloatingPointError, match="the loss is nan at step 0"):
        next(train.train(lambda p, b: np.nan * loss(p, b), state, batch_fn, 5))
    nn.checkpoint.save(tmp_path / "weights.npz", params)
    with pytest.raises(ValueError, match="is not a training state"):
        train.load_state(tmp_path / "weights.npz")


class _Clock:
    """A fake clock: each reading is one tick later, so a time budget is counted in readings
    (``train`` reads the clock once at the start and once after each step); from reading
    ``slow_after`` on, a tick is ``slow`` seconds (a machine whose speed changes after the plan:
    slower for ``slow > 1``, faster for ``slow < 1``)."""

    def __init__(self, slow_after=None, slow=1.0):
        self.now, self.readings, self.slow_after, self.slow = 0.0, 0, slow_after, slow

    def __call__(self):
        self.readings += 1
        slowed = self.slow_after is not None and self.readings > self.slow_after
        self.now += self.slow if slowed else 1.0
        return self.now


def test_time_budget_plans_the_run_and_resumes_bit_identical(tmp_path):
    _, params, _ = _setup()
    # One tick per step after the start reading. After plan_after = 5 steps (tick 6), steps 2-5
    # took 4 ticks and 40 - 5 = 35 remain, so the plan is 5 + 35 = 40 steps; the budget runs out
    # after step 40 (tick 41, 40 seconds after the start), exactly at the plan's end.
    ckpt = tmp_path / "budget.npz"
    planned = _run(None, train.init_state(params, seed=2), seconds=40.0, plan_after=5,
                   clock=_Clock(), cooldown=0.25, checkpoint_path=ckpt)
    assert [r["steps"] for r in planned[:4]] == [None] * 4
    assert planned[4]["steps"] == len(planned) == 40
    assert train.plan_of(ckpt) == {"steps": 40, "cooldown": 10, "seconds": 40.0, "planned": True}
    # The same run with its length given: identical numbers, the cool-down included.
    fixed = _run(40, train.init_state(params, seed=2), cooldown=10)
    assert [r["lr"] for r in planned] == [r["lr"] for r in fixed]
    assert [r["lr"] for r in fixed][-10:] == pytest.approx([1e-2 * k / 10 for k in range(10, 0,
                                                                                          -1)])
    assert _same(planned[-1]["state"].params, fixed[-1]["state"].params)
    # A budget that runs out first stops after a whole step and checkpoints; resuming with the
    # saved plan ends bit-identical to the uninterrupted run.
    cut = tmp_path / "cut.npz"
    first = _run(40, train.init_state(params, seed=2), cooldown=10, seconds=12.0,
                 clock=_Clock(), checkpoint_path=cut)
    assert len(first) == 12 and train.load_state(cut).step == 12
    assert train.plan_of(cut) == {"steps": 40, "cooldown": 10, "seconds": 12.0,
                                  "planned": False}
    rest = _run(40, train.load_state(cut), cooldown=10, spent=12.0)
    assert _same(rest[-1]["state"].params, fixed[-1]["state"].params)
    assert _same(rest[-1]["state"].ema, fixed[-1]["state"].ema)


def test_a_run_that_slows_after_its_plan_plans_again_and_ends_its_cooldown_with_the_budget(
        tmp_path):
    _, params, _ = _setup()
    # Steps 2-5 take 1 s each, so at step 5 (t = 6) the plan is 40 steps, 10 of them the
    # cool-down (as in the test above); from step 20 on a step takes 1.5 s. When the cool-down
    # would begin, after step 30 (t = 20 + 11 x 1.5 = 36.5), 40 - 35.5 = 4.5 s are left, three
    # steps at the 30.5 / 25 = 1.22 s a step measured since the plan (four at the plan's 1 s):
    # the run becomes 33 steps, the cool-down its last 3, and the budget runs out after step 33
    # (t = 41) as the rate reaches its last value, 1e-2 / 3. Without the second plan, steps
    # 30-32 would run at 1.0, 0.9 and 0.8 x 1e-2.
    ckpt = tmp_path / "slow.npz"
    rec = _run(None, train.init_state(params, seed=2), seconds=40.0, plan_after=5,
               clock=_Clock(slow_after=20, slow=1.5), cooldown=0.25, checkpoint_path=ckpt)
    assert len(rec) == 33 and [r["steps"] for r in rec[4:]] == [40] * 25 + [33] * 4
    assert [r["lr"] for r in rec[5:30]] == [1e-2] * 25
    assert [r["lr"] for r in rec[30:]] == pytest.approx([1e-2, 2e-2 / 3, 1e-2 / 3])
    assert train.plan_of(ckpt) == {"steps": 33, "cooldown": 3, "seconds": 40.0, "planned": True}
    # ...and the run with that schedule given is the same run, bit for bit.
    fixed = _run(33, train.init_state(params, seed=2), cooldown=3)
    assert _same(rec[-1]["state"].params, fixed[-1]["state"].params)
    # Without a cool-down there is nothing to re-plan: a machine that speeds up after the plan
    # (0.5 s a step from step 6 on) ends the planned 40 steps early, at the peak rate throughout.
    rec = _run(None, train.init_state(params, seed=2), seconds=40.0, plan_after=5,
               clock=_Clock(slow_after=6, slow=0.5), cooldown=0, checkpoint_path=ckpt)
    assert len(rec) == 40 and [r["lr"] for r in rec[5:]] == [1e-2] * 35
    assert train.plan_of(ckpt) == {"steps": 40, "cooldown": 0, "seconds": 22.5, "planned": True}


def _planned_run_stopped_at(path, step, every):
    """A 40 s budget on the one-tick clock (planned: 40 steps, the last 10 the cool-down),
    stopped after ``step`` steps with a checkpoint every ``every``."""
    loss, params, batch_fn = _setup()
    records = train.train(loss, train.init_state(params, seed=2), batch_fn, None, lr=1e-2,
                          warmup=5, clip=1.0, seconds=40.0, plan_after=5, clock=_Clock(),
                          cooldown=0.25, checkpoint_path=path, checkpoint_every=every)
    for _ in range(step):
        next(records)


def test_a_budgeted_run_resumed_before_its_cooldown_plans_afresh(tmp_path):
    # Resumed before its cool-down, a planned run plans again from its own speed (as it would
    # have at the cool-down); resumed in its cool-down, or with its length given, it keeps it.
    early, late = tmp_path / "early.npz", tmp_path / "late.npz"
    _planned_run_stopped_at(early, 12, every=10)  # the checkpoint holds step 10
    assert train.plan_of(early) == {"steps": 40, "cooldown": 10, "seconds": 10.0,
                                    "planned": True}
    assert train.budget(early, None, 0.25, minutes=40 / 60) == (None, 0.25, 10.0, 30.0)
    assert train.budget(early, 40, 10, minutes=40 / 60) == (40, 10, 10.0, 30.0)  # given
    assert train.budget(early, None, 0.25) == (40, 10, 10.0, None)  # no budget to plan from
    # the resumed run plans after 5 more steps (25 s left at t = 6) and ends with the budget
    rest = _run(None, train.load_state(early), seconds=30.0, spent=10.0, plan_after=5,
                clock=_Clock(), cooldown=0.25)
    assert len(rest) == 30 and rest[-1]["steps"] == 40
    assert rest[-1]["lr"] == pytest.approx(1e-2 / 10)
    _planned_run_stopped_at(late, 35, every=5)  # step 35, in the cool-down (steps 30-39)
    assert train.budget(late, None, 0.25, minutes=40 / 60) == (40, 10, 35.0, 5.0)
    _, params, _ = _setup()
    fixed = tmp_path / "fixed.npz"
    _run(40, train.init_state(params, seed=2), cooldown=10, seconds=12.0, clock=_Clock(),
         checkpoint_path=fixed)
    assert train.budget(fixed, None, 0.25, minutes=40 / 60) == (40, 10, 12.0, 28.0)


def test_a_small_budget_never_plans_a_cooldown_into_the_past():
    # 10 steps measured, 1 tick left: the plan cannot end before the steps already taken at the
    # full rate have left the cool-down behind (10 <= (1 - 0.5) * 20).
    assert train._planned(10, 1.0, 1.0, 0.5) == (20, 10)
    assert train._planned(10, 1.0, 1.0, 4) == (14, 4)
    assert train._planned(10, 100.0, 2.0, 0.2) == (60, 12)
    _, params, _ = _setup()
    loss, _, batch_fn = _setup()
    state = train.init_state(params, 0)
    with pytest.raises(ValueError, match="give `steps`, a time budget `seconds`, or both"):
        next(train.train(loss, state, batch_fn, None))
    with pytest.raises(ValueError, match="`seconds` must be a positive time budget"):
        next(train.train(loss, state, batch_fn, None, seconds=0))
    with pytest.raises(ValueError, match="`cooldown` must be .* a fraction in"):
        next(train.train(loss, state, batch_fn, 5, cooldown=1.5))
