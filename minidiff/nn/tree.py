"""Parameter pytrees: nested dicts (and lists) whose leaves are NumPy arrays.

A model's parameters are a plain nested dict, e.g. ``{"layers": [{"w": ..., "b": ...}, ...]}``.
``autograd.grad`` returns a gradient of the same shape, so the optimiser, the EMA and the
checkpoint code only need to walk two trees in step. This is the JAX ``tree_util`` idea, kept to
the containers minidiff uses: dict (string keys), list and tuple.
"""

import numpy as onp


def tree_map(fn, tree, *rest):
    """Apply ``fn(leaf, *other_leaves)`` leaf by leaf over trees of identical structure."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, t, *(r[i] for r in rest)) for i, t in enumerate(tree))
    return fn(tree, *rest)


def tree_leaves(tree):
    """The leaves in a fixed order (dict keys in insertion order, then list order)."""
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in tree_leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [leaf for t in tree for leaf in tree_leaves(t)]
    return [tree]


def tree_size(tree):
    """Total number of scalars in the tree (the model's parameter count)."""
    return int(sum(onp.size(leaf) for leaf in tree_leaves(tree)))


def tree_flatten(tree, prefix=""):
    """``{"a/b/0/w": array, ...}``: one entry per leaf, keyed by its path with ``/`` separators.

    Dict keys may not contain ``/`` (it would make the path ambiguous).
    """
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str) or "/" in k or not k:
                raise ValueError(f"tree keys must be non-empty strings without '/', got {k!r}")
            out.update(tree_flatten(v, f"{prefix}{k}/"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(tree_flatten(v, f"{prefix}{i}/"))
        return out
    return {prefix[:-1]: tree}


def tree_structure(tree):
    """A JSON-able skeleton of the tree: dicts and lists with ``None`` at every leaf."""
    if isinstance(tree, dict):
        return {k: tree_structure(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [tree_structure(v) for v in tree]
    return None


def tree_unflatten(structure, flat, prefix=""):
    """Inverse of ``tree_flatten`` given the skeleton from ``tree_structure``."""
    if isinstance(structure, dict):
        return {k: tree_unflatten(v, flat, f"{prefix}{k}/") for k, v in structure.items()}
    if isinstance(structure, list):
        return [tree_unflatten(v, flat, f"{prefix}{i}/") for i, v in enumerate(structure)]
    return flat[prefix[:-1]]


def tree_dot(a, b):
    """Sum over leaves of ``<a_leaf, b_leaf>`` as a Python float."""
    return float(sum(onp.vdot(x, y) for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True)))


def tree_cast(tree, dtype):
    """Every leaf as ``dtype`` (e.g. float64 for gradient checks)."""
    return tree_map(lambda x: onp.asarray(x, dtype=dtype), tree)
