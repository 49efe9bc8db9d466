"""Clinical classification metrics for a binary fracture classifier (scikit-learn based)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1, ROC-AUC, PR-AUC and the confusion matrix.

    ``prob`` is the probability of *fractured*; a case is called fractured when
    ``prob >= threshold``.  Undefined ratios (e.g. no positives) are NaN, never an error.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    sens = _safe_div(tp, tp + fn)
    ppv = _safe_div(tp, tp + fp)
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "threshold": float(threshold),
        "accuracy": _safe_div(tp + tn, len(y)),
        "sensitivity": sens,
        "recall": sens,
        "specificity": _safe_div(tn, tn + fp),
        "precision": ppv,
        "ppv": ppv,
        "npv": _safe_div(tn, tn + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def classification_report(y_true: np.ndarray, prob: np.ndarray, threshold: float, labels: list[str]) -> str:
    """scikit-learn's text classification report at the given threshold."""
    pred = (np.asarray(prob) >= threshold).astype(int)
    return str(skm.classification_report(y_true, pred, labels=[0, 1], target_names=labels, digits=3, zero_division=0))


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity − 1 (0.5 if undefined)."""
    y = np.asarray(y_true, dtype=int)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = skm.roc_curve(y, prob)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(max(thr[best], 0.0), 1.0))


def format_table(m: dict[str, Any]) -> str:
    """A readable fixed-width table of the main metrics."""
    rows = [
        ("n (fractured / not)", f"{m['n']} ({m['positives']} / {m['negatives']})"),
        ("threshold", f"{m['threshold']:.3f}"),
        ("ROC-AUC", f"{m['roc_auc']:.3f}"),
        ("PR-AUC", f"{m['pr_auc']:.3f}"),
        ("accuracy", f"{m['accuracy']:.3f}"),
        ("sensitivity (recall)", f"{m['sensitivity']:.3f}"),
        ("specificity", f"{m['specificity']:.3f}"),
        ("PPV (precision)", f"{m['ppv']:.3f}"),
        ("NPV", f"{m['npv']:.3f}"),
        ("F1", f"{m['f1']:.3f}"),
    ]
    cm = m["confusion_matrix"]
    width = max(len(r[0]) for r in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [
        "",
        "confusion matrix   pred: not  pred: fractured",
        f"true: not          {cm['tn']:>9}  {cm['fp']:>15}",
        f"true: fractured    {cm['fn']:>9}  {cm['tp']:>15}",
    ]
    return "\n".join(lines)
