"""minidiff: score-based diffusion models from scratch in NumPy and autograd.

Chapters, in the order of the story (each a module, a notebook in notebooks/, and tests):

1. ``minidiff.score`` — scores and Langevin dynamics, NCSN and annealed Langevin.
2. ``minidiff.dsm`` — score matching (explicit, sliced, denoising) and Tweedie (``targets``).
3. ``minidiff.ddpm`` — DDPM: schedules, posterior, L_simple, the bound, ancestral and DDIM.
4. ``minidiff.sde`` — score SDEs, predictor-corrector, probability-flow ODE and likelihood.
5. ``minidiff.targets`` / ``minidiff.samplers`` — prediction targets, EDM, Min-SNR; samplers.

The spine every chapter shares: ``process`` (Gaussian paths) and ``targets`` (conversions).
"""

__version__ = "0.1.0"
