"""Tools, not chapters: the benchmark and its PyTorch twins, the notebook builder, the DiT
scaling sweep and the mutation check. They sit on top of the package (they may import any of it;
nothing in it imports them)."""
