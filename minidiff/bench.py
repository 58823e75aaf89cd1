"""``make bench``: speed and memory of a training step, as ratios within one run.

    python -m minidiff.bench [--model unet dit] [--batch 64 128] [--repeats 5]

Times one training step (forward, backward, Adam) of the default U-Net (chapter 6) and the default
DiT (chapter 9) in float32 at each batch size, reports samples per second and the peak resident
memory (each configuration runs in its own subprocess, so peaks do not mix), and — where PyTorch
is installed (``pip install torch==2.13.0`` into .venv; never a dependency of minidiff) — times
the identical architecture in PyTorch in the same run and prints the ratio. Timings are medians
of ``--repeats`` steps after two warm-up steps.
Targets on a 2-core machine: U-Net ratio <= 2.0 and peak memory <= 1.0 GB at batch 64 (chapter 6);
DiT ratio <= 1.6 (chapter 9).
"""

import argparse
import json
import subprocess
import sys
import time


def _numpy_step(model, batch, repeats):
    import resource

    import autograd
    import numpy as np

    from minidiff import nn
    from minidiff.models import dit, unet
    from minidiff.nn.memory import keep_freed_memory

    keep_freed_memory()
    rng = np.random.default_rng(0)
    arch = unet if model == "unet" else dit
    cfg = unet.UNetConfig() if model == "unet" else dit.DiTConfig()
    params = arch.init(rng, cfg)
    opt = nn.adam_init(params)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    eps = rng.standard_normal(x.shape).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.float32)
    y = rng.integers(0, 11, batch)
    grad = autograd.grad(lambda p: nn.mean((arch.apply(p, x, t, y, cfg) - eps) ** 2))
    times = []
    for k in range(repeats + 2):
        t0 = time.perf_counter()
        g = grad(params)
        params, opt = nn.adam_update(g, opt, params, 1e-4)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB -> GB
    return {"seconds": float(np.median(times)), "peak_gb": peak,
            "params": nn.tree_size(params)}


def _torch_step(model, batch, repeats):
    import resource

    import numpy as np
    import torch

    from minidiff.bench_torch import TorchDiT, TorchUNet

    torch.manual_seed(0)
    model = TorchUNet() if model == "unet" else TorchDiT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 28, 28)
    eps = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,)).float()
    y = torch.randint(0, 11, (batch,))
    times = []
    for k in range(repeats + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = ((model(x, t, y) - eps) ** 2).mean()
        loss.backward()
        opt.step()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"seconds": float(np.median(times)), "peak_gb": peak,
            "params": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads()}


def _child(which, model, batch, repeats):
    result = (_numpy_step if which == "numpy" else _torch_step)(model, batch, repeats)
    print(json.dumps(result))


def _run(which, model, batch, repeats):
    out = subprocess.run([sys.executable, "-m", "minidiff.bench", "--child", which,
                          "--model", model, "--batch", str(batch), "--repeats", str(repeats)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr else "failed"
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", nargs="+", choices=["unet", "dit"], default=["unet", "dit"])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.model[0], args.batch[0], args.repeats)
        return 0
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    for model, batch in [(m, b) for m in args.model for b in args.batch]:
        if batch == args.batch[0]:
            print(f"{'U-Net' if model == 'unet' else 'DiT'} training step (forward + backward + "
                  "Adam), float32, default configuration")
        res, err = _run("numpy", model, batch, args.repeats)
        if res is None:
            print(f"batch {batch}: numpy run failed: {err}")
            continue
        line = (f"batch {batch:4d}: minidiff {res['seconds']:.3f} s/step "
                f"({batch / res['seconds']:.0f} samples/s), peak {res['peak_gb']:.2f} GB, "
                f"{res['params'] / 1e6:.2f}M params")
        if have_torch:
            tres, terr = _run("torch", model, batch, args.repeats)
            if tres is not None:
                line += (f" | PyTorch {tres['seconds']:.3f} s/step, peak {tres['peak_gb']:.2f} GB"
                         f" ({tres['threads']} threads) | ratio "
                         f"{res['seconds'] / tres['seconds']:.2f}")
            else:
                line += f" | PyTorch failed: {terr}"
        print(line)
    if not have_torch:
        print("(PyTorch not installed: `.venv/bin/pip install torch==2.13.0` adds the comparison)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
