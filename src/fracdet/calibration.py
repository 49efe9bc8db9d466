"""Probability calibration: temperature scaling of logits, fitted on validation data."""

from __future__ import annotations

import numpy as np
import torch


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, max_iter: int = 200) -> float:
    """Fit T > 0 minimising the log-loss of ``sigmoid(logit / T)``; 1.0 when it cannot be fitted."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y_true, dtype=np.float64))
    if len(z) < 2 or len(torch.unique(y)) < 2:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and 0.01 < t < 100 else 1.0


def calibrated_probability(logits: np.ndarray | torch.Tensor, temperature: float) -> np.ndarray:
    """Probability of *fractured* from logits and the artifact's temperature."""
    z = torch.as_tensor(logits, dtype=torch.float32)
    return torch.sigmoid(z / float(temperature)).numpy()


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
