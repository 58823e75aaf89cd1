"""Data parallelism: the gradient of a batch mean is the size-weighted mean of the shards'
gradients, computed in worker processes; training with workers is deterministic; failures in a
worker come back as errors that say so."""

import functools

import autograd
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff import ddpm, images, nn, train
from minidiff.models import unet
from minidiff.nn.parallel import DataParallel, shard_sizes, split_batch

TINY = unet.UNetConfig(resolution=8, channels=(4, 8), num_res_blocks=1, attention_levels=(1,),
                       head_channels=4, groups=2, num_classes=10)


def _batch(rng, n, dtype):
    pics = rng.uniform(-1, 1, (n, 1, 8, 8)).astype(dtype)
    batch = images.mnist_batches(ddpm.schedule("linear"), pics, rng.integers(0, 10, n),
                                   n)(rng)
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in batch.items()}


@given(st.integers(1, 500), st.integers(1, 8))
def test_shards_cover_the_batch_like_array_split(n, workers):
    sizes = shard_sizes(n, workers)
    assert sizes == [len(a) for a in np.array_split(np.arange(n), workers)]
    batch = {"x": np.arange(n), "y": -np.arange(n)}
    shards = split_batch(batch, sizes)
    assert np.array_equal(np.concatenate([s["x"] for s in shards]), batch["x"])
    assert np.array_equal(np.concatenate([s["y"] for s in shards]), batch["y"])


def test_sharded_gradient_equals_the_whole_batch_gradient(rng):
    # float64, and a batch of 7 over 2 workers (shards of 4 and 3): the weights n_k / N are what
    # make sum_k (n_k / N) grad L_k equal grad L; equal weights (1/2, 1/2) would be off by a
    # large fraction of the gradient here (measured 0.87 of the worst leaf's scale).
    params = nn.tree_map(lambda p: p + 0.05 * rng.standard_normal(p.shape),
                         unet.init(rng, TINY, dtype=np.float64))
    batch = _batch(rng, 7, np.float64)
    value, grads = autograd.value_and_grad(images.denoising_loss(unet.apply, TINY))(params, batch)
    factory = functools.partial(images.image_loss, "minidiff.models.unet", TINY)
    with DataParallel(factory, params, workers=2) as vg:
        value2, grads2 = vg(params, batch)
        # the workers see new parameters on every call
        moved = nn.tree_map(lambda p: 0.9 * p, params)
        value3, _ = vg(moved, batch)
    assert value2 == pytest.approx(value, rel=1e-12)
    for g, g2 in zip(nn.tree_leaves(grads), nn.tree_leaves(grads2), strict=True):
        assert g2.dtype == np.float64 and g2.shape == g.shape
        np.testing.assert_allclose(g2, g, rtol=1e-9, atol=1e-12)
    assert value3 == pytest.approx(images.denoising_loss(unet.apply, TINY)(moved, batch),
                                   rel=1e-12)
    assert 0 < vg.peak_gb < 2.0  # two small workers, summed


def test_training_with_workers_is_deterministic_and_matches_one_process(rng):
    pics = rng.uniform(-1, 1, (64, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    params = unet.init(np.random.default_rng(0), TINY)

    def run(workers):
        # batch 7: uneven shards (4 + 3); no warm-up and a large rate, so the parameters move far
        # enough for a wrong gradient to show (the first warm-up steps would hardly move them)
        state, losses = images.train_mnist(unet, TINY, train.init_state(params, 5), pics,
                                             labels, 4, batch_size=7, lr=1e-2, warmup=0,
                                             workers=workers, progress=False)
        return state.params, losses
    (pa, a), (pb, b), (p1, one) = run(2), run(2), run(1)
    assert a.tolist() == b.tolist()
    assert all(np.array_equal(x, y) for x, y in zip(nn.tree_leaves(pa), nn.tree_leaves(pb),
                                                    strict=True))
    # float32 sums in another order: the same trajectory to rounding (Adam's division by
    # sqrt(v) amplifies it in small-gradient leaves). Measured: largest parameter move 0.040,
    # largest two-worker vs one-process difference 2.9e-5 (7e-4 of the move); with the shard
    # weights set to (1/2, 1/2) the difference is 0.041, as large as the move itself.
    moved = max(float(np.abs(x - x0).max()) for x, x0 in zip(nn.tree_leaves(p1),
                                                             nn.tree_leaves(params), strict=True))
    apart = max(float(np.abs(x - y).max()) for x, y in zip(nn.tree_leaves(pa),
                                                           nn.tree_leaves(p1), strict=True))
    assert moved > 1e-2 and apart < 1e-2 * moved, (moved, apart)
    np.testing.assert_allclose(a, one, rtol=1e-4)


def test_bad_input_and_worker_failures_are_reported(rng):
    params = unet.init(rng, TINY)
    factory = functools.partial(images.image_loss, "minidiff.models.unet", TINY)
    with pytest.raises(ValueError, match="`workers` must be a positive integer"):
        DataParallel(factory, params, workers=0)
    mixed = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float64)}
    with pytest.raises(ValueError, match="one dtype for all leaves"):
        DataParallel(factory, mixed, workers=1)
    with pytest.raises(RuntimeError, match="worker failed(.|\n)*no_such_module"):
        DataParallel(functools.partial(images.image_loss, "no_such_module", TINY), params, 1)
    with DataParallel(factory, params, workers=2) as vg:
        with pytest.raises(ValueError, match="at least `workers` = 2 items"):
            vg(params, _batch(rng, 1, np.float32))
        wrong = _batch(rng, 4, np.float32)
        wrong["xt"] = wrong["xt"][:, :, :4]  # 8x4 pics for an 8x8 network
        with pytest.raises(RuntimeError, match="worker failed"):
            vg(params, wrong)
    with pytest.raises(RuntimeError, match="closed"):
        vg(params, _batch(rng, 4, np.float32))


def test_lr_schedule_warms_up_holds_and_cools_down():
    rates = [nn.lr_schedule(s, 1.0, 2, 10, 4) for s in range(10)]
    assert rates == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [nn.lr_schedule(s, 1.0, 2, 10) for s in range(10)] == [0.5] + [1.0] * 9
    with pytest.raises(ValueError, match="`cooldown` must be a non-negative number of steps"):
        next(train.train(lambda p, b: 0.0, train.init_state({"w": np.zeros(1)}, 0),
                         lambda r: {}, 3, cooldown=-1))


def test_map_in_processes_keeps_order_and_reports_worker_errors():
    import operator

    from minidiff.nn.parallel import map_in_processes

    seen = []
    got = map_in_processes(operator.mul, [(k, 10) for k in range(5)], workers=2,
                           callback=seen.append)
    assert got == seen == [0, 10, 20, 30, 40]
    assert map_in_processes(operator.neg, [(3,)], workers=4) == [-3]  # one item, one worker
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        map_in_processes(operator.truediv, [(1, 1), (1, 0)], workers=2)
    with pytest.raises(ValueError, match="`workers`"):
        map_in_processes(operator.neg, [(1,)], workers=0)


def test_workers_run_one_blas_thread_and_the_parent_keeps_its_environment(monkeypatch):
    import os

    from minidiff.nn.parallel import map_in_processes

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    got = map_in_processes(os.getenv, [("OPENBLAS_NUM_THREADS",), ("OMP_NUM_THREADS",)],
                           workers=2)
    assert got == ["1", "1"] and os.environ["OPENBLAS_NUM_THREADS"] == "2"


def test_closing_frees_the_shared_memory(rng):
    from multiprocessing import shared_memory

    params = unet.init(rng, TINY)
    factory = functools.partial(images.image_loss, "minidiff.models.unet", TINY)
    with DataParallel(factory, params, workers=2) as vg:
        names = [shm.name for shm in vg._shm]
        vg(params, _batch(rng, 4, np.float32))
    assert vg.peak_gb > 0
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=name)


def test_thread_parallel_gradient_equals_the_whole_batch_gradient(rng):
    # The same identity in threads of this process: float64, a batch of 7 over 3 threads
    # (shards 3, 2, 2); two calls at once would race on autograd's trace counter if it were
    # shared, so afterwards this thread's counter must be back where autograd starts it (-1).
    import autograd.tracer

    from minidiff.nn.threads import ThreadParallel, map_in_threads

    params = nn.tree_map(lambda p: p + 0.05 * rng.standard_normal(p.shape),
                         unet.init(rng, TINY, dtype=np.float64))
    batch = _batch(rng, 7, np.float64)
    loss = images.denoising_loss(unet.apply, TINY)
    value, grads = autograd.value_and_grad(loss)(params, batch)
    with ThreadParallel(loss, threads=3) as vg:
        runs = [vg(params, batch) for _ in range(3)]
        tiny = vg(params, {k: v[:2] for k, v in batch.items()})  # 2 items: 2 threads
    for value2, grads2 in runs:
        assert value2 == pytest.approx(value, rel=1e-12)
        for g, g2 in zip(nn.tree_leaves(grads), nn.tree_leaves(grads2), strict=True):
            assert g2.dtype == np.float64 and g2.shape == g.shape
            np.testing.assert_allclose(g2, g, rtol=1e-9, atol=1e-12)
    assert all(np.array_equal(a, b) for a, b in zip(nn.tree_leaves(runs[0][1]),
                                                      nn.tree_leaves(runs[2][1]), strict=True))
    assert tiny[0] == pytest.approx(loss(params, {k: v[:2] for k, v in batch.items()}),
                                    rel=1e-12)
    assert autograd.tracer.trace_stack.top == -1
    assert map_in_threads(lambda a, b: a - b, [(5, 1), (7, 2), (9, 3)]) == [4, 5, 6]
    with pytest.raises(RuntimeError, match="closed"):
        vg(params, batch)
    with pytest.raises(ValueError, match="`threads` must be a positive integer"):
        ThreadParallel(loss, threads=0)
