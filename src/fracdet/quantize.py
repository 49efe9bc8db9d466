"""Post-training int8 quantization of a model for onnxruntime on the CPU.

Measured on this project's 2-core CPU (AVX-512 VNNI): EfficientNet-Lite0 at 224 px ran ~475
images/s in int8 against ~200 in float32 (onnxruntime, 2 threads, network only).

Static quantization (:data:`SCHEME`) calibrated on training images.  The int8 graph is stored
in the artifact with its measured agreement with float32 on held-out images (and the held-out
metrics under int8), so the int8 numbers are never guessed.

onnxruntime's int8 kernels differ by CPU (:mod:`fracdet.cpu`): the agreement is a fact of the
machine that measured it, so every measurement records where it was made (``measured_on``)
and is filed under that CPU's int8 kernel class (``int8["checks"][kernel_class]``).
``--backend auto`` uses the int8 graph only where a check for this CPU's kernel class is
within :data:`INT8_TOLERANCE` (:func:`fracdet.inference.backends.int8_decision`); anywhere else it stays an explicit,
warned choice (``--backend int8``) until ``fracdet quantize --recheck`` measures it there.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from fracdet.errors import FracdetError

log = logging.getLogger(__name__)

# Largest allowed disagreement with float32 on the held-out check images (calibrated
# probabilities); fixed before the default model was quantized, not fitted to it.
INT8_TOLERANCE = {"mean_abs_diff": 0.02, "p99_abs_diff": 0.10, "auroc_drop": 0.01}
CALIBRATION_IMAGES = 256

# Chosen on the default model's validation split with benchmarks/int8_settings.py (README,
# "Speed"): leaving the convolution that reads the image in float32 cut the mean |Δp| from
# 0.061 to 0.039 on AVX-512 VNNI and from 0.081 to 0.053 on (emulated) AVX2.  7-bit weights
# (reduce_range), which cannot saturate the AVX2 / AVX-512-without-VNNI int16 pair sums and so
# compute the same integers everywhere, doubled the drift (0.126) and cost 0.02 AUROC: not used;
# the drift is judged per int8 kernel class instead (fracdet.inference.backends.int8_decision).
# Leaving the depthwise convolutions in float32 as well (``float_depthwise_convs``) made it
# worse on VNNI (0.059, AUROC -0.014; 2026-12-03): the drift is not theirs.
QUANT_SETTINGS: dict[str, Any] = {"quant_format": "QOperator", "activation_type": "QUInt8", "weight_type": "QInt8",
                                  "per_channel": True, "reduce_range": False, "calibrate_method": "MinMax",
                                  "float_image_convs": True}
SCHEME = ("static QOperator, uint8 activations, per-channel int8 weights, min/max ranges (onnxruntime); "
          "the convolution that reads the image kept in float32")


def _batches(samples: Sequence[Any], transform: Any, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from fracdet.data.loader import make_loader

    for x, y, _ in make_loader(samples, transform, batch_size=batch_size):
        if len(x):
            yield x.numpy(), y.numpy()


def _float32_onnx(artifact: Any) -> bytes:
    """The artifact's float32 graph: the stored one, else exported once (the graph prediction uses)."""
    return artifact.float32_graph()


def calibration_subset(samples: Sequence[Any], seed: int = 0) -> list[Any]:
    """At most :data:`CALIBRATION_IMAGES` of ``samples``: a seeded random choice, in their order."""
    if len(samples) <= CALIBRATION_IMAGES:
        return list(samples)
    pick = np.random.default_rng(seed).choice(len(samples), CALIBRATION_IMAGES, replace=False)
    return [samples[i] for i in sorted(pick)]


def image_convs(graph: Any) -> list[str]:
    """Names of the convolutions that read the image: the first Conv on every path from the
    graph's inputs (an ONNX ``ModelProto``).  Kept in float32, the image itself is never
    rounded to 8 bits."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name for t in graph.graph.initializer}
    todo = [i.name for i in graph.graph.input if i.name not in initializers]
    seen: set[str] = set()
    found: list[str] = []
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                todo.extend(node.output)
    return found


def depthwise_convs(graph: Any) -> list[str]:
    """Names of the depthwise convolutions (``group`` equal to the channel count, > 1) of an
    ONNX ``ModelProto``: few of the network's operations, and where a per-channel 8-bit grid
    is coarsest (one 3×3 or 5×5 kernel per channel)."""
    weights = {t.name: list(t.dims) for t in graph.graph.initializer}
    found = []
    for node in graph.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1])
        if group > 1 and dims and dims[1] == 1 and dims[0] == group:
            found.append(node.name)
    return found


def quantize_onnx(fp32_onnx: bytes, calibration: Sequence[Any], transform: Any, batch_size: int = 16,
                  settings: dict[str, Any] | None = None) -> bytes:
    """int8 version of an exported graph, its activation ranges measured on ``calibration``
    samples (prepared with ``transform``, no augmentation), with :data:`QUANT_SETTINGS`;
    ``settings``: keyword arguments of onnxruntime's ``quantize_static`` over those (enum
    members or their names), for benchmarks; ``float_image_convs``: keep :func:`image_convs`
    in float32."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
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
        kwargs: dict[str, Any] = {**QUANT_SETTINGS, **(settings or {})}
        float_image, float_depthwise = kwargs.pop("float_image_convs", False), kwargs.pop("float_depthwise_convs", False)
        if float_image or float_depthwise:
            import onnx

            graph = onnx.load(str(pre))
            keep = [*(image_convs(graph) if float_image else []), *(depthwise_convs(graph) if float_depthwise else [])]
            kwargs["nodes_to_exclude"] = [*kwargs.get("nodes_to_exclude", []), *keep]
        enums = {"quant_format": QuantFormat, "activation_type": QuantType, "weight_type": QuantType,
                 "calibrate_method": CalibrationMethod}
        for key, enum in enums.items():
            if isinstance(kwargs.get(key), str):
                kwargs[key] = getattr(enum, kwargs[key])
        quantize_static(str(pre), str(out), Reader(), **kwargs)
        return out.read_bytes()


def compare_int8(fp32_onnx: bytes, int8_onnx: bytes, samples: Sequence[Any], transform: Any,
                 temperature: float | dict[str, Any], threshold: float, batch_size: int = 16) -> dict[str, Any]:
    """How far int8 probabilities are from float32 on labelled ``samples``: mean / p99 / max
    absolute difference, label agreement at ``threshold`` and both AUROCs (``temperature``: a
    temperature or the model's calibration map)."""
    from fracdet.calibration import apply_calibration
    from fracdet.inference.onnx import OnnxRunner

    fp32, int8 = OnnxRunner(fp32_onnx), OnnxRunner(int8_onnx)
    za, zb, ys = [], [], []
    for x, y in _batches(samples, transform, batch_size):
        za.append(fp32(x))
        zb.append(int8(x))
        ys.append(y)
    if not za:
        raise FracdetError("int8 check: none of the check images could be read")
    pa = apply_calibration(np.concatenate(za), temperature)
    pb = apply_calibration(np.concatenate(zb), temperature)
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


def _entry(check: dict[str, Any], note: str, tolerance: dict[str, float],
           test: dict[str, Any] | None = None) -> dict[str, Any]:
    """One measurement on this CPU: the agreement, its verdict and where it was measured."""
    from fracdet.cpu import cpu_summary

    accepted, reason = within_tolerance(check, tolerance)
    entry = {**check, "on": note, "accepted": accepted, "reason": reason, "measured_on": dict(cpu_summary())}
    if test is not None:
        entry["test"] = {**test, "measured_on": dict(cpu_summary())}
    return entry


def _set_top_level(report: dict[str, Any], entry: dict[str, Any]) -> None:
    """The older top-level keys (``accepted``, ``reason``, ``check``, ``test``), which readers
    before per-CPU checks and the model card use, from one measurement."""
    check = {k: v for k, v in entry.items() if k not in ("accepted", "reason", "test")}
    report.update(accepted=entry["accepted"], reason=entry["reason"], check=check, measured_on=entry["measured_on"])
    if "test" in entry:
        report["test"] = entry["test"]
    else:
        report.pop("test", None)


def quantize_artifact(artifact: Any, calibration: Sequence[Any], check: Sequence[Any],
                      check_note: str, calibration_note: str, test: Sequence[Any] | None = None,
                      seed: int = 0, tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """Quantize ``artifact``'s network, store the int8 graph in it (``artifact.int8_onnx``)
    and the outcome of :func:`within_tolerance` on the ``check`` samples, measured on this CPU,
    in ``artifact.int8`` (returned): ``checks[kernel_class]`` for this CPU's int8 kernels, and
    the same at the top level (``accepted``, ``reason``, ``check``, ``measured_on``).  At most
    :data:`CALIBRATION_IMAGES` of ``calibration`` are used (a seeded random choice); ``test``:
    also report on these; ``tolerance``: instead of :data:`INT8_TOLERANCE`."""
    from fracdet.cpu import int8_kernel_class
    from fracdet.inference.onnx import onnx_available

    if not onnx_available():
        raise FracdetError("int8 quantization needs onnxruntime: pip install onnxruntime")
    if not calibration or not check:
        raise FracdetError("int8 quantization needs calibration and check images")
    from fracdet.transforms import build_transforms

    transform = build_transforms(artifact.preprocess)
    calibration = calibration_subset(calibration, seed)
    fp32 = _float32_onnx(artifact)
    int8 = quantize_onnx(fp32, calibration, transform)
    tolerance = dict(tolerance or INT8_TOLERANCE)
    agreement = compare_int8(fp32, int8, check, transform, artifact.calibration_in_use(), artifact.threshold)
    measured_test = (compare_int8(fp32, int8, test, transform, artifact.calibration_in_use(), artifact.threshold)
                     if test else None)
    entry = _entry(agreement, check_note, tolerance, measured_test)
    report: dict[str, Any] = {"scheme": SCHEME, "tolerance": tolerance,
                              "calibration": {"images": len(calibration), "from": calibration_note}}
    _set_top_level(report, entry)
    report["checks"] = {int8_kernel_class(): entry}
    artifact.int8 = report
    artifact.int8_onnx = int8
    (log.info if entry["accepted"] else log.warning)("%s (int8 kernels: %s)", entry["reason"], int8_kernel_class())
    return report


def recheck_int8(artifact: Any, samples: Sequence[Any], note: str, test: Sequence[Any] | None = None,
                 keep_other_cpus: bool = False) -> dict[str, Any] | None:
    """Re-measure a stored int8 graph against float32 on ``samples`` on this CPU's int8 kernels,
    at the artifact's current temperature and threshold, and file it under this CPU's kernel
    class (``int8["checks"]``), which decides whether ``--backend auto`` may use it here.
    ``test``: also re-measure on these.  ``keep_other_cpus``: keep the checks of other kernel
    classes (``fracdet quantize --recheck``: same temperature); by default (after ``fracdet
    calibrate`` changed the temperature or threshold) they are dropped as stale.  The top-level
    keys follow this measurement unless they hold another kernel class's (kept then).  None
    when the artifact has no int8 graph."""
    from fracdet.cpu import int8_kernel_class
    from fracdet.transforms import build_transforms

    if not artifact.int8_onnx:
        return None
    fp32 = _float32_onnx(artifact)
    transform = build_transforms(artifact.preprocess)
    check = compare_int8(fp32, artifact.int8_onnx, samples, transform, artifact.calibration_in_use(), artifact.threshold)
    measured_test = (compare_int8(fp32, artifact.int8_onnx, test, transform, artifact.calibration_in_use(),
                                  artifact.threshold) if test else None)
    tolerance = dict(artifact.int8.get("tolerance") or INT8_TOLERANCE)
    entry = _entry(check, note, tolerance, measured_test)
    here = int8_kernel_class()
    report = dict(artifact.int8)
    report.setdefault("tolerance", tolerance)
    others = {k: v for k, v in (report.get("checks") or {}).items() if k != here} if keep_other_cpus else {}
    top = (report.get("measured_on") or {}).get("kernel_class")
    if not keep_other_cpus or top in (None, here):
        _set_top_level(report, entry)
    report["checks"] = {**others, here: entry}
    artifact.int8 = report
    return report


__all__ = ["CALIBRATION_IMAGES", "INT8_TOLERANCE", "QUANT_SETTINGS", "SCHEME", "calibration_subset", "compare_int8",
           "quantize_artifact", "quantize_onnx", "recheck_int8", "within_tolerance"]
