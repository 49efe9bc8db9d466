"""Clinical classification metrics for a binary fracture classifier (scikit-learn based)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from fracdet.operating import confusion_at


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1, ROC-AUC, PR-AUC and the confusion matrix.

    ``prob`` is the probability of *fractured*; a case is called fractured when
    ``prob >= threshold``.  Undefined ratios (e.g. no positives) are NaN, never an error.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    c = confusion_at(y, p, threshold)
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]
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


# ----------------------------------------------------------------------------- uncertainty

CI_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1", "roc_auc", "pr_auc")
"""The metrics given a bootstrap confidence interval."""


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ROC-AUC by the rank-sum (Mann–Whitney) formula, ties counted half; NaN with one class.
    Equal to scikit-learn's ``roc_auc_score`` and much faster for bootstrap loops."""
    from scipy.stats import rankdata

    y = np.asarray(y_true, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return float("nan")
    ranks = rankdata(np.asarray(prob, dtype=float))
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(y_true: np.ndarray, prob: np.ndarray) -> float:
    """PR-AUC as average precision, Σ (Rₙ − Rₙ₋₁) Pₙ over distinct thresholds (as scikit-learn)."""
    y = np.asarray(y_true, dtype=float)
    pos = y.sum()
    if not pos or pos == len(y):
        return float("nan")
    order = np.argsort(-np.asarray(prob, dtype=float), kind="mergesort")
    p_sorted, y_sorted = np.asarray(prob, dtype=float)[order], y[order]
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], len(y) - 1]  # end of each run of tied scores
    tps = np.cumsum(y_sorted)[last]
    precision = tps / (last + 1)
    recall = tps / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """The CI metrics only, fast (no scikit-learn)."""
    c = confusion_at(y, p, threshold)
    tn, fp, fn, tp = float(c["tn"]), float(c["fp"]), float(c["fn"]), float(c["tp"])
    return {
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "accuracy": _safe_div(tp + tn, len(y)),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "roc_auc": roc_auc(y, p),
        "pr_auc": average_precision(y, p),
    }


def bootstrap_ci(y_true: np.ndarray, prob: np.ndarray, threshold: float, n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Percentile bootstrap confidence intervals of :data:`CI_METRICS`.

    Resampling is stratified: each resample draws the positives and the negatives with
    replacement separately, keeping the class counts (and prevalence) of the data, so
    AUROC is defined in every resample. Seeded, so the same inputs give the same interval.
    Returns ``{metric: {"estimate", "low", "high", "level", "n_resamples"}}``; bounds are
    NaN when the metric is undefined (e.g. sensitivity without positives).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    point = _point_metrics(y, p, threshold)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    draws: dict[str, list[float]] = {k: [] for k in CI_METRICS}
    for _ in range(max(int(n_resamples), 0) if len(y) else 0):
        idx = stratified_resample(rng, pos, neg)
        for k, v in _point_metrics(y[idx], p[idx], threshold).items():
            draws[k].append(v)
    return {k: percentile_interval(point[k], draws[k], level, n_resamples) for k in CI_METRICS}


def stratified_resample(rng: np.random.Generator, *groups: np.ndarray) -> np.ndarray:
    """One bootstrap resample of indices: each group drawn with replacement at its own size
    (an empty group stays empty), concatenated in order."""
    return np.concatenate([rng.choice(g, len(g)) if len(g) else g for g in groups])


def percentile_interval(estimate: float, draws: Sequence[float], level: float, n_resamples: int) -> dict[str, float]:
    """``{"estimate", "low", "high", "level", "n_resamples"}``: the percentile interval of the
    bootstrap ``draws`` (NaN draws left out; NaN bounds when none is left)."""
    vals = np.asarray([v for v in draws if v == v], dtype=float)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(vals, [alpha, 1 - alpha]) if len(vals) else (float("nan"), float("nan"))
    return {"estimate": estimate, "low": float(low), "high": float(high), "level": level,
            "n_resamples": int(n_resamples)}


def with_bootstrap_ci(m: dict[str, Any], y_true: np.ndarray, prob: np.ndarray, threshold: float,
                      n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``m`` plus ``ci`` (:func:`bootstrap_ci`) and ``bootstrap`` (how), as ``fracdet evaluate``
    reports the test split; unchanged when ``y_true`` lacks a class."""
    if len(np.unique(np.asarray(y_true, dtype=int))) < 2:
        return m
    return {**m, "ci": bootstrap_ci(y_true, prob, threshold, n_resamples, seed),
            "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": 0.95,
                          "method": "percentile, stratified by class"}}


def subgroup_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float, groups: dict[str, Sequence[Any]],
                     n_resamples: int = 1000, seed: int = 0, min_size: int = 1) -> dict[str, dict[str, Any]]:
    """Metrics with bootstrap CIs per subgroup.

    ``groups`` maps a grouping name (``"region"``, ``"hardware"``, ``"view"``) to one value per
    sample (``None``/``""`` = unknown, left out). Result: ``{grouping: {value: metrics}}`` where
    metrics are :func:`binary_metrics` plus ``"ci"``. Groupings with fewer than two known values
    are left out (nothing to compare).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    out: dict[str, dict[str, Any]] = {}
    for name, values in groups.items():
        vals = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
        if len(vals) != len(y):
            raise ValueError(f"subgroup {name!r}: {len(vals)} values for {len(y)} samples")
        known = sorted({v for v in vals if v != ""})
        if len(known) < 2:
            continue
        out[name] = {}
        for value in known:
            sel = vals == value
            if sel.sum() < min_size:
                continue
            m = binary_metrics(y[sel], p[sel], threshold)
            m["ci"] = bootstrap_ci(y[sel], p[sel], threshold, n_resamples, seed)
            out[name][value] = m
    return out


def format_ci(ci: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of estimates with their confidence intervals."""
    names = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV",
             "accuracy": "accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}
    first = next(iter(ci.values()), {})
    lines = [f"{'metric':<12}  estimate  {int(round(100 * first.get('level', 0.95)))}% CI "
             f"(bootstrap, {first.get('n_resamples', 0)} stratified resamples)"]
    for k, v in ci.items():
        lines.append(f"{names.get(k, k):<12}  {v['estimate']:>8.3f}  [{v['low']:.3f}, {v['high']:.3f}]")
    return "\n".join(lines)
