"""Probability calibration: temperature scaling of logits, fitted on validation data (numpy)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Fit T > 0 minimising the log-loss of ``sigmoid(logit / T)`` (bounded scalar search over
    log T in [0.01, 100]); 1.0 when it cannot be fitted."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    if len(z) < 2 or len(np.unique(y)) < 2:
        return 1.0

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # BCE with logits, stable

    res = minimize_scalar(loss, bounds=(np.log(0.01), np.log(100.0)), method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    return t if res.success and np.isfinite(t) and 0.01 < t < 100 else 1.0


def calibrated_probability(logits: Any, temperature: float) -> np.ndarray:
    """Probability of *fractured* from logits and the artifact's temperature (float32)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # the logistic function, overflow-free


def expected_calibration_error(prob: np.ndarray, y_true: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins over [0, 1]."""
    p, y = np.asarray(prob, dtype=float), np.asarray(y_true, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


def reliability_curve(prob: np.ndarray, y_true: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Per equal-width bin: mean predicted probability, observed fraction fractured, count."""
    p, y = np.asarray(prob, dtype=float), np.asarray(y_true, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out: dict[str, list[float]] = {"predicted": [], "observed": [], "count": [], "bin_low": []}
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out["predicted"].append(float(p[sel].mean()))
            out["observed"].append(float(y[sel].mean()))
            out["count"].append(int(sel.sum()))
            out["bin_low"].append(b / bins)
    return out


def recalibrate(art: Any, samples: Sequence[Any], rule: Any = None, batch_size: int = 32,
                data_name: str = "the validation data") -> dict[str, Any]:
    """Refit an artifact's temperature and operating points on labelled ``samples`` (in place).

    Works for any artifact, ensembles included (their fused logit is recalibrated as a whole).
    Returns the calibration summary stored in ``art.metrics["calibration"]``; the previous
    temperature and thresholds are recorded there too.
    """
    from fracdet.models.collect import collect_logits
    from fracdet.transforms import build_transforms

    model = art.build_model()
    logits, y, _ = collect_logits(model, samples, build_transforms(art.preprocess), batch_size)
    return calibrate_from_logits(art, logits, y, rule, data_name)


def calibrate_from_logits(art: Any, logits: np.ndarray, y: np.ndarray, rule: Any = None,
                          data_name: str = "the validation data") -> dict[str, Any]:
    """:func:`recalibrate` from the model's raw logits of labelled data (in place)."""
    from fracdet.errors import DatasetError
    from fracdet.metrics import binary_metrics, with_bootstrap_ci
    from fracdet.operating import ThresholdRule, choose_operating_points

    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        raise DatasetError("no readable images to calibrate on")
    if len(np.unique(y)) < 2:
        raise DatasetError("calibration needs both fractured and non-fractured images")
    previous = {"temperature": art.temperature, "threshold": art.threshold, "threshold_rule": art.threshold_rule,
                "doubt_threshold": art.doubt_threshold, "fracture_threshold": art.fracture_threshold}
    temperature = fit_temperature(logits, y)
    prob = calibrated_probability(logits, temperature)
    ops = choose_operating_points(y, prob, rule or ThresholdRule(), data_name=data_name)
    art.temperature = temperature
    art.threshold, art.threshold_rule = ops.threshold, ops.threshold_rule
    art.doubt_threshold, art.fracture_threshold = ops.doubt_threshold, ops.fracture_threshold
    art.threshold_note = ops.note
    summary = {
        "temperature": temperature,
        "fitted_on": data_name,
        "n": int(len(y)), "positives": int(y.sum()),
        "val_ece_before": expected_calibration_error(calibrated_probability(logits, 1.0), y),
        "val_ece_previous": expected_calibration_error(calibrated_probability(logits, previous["temperature"]), y),
        "val_ece_after": expected_calibration_error(prob, y),
        "operating_points": {"rule": ops.rule, "achieved": ops.achieved},
        "previous": previous,
    }
    metrics = dict(art.metrics)
    if "test" in metrics:  # measured at the old operating point: kept, but no longer "the" test metrics
        metrics["test_before_recalibration"] = metrics.pop("test")
    val = with_bootstrap_ci(binary_metrics(y, prob, ops.threshold), y, prob, ops.threshold)
    art.metrics = {**metrics, "calibration": summary, "val": val}
    return summary


def validation_samples(data: Any, art: Any, split: str = "auto", layout: str = "auto") -> tuple[list[Any], str]:
    """The labelled samples to calibrate on and a sentence saying which.

    ``auto``: the ``val`` split when the data has splits; the re-derived ``val`` split when it is
    the model's own training data (same fingerprint; never calibrate on training images); else
    every image (a new site's own validation set). ``val``/``train``/``test``/``all`` choose.
    """
    from fracdet.data.layouts import load_dataset
    from fracdet.evaluate import select_samples

    ds = load_dataset(data, layout=layout)
    if split == "auto":
        same = bool(art.data) and art.data.get("fingerprint") == ds.fingerprint()
        split = "val" if ds.has_splits() or same else "all"
    samples, note = select_samples(ds, split, art.training, art.data)
    return samples, note.replace("the model was trained on this data; ", "")
