"""The neural-net toolbox: pytrees, layers, optimisers and checkpoints, built on autograd."""

from . import checkpoint
from .layers import (
    fourier_embedding,
    gelu,
    init_fourier,
    init_linear,
    linear,
    logsumexp,
    mean,
    modulated_layer_norm,
    sigmoid,
    silu,
    sinusoidal_embedding,
)
from .optim import (
    adam_init,
    adam_update,
    clip_by_global_norm,
    ema_decay,
    ema_update,
    global_norm,
    lr_schedule,
    warmup_lr,
)
from .tree import (
    tree_cast,
    tree_dot,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_size,
    tree_structure,
    tree_unflatten,
)

__all__ = [
    "checkpoint", "fourier_embedding", "init_fourier", "init_linear", "linear", "mean", "sigmoid",
    "logsumexp",
    "gelu", "modulated_layer_norm",
    "silu", "sinusoidal_embedding", "adam_init", "adam_update", "clip_by_global_norm",
    "ema_decay", "ema_update", "global_norm", "warmup_lr", "lr_schedule", "tree_cast", "tree_dot",
    "tree_flatten", "tree_leaves", "tree_map", "tree_size", "tree_structure", "tree_unflatten",
]
