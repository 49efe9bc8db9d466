"""Fracture classifiers: the registry of transfer-learning backbones (a leaf, no PyTorch) and
the networks built from it (PyTorch, imported only when a network is asked for)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from fracdet.models.registry import ModelSpec, get_spec, list_models

_LAZY = {
    "FracNet": "fracdet.models.classifier",
    "create_model": "fracdet.models.factory",
    "pretrained_available": "fracdet.models.weights",
}

__all__ = ["FracNet", "ModelSpec", "create_model", "get_spec", "list_models", "pretrained_available"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fracdet.models' has no attribute {name!r}")
