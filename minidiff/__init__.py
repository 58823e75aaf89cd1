"""minidiff: score-based diffusion models from scratch in NumPy and autograd.

The package, bottom to top (each layer imports only from those below it; tests/test_layering.py
checks it):

- ``nn`` — the toolbox on autograd: pytrees, layers, convolution, attention, Adam and EMA,
  atomic pickle-free checkpoints, data parallelism over processes.
- the spine every chapter shares: ``targets`` (every conversion among eps, x0, v, velocity and
  the score), ``datasets`` (the Gaussian-mixture oracle, toy sets, MNIST, sample files),
  ``process`` (Gaussian paths ``x_t = alpha x0 + sigma eps``) and ``train`` (one training loop).
- ``models`` — score networks as ``init`` / ``apply`` pairs, depending on ``nn`` only.
- the chapters, in the order of the story:

  1. ``score`` — scores and Langevin dynamics, NCSN and annealed Langevin.
  2. ``dsm`` — score matching (explicit, sliced, denoising) and Tweedie.
  3. ``ddpm`` — DDPM: schedules, posterior, L_simple, the bound, ancestral and DDIM.
  4. ``sde`` — score SDEs, predictor-corrector, probability-flow ODE and likelihood.
  5. ``samplers`` (with ``targets``) — prediction targets, EDM, Min-SNR; sigma-grid samplers.
  6. ``models.unet`` with ``metrics`` — the U-Net and FD-MNIST.
  7. ``guidance`` — conditioning and guidance.
  9. ``models.dit`` — the diffusion transformer.

- ``images`` — the glue every image chapter uses (batches, loss, recipe, sampling, files).
- ``tools`` (benchmark, PyTorch twins, notebook builder, DiT sweep), ``demo`` and the command
  line (``python -m minidiff``) on top.
"""

__version__ = "0.1.0"
