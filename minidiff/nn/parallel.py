"""Data parallelism on one machine: each core computes the gradient of one shard of the batch.

A U-Net training step in NumPy is about half BLAS (the convolutions' GEMMs, which OpenBLAS runs
on every core) and half elementwise passes and copies (GroupNorm, SiLU, the shifted-row layout,
Adam), which NumPy runs on *one* core. Two processes with one BLAS thread each keep both cores
busy through the whole step: on the 2-core machine minidiff is built on, two batch-32 half steps
ran side by side in 0.78-0.80 s, against 1.09-1.77 s for one batch-64 step with two BLAS
threads. (The two-thread step also varied more: OpenBLAS's threads slow down when the machine is
busy, single-threaded processes hardly.)

The mathematics is one line. For a loss that is a mean over the batch, split into shards of
sizes ``n_k`` that add up to ``N``,

    L = sum_k (n_k / N) L_k,   so   grad L = sum_k (n_k / N) grad L_k,

and each ``grad L_k`` can be computed anywhere. ``DataParallel`` is a drop-in for
``autograd.value_and_grad(loss)``: it ships the parameters to ``workers`` processes (raw bytes
through a pipe, about 5 MB for the U-Net), sends each one its shard, and adds the gradients up in
a fixed order, so a run is as deterministic as a single-process one (but not bit-identical to it:
the additions happen in another order).

Work with no sum to form — sampling batches of images — needs only a map: ``map_in_processes``
runs ``fn(*args)`` for each item in the same kind of one-thread worker.
"""

import os
import pickle
import resource
import subprocess
import sys
import traceback

import numpy as onp

from .tree import tree_leaves, tree_map, tree_structure

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


def _read_exactly(stream, buf):
    """Fill the writable buffer ``buf`` from ``stream`` (a pipe may deliver it in pieces)."""
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError("the pipe closed mid-message")
        got += n


def _peak_kb():
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


def _worker_main():
    """A worker (``python -m minidiff.nn.parallel``): read the loss factory and the parameters'
    layout, then for every (shard, parameters) message write the shard's loss and flat gradient.
    The protocol runs over stdin and a copy of stdout; the worker's own prints go to stderr."""
    import autograd

    from .memory import keep_freed_memory

    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    keep_freed_memory()

    def send(obj):
        pickle.dump(obj, out)
        out.flush()
    try:
        loss_factory, structure, shapes, offsets, dtype = pickle.load(inp)
        value_and_grad = autograd.value_and_grad(loss_factory())
        params_flat = onp.empty(int(offsets[-1]), dtype)
        params = _views(params_flat, structure, shapes, offsets)
        grad_flat = onp.empty_like(params_flat)
    except Exception:  # noqa: BLE001 - the parent re-raises it with this traceback
        send(("error", traceback.format_exc()))
        return
    send(("ready", None))
    try:
        while True:
            shard = pickle.load(inp)
            if shard is None:
                send(("peak_kb", _peak_kb()))
                return
            _read_exactly(inp, params_flat)
            try:
                value, grads = value_and_grad(params, shard)
                _pack(grads, grad_flat)
            except Exception:  # noqa: BLE001
                send(("error", traceback.format_exc()))
                continue
            send(("value", float(value)))
            out.write(memoryview(grad_flat).cast("B"))
            out.flush()
    except (BrokenPipeError, EOFError):
        return  # the parent went away (or gave up on this worker after another one failed)


def _spawn_worker(*flags):
    """A fresh ``python -m minidiff.nn.parallel`` with one BLAS thread, talking over pipes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **_ONE_THREAD)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "minidiff.nn.parallel", *flags],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def _map_worker_main():
    """A ``map_in_processes`` worker (``python -m minidiff.nn.parallel --map``): for every pickled
    ``(fn, args)`` write ``("value", fn(*args))`` or ``("error", traceback)``; ``None`` ends it."""
    from .memory import keep_freed_memory

    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    keep_freed_memory()
    try:
        while (task := pickle.load(inp)) is not None:
            fn, args = task
            try:
                reply = ("value", fn(*args))
            except Exception:  # noqa: BLE001 - the parent re-raises it with this traceback
                reply = ("error", traceback.format_exc())
            pickle.dump(reply, out)
            out.flush()
    except (BrokenPipeError, EOFError):
        return


def map_in_processes(fn, items, workers=2, callback=None):
    """``[fn(*args) for args in items]``, computed by ``workers`` fresh processes with one BLAS
    thread each: for independent pieces of work (sampling batches) rather than one gradient.
    In rounds: each worker gets one item, then the results are read back in order (so a worker
    never blocks on a full pipe while the parent writes to another). ``fn`` and the items must be
    picklable; ``callback(result)`` runs in the parent after each item."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"`workers` must be a positive integer (got {workers!r})")
    items = [tuple(args) for args in items]
    procs = [_spawn_worker("--map") for _ in range(min(workers, len(items)))]
    results = []
    try:
        for start in range(0, len(items), len(procs)):
            batch = items[start:start + len(procs)]
            for proc, args in zip(procs, batch, strict=False):
                pickle.dump((fn, args), proc.stdin)
                proc.stdin.flush()
            for proc, _ in zip(procs, batch, strict=False):
                try:
                    kind, payload = pickle.load(proc.stdout)
                except EOFError:
                    raise RuntimeError("a map_in_processes worker died without a message (its "
                                       "stderr above says why)") from None
                if kind == "error":
                    raise RuntimeError(f"a map_in_processes worker failed:\n{payload}")
                results.append(payload)
                if callback is not None:
                    callback(payload)
    finally:
        for proc in procs:
            try:
                pickle.dump(None, proc.stdin)
                proc.stdin.close()
            except OSError:
                pass
            proc.stdout.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return results


class DataParallel:
    """``value_and_grad(params, batch)`` of a batch-mean loss, computed by ``workers`` processes.

    ``loss_factory()`` must build ``loss(params, batch)`` inside each worker, so it has to be
    picklable (a module-level function, or ``functools.partial`` of one). ``params`` fixes the
    tree's layout (all leaves of one dtype). Each worker is a fresh ``python -m
    minidiff.nn.parallel`` with one BLAS thread (no ``if __name__ == "__main__"`` guard needed in
    the caller's script, unlike ``multiprocessing``'s spawn). Use as a context manager, or call
    ``close()``; ``peak_gb`` is then the sum of the workers' peak resident memory.
    """

    def __init__(self, loss_factory, params, workers=2):
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"`workers` must be a positive integer (got {workers!r})")
        self.workers = workers
        self.structure = tree_structure(params)
        self.shapes, self.offsets, self.dtype = _layout(params)
        self._params_flat = onp.empty(int(self.offsets[-1]), self.dtype)
        self._grads_flat = [onp.empty_like(self._params_flat) for _ in range(workers)]
        self.peak_gb = None
        self._procs = [_spawn_worker() for _ in range(workers)]
        setup = (loss_factory, self.structure, self.shapes, self.offsets, self.dtype)
        for proc in self._procs:
            self._send(proc, setup)
        for proc in self._procs:
            self._expect(proc, "ready")

    @staticmethod
    def _send(proc, obj):
        pickle.dump(obj, proc.stdin)
        proc.stdin.flush()

    def _expect(self, proc, kind):
        try:
            got, payload = pickle.load(proc.stdout)
        except EOFError:
            self.close()
            raise RuntimeError("a DataParallel worker died without a message (its stderr "
                               "above says why)") from None
        if got == "error":
            self.close()
            raise RuntimeError(f"a DataParallel worker failed:\n{payload}")
        if got != kind:
            self.close()
            raise RuntimeError(f"a DataParallel worker sent {got!r}, expected {kind!r}")
        return payload

    def __call__(self, params, batch):
        if not self._procs:
            raise RuntimeError("this DataParallel is closed")
        n = len(next(iter(batch.values())))
        if n < self.workers:
            raise ValueError(f"the batch must hold at least `workers` = {self.workers} items "
                             f"(got {n})")
        sizes = shard_sizes(n, self.workers)
        _pack(params, self._params_flat)
        for proc, shard in zip(self._procs, split_batch(batch, sizes), strict=True):
            pickle.dump(shard, proc.stdin)
            proc.stdin.write(memoryview(self._params_flat).cast("B"))
            proc.stdin.flush()
        value, grad = 0.0, None
        for proc, buf, size in zip(self._procs, self._grads_flat, sizes, strict=True):
            weight = size / n
            value += weight * self._expect(proc, "value")
            _read_exactly(proc.stdout, buf)
            grad = buf * weight if grad is None else grad + buf * weight
        return value, _views(grad, self.structure, self.shapes, self.offsets)

    def close(self):
        """Stop the workers (safe to call twice); records ``peak_gb``."""
        procs, self._procs = self._procs, []
        peaks = []
        for proc in procs:
            try:
                self._send(proc, None)
                kind, kb = pickle.load(proc.stdout)
                if kind == "peak_kb":
                    peaks.append(kb)
            except (OSError, EOFError, pickle.UnpicklingError):
                pass
            for stream in (proc.stdin, proc.stdout):
                stream.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if peaks:
            self.peak_gb = sum(peaks) / 1024**2

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


if __name__ == "__main__":
    _map_worker_main() if "--map" in sys.argv[1:] else _worker_main()
