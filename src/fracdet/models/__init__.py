"""Fracture classifiers: registry of transfer-learning backbones and the FracNet wrapper."""

from fracdet.models.classifier import FracNet
from fracdet.models.factory import create_model
from fracdet.models.registry import ModelSpec, get_spec, list_models
from fracdet.models.weights import pretrained_available

__all__ = ["FracNet", "ModelSpec", "create_model", "get_spec", "list_models", "pretrained_available"]
