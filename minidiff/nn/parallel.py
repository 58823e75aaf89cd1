"""Data parallelism on one machine: each core computes the gradient of one shard of the batch.

A U-Net training step in NumPy is about half BLAS (the convolutions' GEMMs, which OpenBLAS runs
on every core) and half elementwise passes and copies (GroupNorm, SiLU, the shifted-row layout,
Adam), which NumPy runs on *one* core. Two processes with one BLAS thread each keep both cores
busy through the whole step: on the 2-core machine minidiff is built on, two batch-32 half steps
ran side by side in 0.78-0.80 s, against 1.09-1.77 s for one batch-64 step with two BLAS
threads.

The mathematics is one line. For a loss that is a mean over the batch, split into shards of
sizes ``n_k`` that add up to ``N``,

    L = sum_k (n_k / N) L_k,   so   grad L = sum_k (n_k / N) grad L_k,

and each ``grad L_k`` can be computed anywhere: data parallelism, as PyTorch's
DistributedDataParallel does it across machines (there with an all-reduce of the gradients).
``DataParallel`` is a drop-in for ``autograd.value_and_grad(loss)`` built from the standard
library: a ``concurrent.futures.ProcessPoolExecutor`` of fresh (spawned) processes with one BLAS
thread each, and ``multiprocessing.shared_memory`` blocks that hold the parameters (written by
the parent before each step) and one gradient slot per shard (written by whichever worker
computed that shard). The parent adds the slots up in a fixed order, so a run is as
deterministic as a single-process one (but not bit-identical to it: the additions happen in
another order).

Work with no sum to form — sampling batches of images — needs only a map: ``map_in_processes``
runs ``fn(*args)`` for each item in the same kind of one-thread worker.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import resource
import traceback
from multiprocessing import shared_memory

import numpy as onp

from . import conv_fast
from .tree import tree_leaves, tree_map, tree_structure

# OpenBLAS, OpenMP and MKL read these once, when the library loads: a worker must start with
# them set, so the parent sets them while it spawns its workers (``temporary_environ``).
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def shard_sizes(n, workers):
    """Sizes of ``workers`` contiguous shards of ``n`` items, as equal as possible (largest
    first), like ``numpy.array_split``."""
    q, r = divmod(n, workers)
    return [q + 1] * r + [q] * (workers - r)


def split_batch(batch, sizes):
    """The batch (a dict of arrays sharing their first axis) cut into consecutive shards."""
    bounds = onp.cumsum([0] + list(sizes))
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:],
                                                                     strict=True)]


def _layout(params):
    """The leaves' shapes and their offsets in one flat buffer; one dtype for all leaves."""
    leaves = tree_leaves(params)
    dtypes = {onp.asarray(leaf).dtype for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError("`params` must have one dtype for all leaves "
                         f"(got {sorted(map(str, dtypes))})")
    shapes = [onp.shape(leaf) for leaf in leaves]
    sizes = [int(onp.prod(s)) for s in shapes]
    return shapes, onp.cumsum([0] + sizes), dtypes.pop()


def _views(flat, structure, shapes, offsets):
    """The tree ``structure`` with each leaf a reshaped view into ``flat``."""
    leaves = iter(flat[a:b].reshape(s) for s, a, b in zip(shapes, offsets[:-1], offsets[1:],
                                                          strict=True))
    return tree_map(lambda _: next(leaves), structure)


def _pack(tree, out):
    """Copy the leaves of ``tree`` into the flat buffer ``out`` (in ``tree_leaves`` order)."""
    start = 0
    for leaf in tree_leaves(tree):
        leaf = onp.asarray(leaf)
        out[start:start + leaf.size] = leaf.ravel()
        start += leaf.size
    return out


def peak_kb():
    """This process's peak resident memory in KB: ``VmHWM`` from ``/proc/self/status`` where
    Linux has it (``ru_maxrss`` can still count the parent's memory from before the ``exec``),
    else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@contextlib.contextmanager
def temporary_environ(changes):
    """Set the environment variables in ``changes`` (``None`` removes one) for the duration of a
    block, then restore them: a spawned process (or a notebook kernel) inherits the environment
    of the moment it starts, so this is how a parent hands a child its settings."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        _set_environ(changes)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values):
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _pool(workers, initializer=None, initargs=(), ping=os.getpid):
    """A pool of ``workers`` spawned one-thread processes, all started now (each ``submit`` with
    no idle worker starts one, so ``workers`` pings start them inside ``temporary_environ``)."""
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
        initargs=initargs)
    with temporary_environ(_ONE_THREAD):
        pings = [pool.submit(ping) for _ in range(workers)]
    try:
        for f in pings:
            f.result()
    except Exception as err:  # noqa: BLE001 - a failing initializer breaks the pool
        pool.shutdown(cancel_futures=True)
        raise RuntimeError(f"a worker failed to start: {_cause(err)}") from err
    return pool


def _cause(err):
    """The worker's own traceback text (``concurrent.futures`` attaches it as the cause)."""
    return f"{err.__cause__}\n{err!r}" if err.__cause__ is not None else repr(err)




# ----------------------------------------------------------------------------- map


def map_in_processes(fn, items, workers=2, callback=None):
    """``[fn(*args) for args in items]``, computed by ``workers`` fresh processes with one BLAS
    thread each: for independent pieces of work (sampling batches) rather than one gradient.
    Results come back in order; ``callback(result)`` runs in the parent after each, in order.
    ``fn`` and the items must be picklable."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"`workers` must be a positive integer (got {workers!r})")
    items = [tuple(args) for args in items]
    results = []
    pool = _pool(min(workers, len(items)) or 1)
    try:
        futures = [pool.submit(fn, *args) for args in items]
        for f in futures:
            try:
                results.append(f.result())
            except Exception as err:  # noqa: BLE001
                raise RuntimeError(f"a map_in_processes worker failed:\n{_cause(err)}") from err
            if callback is not None:
                callback(results[-1])
    finally:
        pool.shutdown(cancel_futures=True)
    return results


# ----------------------------------------------------------------------------- gradients

_WORKER = {}  # a DataParallel worker's state, set once by _init_worker


def _init_worker(loss_factory_pickle, params_name, grads_name, structure, shapes, offsets,
                 dtype, slots):
    """Attach the shared blocks and build the loss. A failure is kept, not raised (an
    initializer that raises only breaks the pool, losing the traceback), and every task then
    raises it."""
    import autograd

    from .memory import keep_freed_memory

    keep_freed_memory()
    # this process's BLAS runs on one thread: the convolutions may accumulate their GEMMs inside
    # it. Training only: ``map_in_processes`` (sampling) keeps NumPy's order of additions, so a
    # model samples the same images, bit for bit, in one process or in workers.
    conv_fast.use_gemm_in_place(True)
    try:  # the worker shares the parent's resource tracker, which unlinks the blocks at the end
        p_shm = shared_memory.SharedMemory(name=params_name)
        g_shm = shared_memory.SharedMemory(name=grads_name)
        size = int(offsets[-1])
        params_flat = onp.ndarray((size,), dtype, buffer=p_shm.buf)
        _WORKER.update(value_and_grad=autograd.value_and_grad(pickle.loads(loss_factory_pickle)()),
                       params=_views(params_flat, structure, shapes, offsets),
                       grads=onp.ndarray((slots, size), dtype, buffer=g_shm.buf),
                       keep=(p_shm, g_shm))
    except Exception:  # noqa: BLE001
        _WORKER["error"] = traceback.format_exc()


def _ready():
    if "error" in _WORKER:
        raise RuntimeError(_WORKER["error"])
    return os.getpid()


def _shard_value_and_grad(slot, shard):
    """In a worker: the shard's loss; its gradient goes into gradient slot ``slot``."""
    _ready()
    value, grads = _WORKER["value_and_grad"](_WORKER["params"], shard)
    _pack(grads, _WORKER["grads"][slot])
    return float(value), os.getpid(), peak_kb()


class DataParallel:
    """``value_and_grad(params, batch)`` of a batch-mean loss, computed by ``workers`` processes.

    ``loss_factory()`` must build ``loss(params, batch)`` inside each worker, so it has to be
    picklable (a module-level function, or ``functools.partial`` of one). ``params`` fixes the
    tree's layout (all leaves of one dtype). The workers are spawned fresh, so a script that
    uses this needs no ``if __name__ == "__main__"`` guard beyond the usual one for
    ``multiprocessing``. Use as a context manager, or call ``close()``; ``peak_gb`` is then the
    sum of the workers' peak resident memory.
    """

    def __init__(self, loss_factory, params, workers=2):
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"`workers` must be a positive integer (got {workers!r})")
        self.workers, self.peak_gb, self._peaks = workers, None, {}
        self.structure = tree_structure(params)
        self.shapes, self.offsets, self.dtype = _layout(params)
        size, itemsize = int(self.offsets[-1]), onp.dtype(self.dtype).itemsize
        self._shm = [shared_memory.SharedMemory(create=True, size=max(1, size * itemsize)),
                     shared_memory.SharedMemory(create=True, size=max(1, workers * size
                                                                      * itemsize))]
        self._params_flat = onp.ndarray((size,), self.dtype, buffer=self._shm[0].buf)
        self._grads = onp.ndarray((workers, size), self.dtype, buffer=self._shm[1].buf)
        try:
            # the factory travels pickled, so that unpickling it (importing its module) happens
            # inside the initializer's error handling
            self._pool = _pool(workers, _init_worker,
                               (pickle.dumps(loss_factory), self._shm[0].name, self._shm[1].name,
                                self.structure, self.shapes, self.offsets, self.dtype, workers),
                               ping=_ready)
        except RuntimeError as err:
            self._pool = None
            self.close()
            raise RuntimeError(f"a DataParallel worker failed:\n{err}") from err

    def __call__(self, params, batch):
        if self._pool is None:
            raise RuntimeError("this DataParallel is closed")
        n = len(next(iter(batch.values())))
        if n < self.workers:
            raise ValueError(f"the batch must hold at least `workers` = {self.workers} items "
                             f"(got {n})")
        sizes = shard_sizes(n, self.workers)
        _pack(params, self._params_flat)  # the workers read the parameters from here
        futures = [self._pool.submit(_shard_value_and_grad, k, shard)
                   for k, shard in enumerate(split_batch(batch, sizes))]
        value = 0.0
        for f, size in zip(futures, sizes, strict=True):
            try:
                v, pid, peak = f.result()
            except Exception as err:  # noqa: BLE001
                for other in futures:
                    other.cancel()
                concurrent.futures.wait(futures)
                raise RuntimeError(f"a DataParallel worker failed:\n{_cause(err)}") from err
            value += size / n * v
            self._peaks[pid] = peak
        grad = self._grads[0] * (sizes[0] / n)  # slots added in a fixed order: deterministic
        for k in range(1, self.workers):
            grad += self._grads[k] * (sizes[k] / n)
        return value, _views(grad, self.structure, self.shapes, self.offsets)

    def close(self):
        """Stop the workers and free the shared memory (safe to call twice); records
        ``peak_gb``."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        self._params_flat = self._grads = None  # views into the blocks: released before close
        for shm in getattr(self, "_shm", []):
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()
        self._shm = []
        if self._peaks:
            self.peak_gb = sum(self._peaks.values()) / 1024**2

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
