"""Post-training int8 quantization of a model for onnxruntime on the CPU.

Measured on this project's 2-core CPU (AVX-512 VNNI): EfficientNet-Lite0 at 224 px ran ~475
images/s in int8 against ~200 in float32 (onnxruntime, 2 threads, network only).

Static quantization (QOperator, uint8 activations, per-channel int8 weights, min/max
ranges) calibrated on training images.  The int8 graph is stored in the artifact with its
measured agreement with float32 on held-out images (and the held-out metrics under int8), so
the int8 numbers are never guessed.  ``--backend auto`` uses it only when it is within
:data:`INT8_TOLERANCE`; otherwise it stays an explicit, warned choice (``--backend int8``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from fracdet.errors import FracdetError

log = logging.getLogger(__name__)

# Largest allowed disagreement with float32 on the held-out check images (calibrated
# probabilities); fixed before the default model was quantized, not fitted to it.
INT8_TOLERANCE = {"mean_abs_diff": 0.02, "p99_abs_diff": 0.10, "auroc_drop": 0.01}
CALIBRATION_IMAGES = 256


def _batches(samples: Sequence[Any], transform: Any, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from fracdet.data.loader import make_loader

    for x, y, _ in make_loader(samples, transform, batch_size=batch_size):
        if len(x):
            yield x.numpy(), y.numpy()


def _float32_onnx(artifact: Any) -> bytes:
    """The artifact's float32 graph, from the export cache that prediction uses."""
    from fracdet.export import cached_onnx

    with torch.inference_mode(False):  # the network may be built here, outside inference mode
        return cached_onnx(artifact, artifact.build_model).read_bytes()


def quantize_onnx(fp32_onnx: bytes, calibration: Sequence[Any], transform: Any, batch_size: int = 16) -> bytes:
    """int8 version of an exported graph, its activation ranges measured on ``calibration``
    samples (prepared with ``transform``, no augmentation)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(calibration, transform, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"image": x[0]}

    with tempfile.TemporaryDirectory(prefix="fracdet-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_onnx)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
        return out.read_bytes()


def compare_int8(fp32_onnx: bytes, int8_onnx: bytes, samples: Sequence[Any], transform: Any,
                 temperature: float, threshold: float, batch_size: int = 16) -> dict[str, Any]:
    """How far int8 probabilities are from float32 on labelled ``samples``: mean / p99 / max
    absolute difference, label agreement at ``threshold`` and both AUROCs."""
    from fracdet.calibration import calibrated_probability
    from fracdet.export import OnnxRunner

    fp32, int8 = OnnxRunner(fp32_onnx), OnnxRunner(int8_onnx)
    za, zb, ys = [], [], []
    for x, y in _batches(samples, transform, batch_size):
        za.append(fp32(x))
        zb.append(int8(x))
        ys.append(y)
    if not za:
        raise FracdetError("int8 check: none of the check images could be read")
    pa = calibrated_probability(np.concatenate(za), temperature)
    pb = calibrated_probability(np.concatenate(zb), temperature)
    y = np.concatenate(ys).astype(int)
    diff = np.abs(pa - pb)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "mean_abs_diff": float(diff.mean()),
        "p99_abs_diff": float(np.quantile(diff, 0.99)),
        "max_abs_diff": float(diff.max()),
        "label_agreement": float(np.mean((pa >= threshold) == (pb >= threshold))),
    }
    if len(set(y.tolist())) == 2:
        from fracdet.metrics import roc_auc

        out["auroc_fp32"] = roc_auc(y, pa)
        out["auroc_int8"] = roc_auc(y, pb)
    return out


def within_tolerance(check: dict[str, Any], tolerance: dict[str, float] = INT8_TOLERANCE) -> tuple[bool, str]:
    """Whether a :func:`compare_int8` result is acceptable, and a sentence saying why."""
    problems = [f"{k} {check[k]:.3f} > {tolerance[k]}" for k in ("mean_abs_diff", "p99_abs_diff")
                if check[k] > tolerance[k]]
    if "auroc_fp32" in check and check["auroc_fp32"] - check["auroc_int8"] > tolerance["auroc_drop"]:
        problems.append(f"AUROC drop {check['auroc_fp32'] - check['auroc_int8']:.3f} > {tolerance['auroc_drop']}")
    if problems:
        return False, "int8 rejected: " + "; ".join(problems)
    return True, (f"int8 accepted: mean |Δp| {check['mean_abs_diff']:.3f}, p99 {check['p99_abs_diff']:.3f} "
                  f"on {check['n']} held-out images")


def quantize_artifact(artifact: Any, calibration: Sequence[Any], check: Sequence[Any],
                      check_note: str, calibration_note: str, test: Sequence[Any] | None = None,
                      seed: int = 0, tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Quantize ``artifact``'s network, store the int8 graph in it (``artifact.int8_onnx``)
    and the outcome of :func:`within_tolerance` on the ``check`` samples in ``artifact.int8``
    (returned; ``accepted`` says whether ``--backend auto`` may use it).  At most :data:`CALIBRATION_IMAGES` of
    ``calibration`` are used (a seeded random choice); ``test``: also report on these;
    ``tolerance``: instead of :data:`INT8_TOLERANCE`."""
    from fracdet.export import onnx_available

    if not onnx_available():
        raise FracdetError("int8 quantization needs onnxruntime: pip install onnxruntime")
    if not calibration or not check:
        raise FracdetError("int8 quantization needs calibration and check images")
    from fracdet.transforms import build_transforms

    transform = build_transforms(artifact.preprocess)
    rng = np.random.default_rng(seed)
    if len(calibration) > CALIBRATION_IMAGES:
        calibration = [calibration[i] for i in sorted(rng.choice(len(calibration), CALIBRATION_IMAGES, replace=False))]
    fp32 = _float32_onnx(artifact)
    int8 = quantize_onnx(fp32, calibration, transform)
    agreement = compare_int8(fp32, int8, check, transform, artifact.temperature, artifact.threshold)
    tolerance = dict(tolerance or INT8_TOLERANCE)
    accepted, reason = within_tolerance(agreement, tolerance)
    report: dict[str, Any] = {
        "accepted": accepted, "reason": reason, "scheme": "static QOperator, uint8 activations, "
        "per-channel int8 weights, min/max ranges (onnxruntime)", "tolerance": tolerance,
        "calibration": {"images": len(calibration), "from": calibration_note},
        "check": {**agreement, "on": check_note},
    }
    if test:
        report["test"] = compare_int8(fp32, int8, test, transform, artifact.temperature, artifact.threshold)
    artifact.int8 = report
    artifact.int8_onnx = int8
    (log.info if accepted else log.warning)("%s", reason)
    return report


def recheck_int8(artifact: Any, samples: Sequence[Any], note: str) -> dict[str, Any] | None:
    """Re-measure a stored int8 graph against float32 on ``samples`` at the artifact's current
    temperature and threshold (after ``fracdet calibrate`` changed them) and update whether
    ``--backend auto`` may use it.  None when the artifact has no int8 graph."""
    from fracdet.transforms import build_transforms

    if not artifact.int8_onnx:
        return None
    fp32 = _float32_onnx(artifact)
    check = compare_int8(fp32, artifact.int8_onnx, samples, build_transforms(artifact.preprocess),
                         artifact.temperature, artifact.threshold)
    tolerance = dict(artifact.int8.get("tolerance") or INT8_TOLERANCE)
    accepted, reason = within_tolerance(check, tolerance)
    artifact.int8 = {**artifact.int8, "accepted": accepted, "reason": reason, "check": {**check, "on": note}}
    artifact.int8.pop("test", None)  # measured at the previous temperature and threshold
    return artifact.int8


__all__ = ["CALIBRATION_IMAGES", "INT8_TOLERANCE", "compare_int8", "quantize_artifact", "quantize_onnx",
           "recheck_int8", "within_tolerance"]
