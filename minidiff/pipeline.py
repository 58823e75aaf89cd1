"""Deprecated: ``pipeline`` was split by what it held. Old names keep working, with a warning.

- batches, the denoising loss, training, sampling, model files -> ``minidiff.images``
- classifier-free guidance (chapter 7) -> ``minidiff.guidance``
- sample files (``save_samples``, ``load_samples``, ``to_uint8``) -> ``minidiff.datasets``
- the DiT scaling sweep -> ``minidiff.tools.sweep``
"""

import importlib
import warnings

_MOVED = {
    **dict.fromkeys(["mnist_batches", "denoising_loss", "eps_network", "train_mnist", "image_loss",
                     "sample", "save_model", "load_model"], "minidiff.images"),
    "guided_eps": "minidiff.guidance",
    **dict.fromkeys(["save_samples", "load_samples", "to_uint8"], "minidiff.datasets"),
    **dict.fromkeys(["dit_sweep", "save_sweep", "load_sweep", "SWEEP_SHAPES", "ABLATION_SHAPES"],
                    "minidiff.tools.sweep"),
}


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module 'minidiff.pipeline' has no attribute {name!r}")
    warnings.warn(f"minidiff.pipeline.{name} moved to {_MOVED[name]}.{name}; "
                  "minidiff.pipeline will be removed", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
