"""Probability calibration of logits (numpy): temperature, Platt (affine on the logit), beta and
isotonic maps, stored in the model file as ``{"method": ..., "params": {...}}`` and applied
without PyTorch or scikit-learn.

- ``temperature``: p = σ(z / T)
- ``platt``: p = σ(a·z + b), a > 0 — the affine map removes a shift that a temperature cannot
- ``beta``: p = σ(a·ln σ(z) − b·ln(1 − σ(z)) + c), a, b ≥ 0 (Kull et al. 2017; a = b is Platt)
- ``isotonic``: a non-decreasing step-free map, breakpoints ``x`` (logits) → ``y``
  (probabilities), applied with ``np.interp`` (flat beyond the ends)

Fitting temperature, Platt and beta needs scipy (work layer callers); isotonic fitting lives
in :mod:`fracdet.recalibrate` (scikit-learn).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METHODS = ("temperature", "platt", "beta", "isotonic")
MAX_BREAKPOINTS = 100_000


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, overflow-free


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _bce(s: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of scores ``s`` (logits), stable."""
    return float(np.mean(_softplus(s) - y * s))


def _beta_features(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ln p, −ln(1 − p)) of p = σ(z), without forming p."""
    return -_softplus(-z), _softplus(z)


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
    """Probability of *fractured* from logits and a temperature (float32)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return _sigmoid(z).astype(np.float32)


def fit_platt(logits: np.ndarray, y_true: np.ndarray) -> dict[str, Any]:
    """Platt scaling σ(a·z + b) by maximum likelihood (a kept > 0); identity when it cannot be fitted."""
    from scipy.optimize import minimize

    z, y = _prepare(logits, y_true)
    if z is None:
        return {"method": "platt", "params": {"a": 1.0, "b": 0.0}}
    res = minimize(lambda w: _bce(w[0] * z + w[1], y), x0=np.array([1.0, 0.0]), method="L-BFGS-B",
                   bounds=[(1e-3, 100.0), (-50.0, 50.0)])
    a, b = (float(v) for v in res.x)
    return {"method": "platt", "params": {"a": a, "b": b}}


def fit_beta(logits: np.ndarray, y_true: np.ndarray) -> dict[str, Any]:
    """Beta calibration σ(a·ln p − b·ln(1 − p) + c) of p = σ(z) by maximum likelihood (a, b ≥ 0)."""
    from scipy.optimize import minimize

    z, y = _prepare(logits, y_true)
    if z is None:
        return {"method": "beta", "params": {"a": 1.0, "b": 1.0, "c": 0.0}}
    f1, f2 = _beta_features(z)
    res = minimize(lambda w: _bce(w[0] * f1 + w[1] * f2 + w[2], y), x0=np.array([1.0, 1.0, 0.0]),
                   method="L-BFGS-B", bounds=[(0.0, 100.0), (0.0, 100.0), (-50.0, 50.0)])
    a, b, c = (float(v) for v in res.x)
    return {"method": "beta", "params": {"a": a, "b": b, "c": c}}


def _prepare(logits: Any, y_true: Any) -> tuple[Any, Any]:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    if len(z) < 2 or len(np.unique(y)) < 2:
        return None, None
    return z, y


def temperature_calibration(temperature: float) -> dict[str, Any]:
    """The calibration spec of plain temperature scaling."""
    return {"method": "temperature", "params": {"temperature": float(temperature)}}


def apply_calibration(logits: Any, calibration: dict[str, Any] | float | None) -> np.ndarray:
    """Probability of *fractured* (float32) from raw logits and a calibration spec
    (``{"method", "params"}``, validated by :func:`check_calibration`), a bare temperature, or
    None (no calibration: σ(z))."""
    z = np.asarray(logits, dtype=np.float64)
    if calibration is None:
        return _sigmoid(z).astype(np.float32)
    if not isinstance(calibration, dict):
        return calibrated_probability(z, float(calibration))
    method, p = calibration["method"], calibration["params"]
    if method == "temperature":
        out = _sigmoid(z / p["temperature"])
    elif method == "platt":
        out = _sigmoid(p["a"] * z + p["b"])
    elif method == "beta":
        f1, f2 = _beta_features(z)
        out = _sigmoid(p["a"] * f1 + p["b"] * f2 + p["c"])
    elif method == "isotonic":
        out = np.interp(z, np.asarray(p["x"], dtype=np.float64), np.asarray(p["y"], dtype=np.float64))
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return np.asarray(out).astype(np.float32)


def check_calibration(spec: Any) -> dict[str, Any]:
    """A calibration spec from an untrusted file, validated and normalised (floats, lists);
    raises ValueError naming what is wrong."""
    if not isinstance(spec, dict) or set(spec) - {"method", "params"}:
        raise ValueError("calibration must be a mapping with 'method' and 'params'")
    method, params = spec.get("method"), spec.get("params")
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} (expected one of {', '.join(METHODS)})")
    if not isinstance(params, dict):
        raise ValueError("calibration params is not a mapping")
    keys = {"temperature": ("temperature",), "platt": ("a", "b"), "beta": ("a", "b", "c"), "isotonic": ("x", "y")}
    if set(params) != set(keys[method]):
        raise ValueError(f"calibration {method} needs exactly {', '.join(keys[method])}")
    if method == "isotonic":
        x, y = params["x"], params["y"]
        if not (isinstance(x, list) and isinstance(y, list) and 2 <= len(x) == len(y) <= MAX_BREAKPOINTS):
            raise ValueError("isotonic breakpoints x and y must be two lists of equal length (2 or more)")
        if not all(_finite(v) for v in x + y):
            raise ValueError("isotonic breakpoints must be finite numbers")
        xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if np.any(np.diff(xa) <= 0) or np.any(np.diff(ya) < 0) or ya.min() < 0 or ya.max() > 1:
            raise ValueError("isotonic breakpoints: x must increase, y must not decrease and lie in [0, 1]")
        return {"method": method, "params": {"x": xa.tolist(), "y": ya.tolist()}}
    if not all(_finite(params[k]) for k in keys[method]):
        raise ValueError(f"calibration {method} parameters must be finite numbers")
    vals = {k: float(params[k]) for k in keys[method]}
    if method == "temperature" and not 0.0 < vals["temperature"] <= 1000.0:
        raise ValueError(f"temperature {vals['temperature']}")
    if method == "platt" and not (0.0 < vals["a"] <= 1000.0 and abs(vals["b"]) <= 1000.0):
        raise ValueError("platt needs 0 < a ≤ 1000 and |b| ≤ 1000")
    if method == "beta" and not (0.0 <= vals["a"] <= 1000.0 and 0.0 <= vals["b"] <= 1000.0
                                 and abs(vals["c"]) <= 1000.0):
        raise ValueError("beta needs 0 ≤ a, b ≤ 1000 and |c| ≤ 1000")
    return {"method": method, "params": vals}


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def describe_calibration(spec: dict[str, Any] | None) -> str:
    """A short human description, e.g. ``platt σ(1.02·z − 0.41)``."""
    if not spec:
        return "none"
    m, p = spec["method"], spec["params"]
    if m == "temperature":
        return f"temperature T = {p['temperature']:.3f}"
    if m == "platt":
        return f"Platt σ({p['a']:.3f}·z {'+' if p['b'] >= 0 else '−'} {abs(p['b']):.3f})"
    if m == "beta":
        return f"beta (a = {p['a']:.3f}, b = {p['b']:.3f}, c = {p['c']:.3f})"
    return f"isotonic ({len(p['x'])} breakpoints)"


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
