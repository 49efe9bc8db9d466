"""Command-line options shared by several ``fracdet`` commands.

Kept free of heavy imports (no numpy, PIL or torch) so ``fracdet --help`` stays fast; the
choices mirror :data:`fracdet.data.layouts.LAYOUTS` and :data:`fracdet.inference.BACKENDS`
(a test keeps them equal).
"""

from __future__ import annotations

import argparse

MODEL_HELP = "model artifact (.fracdet); default: the model shipped with fracdet"
LAYOUT_CHOICES = ("auto", "split-folders", "class-folders", "csv", "fracatlas")
BACKEND_CHOICES = ("auto", "int8", "onnx", "torch")
BACKEND_HELP = ("inference engine: auto (onnxruntime int8 when the model's int8 graph is within its drift "
                "tolerance, else onnxruntime float32 when installed, else PyTorch), int8, onnx (float32) or torch")


def add_model_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--model``: an artifact, the shipped default model when left out."""
    p.add_argument("--model", help=MODEL_HELP)


def add_layout_option(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--layout``: how the dataset folder is organised (auto-detected by default)."""
    p.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES)


def add_backend_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str = BACKEND_HELP) -> None:
    """``--backend``: the inference engine (see :func:`fracdet.inference.choose_backend`)."""
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help=help)
