"""Probability calibration: temperature scaling of logits, fitted on validation data (numpy)."""

from __future__ import annotations

from typing import Any

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
