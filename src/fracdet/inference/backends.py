"""Which engine runs a model's network: onnxruntime int8, onnxruntime float32, or PyTorch."""

from __future__ import annotations

import logging
from typing import Any

from fracdet.errors import FracdetError
from fracdet.inference.onnx import onnx_available

log = logging.getLogger(__name__)
BACKENDS = ("auto", "int8", "onnx", "torch")


def choose_backend(backend: str, artifact: Any = None) -> str:
    """The inference backend: for 'auto', onnxruntime int8 when the artifact carries an int8
    graph whose drift from float32 was measured on this CPU's int8 kernels and found within
    tolerance (:func:`fracdet.quantize.int8_decision`), else onnxruntime float32 (one log line
    says why), else PyTorch.  'int8' without that is allowed, with a warning giving the drift."""
    if backend not in BACKENDS:
        raise FracdetError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    if backend == "torch":
        return "torch"
    has_int8 = artifact is not None and artifact.int8_onnx is not None
    if not onnx_available():
        if backend in ("onnx", "int8"):
            raise FracdetError(f"the {backend} backend needs onnxruntime: pip install onnxruntime "
                               "(or use --backend torch)")
        return "torch"
    if backend == "int8" and not has_int8:
        raise FracdetError("this model has no int8 graph; add one with: fracdet quantize DATA --model MODEL --out NEW")
    if backend == "onnx" or not has_int8:
        return "onnx"
    from fracdet.quantize import int8_decision

    accepted, why = int8_decision(artifact.int8)
    if backend == "int8" and not accepted:
        log.warning("int8 on request although not accepted for this CPU: %s", why)
    if backend == "auto" and not accepted:
        log.info("float32 onnxruntime, not int8: %s", why)
    return "int8" if backend == "int8" or accepted else "onnx"
