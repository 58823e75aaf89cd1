"""``make bench``: speed and memory of a training step, as ratios within one run.

    python -m minidiff.tools.bench [--model unet dit] [--batch 64 128] [--workers 1 2] [--repeats 8]

Times one training step (forward, backward, Adam) of the default U-Net (chapter 6) and the default
DiT (chapter 9) in float32 at each batch size, reports samples per second and the peak resident
memory, and — where PyTorch is installed (``pip install torch==2.13.0`` into .venv; never a
dependency of minidiff) — times the identical architecture in PyTorch in the same run and prints
the ratio; the numpy step runs both in one process (the batch split over one thread per core,
BLAS on one thread each: ``nn.threads.ThreadParallel``, what a notebook runs) and split over two
worker processes with one BLAS thread each (``nn.parallel.DataParallel``, ``--workers``). Each
framework runs in its own subprocess (so peaks do not mix), and they take turns, one step each,
``--repeats`` times after two warm-up steps: on a shared machine whose speed drifts by tens of
percent from one minute to the next, steps timed side by side see the same machine, where two
back-to-back runs may not. The ratio is that of the median step times; the
range of the paired ratios (one step each, side by side) shows how much the machine moved.
Targets on a 2-core machine: U-Net ratio <= 2.0 and peak memory <= 1.0 GB at batch 64 (chapter 6);
DiT ratio <= 1.6 (chapter 9); and later U-Net <= 1.5 in one process and <= 1.2 with two workers,
DiT <= 1.3 and <= 1.0, peak memory not above PyTorch's.

    python -m minidiff.tools.bench quality --model unet --minutes 15

is the other benchmark: what a training budget buys (``tools/bench_quality.py``).
"""

import argparse
import json
import subprocess
import sys
import time

PAUSE = 0.3  # seconds between turns: idle BLAS / OpenMP threads of the other process stop spinning


def _numpy_stepper(model, batch, workers=1):
    """``(step, info, finish)``: one training step of the numpy model, its size, and a function
    that stops it and returns the extra peak memory of its worker processes (``workers > 1``:
    ``nn.parallel.DataParallel``, each worker one BLAS thread)."""
    import functools

    import numpy as np

    from minidiff import images, nn
    from minidiff.models import dit, unet
    from minidiff.nn.memory import keep_freed_memory

    keep_freed_memory()
    rng = np.random.default_rng(0)
    arch = unet if model == "unet" else dit
    cfg = unet.UNetConfig() if model == "unet" else dit.DiTConfig()
    params = arch.init(rng, cfg)
    opt = nn.adam_init(params)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    data = {"xt": x, "eps": rng.standard_normal(x.shape).astype(np.float32),
            "i": rng.integers(0, 1000, batch), "y": rng.integers(0, 11, batch)}
    state = {"params": params, "opt": opt}
    if workers == 1:  # one process, the batch split over its cores' threads (what a notebook runs)
        from minidiff.nn.threads import ThreadParallel

        value_and_grad = ThreadParallel(images.denoising_loss(arch.apply, cfg),
                                        images.default_threads())

        def finish():
            value_and_grad.close()
            return 0.0
    else:
        from minidiff.nn.parallel import DataParallel

        factory = functools.partial(images.image_loss, arch.__name__, cfg)
        value_and_grad = DataParallel(factory, params, workers)

        def finish():
            value_and_grad.close()
            return value_and_grad.peak_gb

    def step():
        _, g = value_and_grad(state["params"], data)
        state["params"], state["opt"] = nn.adam_update(g, state["opt"], state["params"], 1e-4)
    return step, {"params": nn.tree_size(params)}, finish


def _torch_stepper(model, batch):
    """``(step, info)``: one training step of the PyTorch twin, its size and thread count."""
    import torch

    from minidiff.tools.torch_twins import TorchDiT, TorchUNet

    torch.manual_seed(0)
    model = TorchUNet() if model == "unet" else TorchDiT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 28, 28)
    eps = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,)).float()
    y = torch.randint(0, 11, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ((model(x, t, y) - eps) ** 2).mean()
        loss.backward()
        opt.step()
    return step, {"params": sum(p.numel() for p in model.parameters()),
                  "threads": torch.get_num_threads()}


def _peak_gb():
    # VmHWM, not ru_maxrss: a child started by this benchmark's process (which has imported
    # PyTorch) keeps that process's peak in ru_maxrss across the exec
    from minidiff.nn.parallel import peak_kb

    return peak_kb() / 1024**2  # KB -> GB


def _numpy_step(model, batch, repeats):
    """The numpy step alone, in this process: median seconds over ``repeats`` after two warm-up
    steps, the peak memory so far, the parameter count."""
    step, info, finish = _numpy_stepper(model, batch)
    times = []
    for k in range(repeats + 2):
        t0 = time.perf_counter()
        step()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    finish()
    return {"seconds": sorted(times)[len(times) // 2], "peak_gb": _peak_gb(), **info}


def _serve(which, model, batch, workers=1):
    """A child process: builds the model, then for each line ``k`` on stdin runs ``k`` steps and
    prints their times as one JSON line; at the end of stdin, prints its size and peak memory
    (its own plus its workers')."""
    if which == "numpy":
        step, info, finish = _numpy_stepper(model, batch, workers)
    else:
        (step, info), finish = _torch_stepper(model, batch), lambda: 0.0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)
    extra = finish()
    print(json.dumps({**info, "peak_gb": _peak_gb() + extra}), flush=True)


class _Child:
    """One framework's step server (``_serve``) in a subprocess."""

    def __init__(self, which, model, batch, workers=1):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "minidiff.tools.bench", "--child", which, "--model", model,
             "--batch", str(batch), "--workers", str(workers)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.error = None
        self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            self.error = err[-1] if err else "failed"
            return None
        return json.loads(line)

    def steps(self, k):
        if self.error:
            return None
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.error:
            return None
        self.proc.stdin.close()
        info = self._read()
        self.proc.wait()
        return info


def _median(v):
    v = sorted(v)
    return 0.5 * (v[(len(v) - 1) // 2] + v[len(v) // 2])


def _compare(model, batch, repeats, have_torch, workers=(1, 2)):
    """Warm-up, then ``repeats`` turns of one step of each numpy variant (one process; ``k``
    worker processes) and one PyTorch step; one report line."""
    kids = {w: _Child("numpy", model, batch, w) for w in workers}
    if have_torch:
        kids["torch"] = _Child("torch", model, batch)
    times = {k: [] for k in kids}
    for turn in range(repeats + 2):
        for name, kid in kids.items():
            got = kid.steps(1)
            if got is not None and turn >= 2:
                times[name] += got
            time.sleep(PAUSE)
    info = {name: kid.close() for name, kid in kids.items()}
    parts = []
    for w in workers:
        label = "minidiff" if w == 1 else f"minidiff, {w} workers"
        if info[w] is None:
            parts.append(f"{label} failed: {kids[w].error}")
            continue
        sec = _median(times[w])
        part = (f"{label} {sec:.3f} s/step ({batch / sec:.0f} samples/s), peak "
                f"{info[w]['peak_gb']:.2f} GB")
        if have_torch and info["torch"] is not None:
            tsec = _median(times["torch"])
            paired = sorted(a / b for a, b in zip(times[w], times["torch"], strict=True))
            part += f", ratio {sec / tsec:.2f} (paired steps {paired[0]:.2f}-{paired[-1]:.2f})"
        parts.append(part)
    n_params = next((i["params"] for w, i in info.items() if w != "torch" and i), None)
    line = f"batch {batch:4d}: " + " | ".join(parts)
    if n_params is not None:
        line += f" | {n_params / 1e6:.2f}M params"
    if have_torch and info["torch"] is None:
        line += f" | PyTorch failed: {kids['torch'].error}"
    elif have_torch:
        line += (f" | PyTorch {_median(times['torch']):.3f} s/step, peak "
                 f"{info['torch']['peak_gb']:.2f} GB ({info['torch']['threads']} threads)")
    return line


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["quality"]:
        from minidiff.tools import bench_quality

        return bench_quality.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", nargs="+", choices=["unet", "dit"], default=["unet", "dit"])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="numpy variants: 1 = one process (two BLAS threads), k = k worker "
                             "processes with one BLAS thread each (default: 1 2)")
    parser.add_argument("--child", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _serve(args.child, args.model[0], args.batch[0], args.workers[0])
        return 0
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    for model, batch in [(m, b) for m in args.model for b in args.batch]:
        if batch == args.batch[0]:
            print(f"{'U-Net' if model == 'unet' else 'DiT'} training step (forward + backward + "
                  "Adam), float32, default configuration", flush=True)
        print(_compare(model, batch, args.repeats, have_torch, tuple(args.workers)), flush=True)
    if not have_torch:
        print("(PyTorch not installed: `.venv/bin/pip install torch==2.13.0` adds the comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
