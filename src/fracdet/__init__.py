"""fracdet: fracture detection on bone radiographs — train, evaluate, predict, honestly.

A research and engineering tool, not a medical device.  Public names are imported lazily so
that ``fracdet --help`` starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "fracdet.inference",
    "Predictor": "fracdet.inference",
    "Prediction": "fracdet.inference",
    "read_image": "fracdet.io.images",
    "XRay": "fracdet.io.images",
    "create_model": "fracdet.models",
    "list_models": "fracdet.models",
    "load_dataset": "fracdet.data.layouts",
    "load_artifact": "fracdet.artifact",
    "default_model_path": "fracdet.artifact",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fracdet' has no attribute {name!r}")
