"""Which engine runs a model's network: onnxruntime int8, onnxruntime float32, or PyTorch."""

from __future__ import annotations

import logging
from typing import Any

from fracdet.cpu import int8_kernel_class
from fracdet.errors import FracdetError
from fracdet.inference.onnx import onnx_available

log = logging.getLogger(__name__)
BACKENDS = ("auto", "int8", "onnx", "torch")
RECHECK_HINT = "re-measure with `fracdet quantize DATA --model MODEL --out NEW --recheck`"


def choose_backend(backend: str, artifact: Any = None) -> str:
    """The inference backend: for 'auto', onnxruntime int8 when the artifact carries an int8
    graph whose drift from float32 was measured on this CPU's int8 kernels and found within
    tolerance (:func:`int8_decision`), else onnxruntime float32 (one log line
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
    accepted, why = int8_decision(artifact.int8)
    if backend == "int8" and not accepted:
        log.warning("int8 on request although not accepted for this CPU: %s", why)
    if backend == "auto" and not accepted:
        log.debug("float32 onnxruntime, not int8: %s", why)  # `fracdet info` says it too
    return "int8" if backend == "int8" or accepted else "onnx"


def int8_decision(int8_report: dict[str, Any] | None, kernel_class: str | None = None) -> tuple[bool, str]:
    """Whether ``--backend auto`` may use an artifact's int8 graph on a CPU of ``kernel_class``
    (default: this CPU's, :func:`fracdet.cpu.int8_kernel_class`), and a sentence saying why.

    Only a check measured on that kernel class counts (``int8_report["checks"][kernel_class]``,
    or the top-level check when its ``measured_on`` names that class); an int8 report without
    ``measured_on`` was measured on an unknown CPU and never counts."""
    here = kernel_class or int8_kernel_class()
    q = int8_report or {}
    if not q:
        return False, "the model has no int8 graph"
    checks = dict(q.get("checks") or {})
    top = q.get("measured_on") or {}
    if here not in checks and top.get("kernel_class") == here and "accepted" in q:
        checks[here] = {**q.get("check", {}), "accepted": q["accepted"], "reason": q.get("reason", ""),
                        "measured_on": top}
    entry = checks.get(here)
    if entry is None:
        measured = sorted(k for k in checks if k) or ([top["kernel_class"]] if top.get("kernel_class") else [])
        where = (f"int8 measured on {', '.join(measured)}" if measured
                 else "int8 drift measured on an unknown CPU (the model predates per-CPU int8 checks)")
        return False, f"{where}, this CPU is {here}: {RECHECK_HINT}"
    cpu = (entry.get("measured_on") or {}).get("cpu", "unknown CPU")
    drift = (f"mean |Δp| {entry.get('mean_abs_diff', float('nan')):.3f}, p99 {entry.get('p99_abs_diff', float('nan')):.3f} "
             f"vs float32 on {entry.get('on', 'held-out images')}, measured on {here} ({cpu})")
    if entry.get("accepted"):
        return True, f"int8 within the tolerance on this CPU's kernels: {drift}"
    return False, f"int8 outside the tolerance on this CPU's kernels: {drift}"
