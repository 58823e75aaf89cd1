"""minidiff: score-based diffusion models from scratch in NumPy and autograd.

Chapters, in the order of the story (each a module, a notebook in notebooks/, and tests):

1. ``minidiff.score`` — scores and Langevin dynamics, NCSN and annealed Langevin.
"""

__version__ = "0.1.0"
