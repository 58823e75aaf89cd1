"""Data parallelism in one process: each shard of the batch has its gradient computed by a thread.

``nn.parallel`` splits a batch over processes; this module does the same with threads of the
process a notebook already runs in, and it is faster (no parameters or gradients to copy
through shared memory, no workers to spawn). It works because almost all of a step is NumPy
and BLAS code that releases Python's global lock while it runs: the GEMMs, the elementwise
passes, the copies. What two threads do not overlap is the Python around them (autograd's
tracing, a few percent of a U-Net step).

The one setting that matters is BLAS's own threads. OpenBLAS normally runs each GEMM on every
core; two threads that each start such a GEMM make four threads fight over two cores (measured:
a U-Net step went from 1.16 s to 1.90 s). So while the shards run, BLAS is held at one thread
(``threadpoolctl``, which knows how to reach whichever BLAS NumPy and SciPy loaded) and restored
after. The mathematics is ``nn.parallel``'s: for a batch-mean loss over shards of sizes ``n_k``,
``grad L = sum_k (n_k / N) grad L_k``, added up in a fixed order, so a run is deterministic
(though not bit-identical to the unsplit batch: the sums run in another order).

autograd counts the traces it has open in one global (``autograd.tracer.trace_stack``) and
updates it without a lock; two threads tracing at once could corrupt it. Importing this module
gives each thread its own counter (``_PerThreadTraceStack``): a trace never sees another
thread's boxes, so nothing else in autograd is shared.
"""

import concurrent.futures
import threading

import autograd
import autograd.tracer

from .parallel import shard_sizes, split_batch
from .tree import tree_leaves, tree_map, tree_structure


class _PerThreadTraceStack(threading.local, autograd.tracer.TraceStack):
    """autograd's trace counter, one per thread (``threading.local`` runs ``__init__`` again in
    each thread that touches it, starting its count at -1 as autograd's does)."""


if not isinstance(autograd.tracer.trace_stack, _PerThreadTraceStack):
    autograd.tracer.trace_stack = _PerThreadTraceStack()

_CONTROLLER = []  # threadpoolctl's view of the loaded BLAS libraries, made on first use


def one_blas_thread():
    """A context manager holding every loaded BLAS library at one thread for its duration."""
    if not _CONTROLLER:
        import scipy.linalg.blas  # noqa: F401  (loaded first, so its OpenBLAS is limited too)
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def map_in_threads(fn, items, threads=2, callback=None):
    """``[fn(*args) for args in items]`` on ``threads`` threads of this process, BLAS on one
    thread each; results in order, ``callback(result)`` called after each, in order."""
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"`threads` must be a positive integer (got {threads!r})")
    items, results = [tuple(args) for args in items], []
    if threads == 1 or len(items) <= 1:
        for args in items:
            results.append(fn(*args))
            if callback is not None:
                callback(results[-1])
        return results
    with one_blas_thread(), concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for result in pool.map(lambda args: fn(*args), items):
            results.append(result)
            if callback is not None:
                callback(result)
    return results


class ThreadParallel:
    """``value_and_grad(params, batch)`` of a batch-mean ``loss``, the batch split over
    ``threads`` threads (a drop-in for ``autograd.value_and_grad(loss)``, like
    ``nn.parallel.DataParallel``). A batch smaller than ``threads`` uses fewer."""

    def __init__(self, loss, threads=2):
        if not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"`threads` must be a positive integer (got {threads!r})")
        self.threads = threads
        self._value_and_grad = autograd.value_and_grad(loss)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads)

    def __call__(self, params, batch):
        if self._pool is None:
            raise RuntimeError("this ThreadParallel is closed")
        n = len(next(iter(batch.values())))
        sizes = shard_sizes(n, min(self.threads, n))
        if len(sizes) == 1:
            return self._value_and_grad(params, batch)
        with one_blas_thread():
            parts = list(self._pool.map(lambda shard: self._value_and_grad(params, shard),
                                        split_batch(batch, sizes)))
        value = sum(size / n * float(v) for size, (v, _) in zip(sizes, parts, strict=True))
        per_shard = [tree_leaves(g) for _, g in parts]
        leaves = []
        for k, first in enumerate(per_shard[0]):  # shards added in a fixed order
            total = first * (sizes[0] / n)
            for size, other in zip(sizes[1:], per_shard[1:], strict=True):
                total += other[k] * (size / n)
            leaves.append(total.astype(first.dtype, copy=False))
        it = iter(leaves)
        return value, tree_map(lambda _: next(it), tree_structure(parts[0][1]))

    def close(self):
        """Stop the threads (safe to call twice)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
