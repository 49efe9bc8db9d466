"""Matplotlib figures (headless): training curves, ROC and precision–recall curves, confusion
matrix, reliability diagram, score histograms, sample grid, subgroup forest plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from fracdet.fsutil import atomic_path  # noqa: E402
from fracdet.operating import rates_at  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_training_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss, accuracy and AUROC per epoch for train and validation, phases marked."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    epochs = [r["epoch"] for r in rows]
    for ax, key, title in zip(axes, ("loss", "acc", "auroc"), ("loss", "accuracy", "AUROC")):
        for split, style in (("train", "-o"), ("val", "-s")):
            vals = [r.get(f"{split}_{key}") for r in rows]
            pts = [(e, v) for e, v in zip(epochs, vals) if v is not None and v == v]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        for i in range(1, len(rows)):
            if rows[i]["phase"] != rows[i - 1]["phase"]:
                ax.axvline(epochs[i] - 0.5, color="gray", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("training curves (dashed line: phase 1 head → phase 2 fine-tuning)")
    return _save(fig, path)


def _rates_at(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[float, float]:
    r = rates_at(y_true, prob, threshold)
    return r["sensitivity"], r["specificity"]


def plot_roc(y_true: np.ndarray, prob: np.ndarray, auc: float, threshold: float, path: str | Path,
             points: dict[str, float] | None = None, auc_ci: tuple[float, float] | None = None) -> Path:
    """ROC curve with the operating point (and any other named ``points``: threshold) marked."""
    fpr, tpr, thr = roc_curve(y_true, prob)
    fig, ax = plt.subplots(figsize=(5, 5))
    ci = f" [{auc_ci[0]:.3f}, {auc_ci[1]:.3f}]" if auc_ci else ""
    ax.plot(fpr, tpr, label=f"ROC (AUC = {auc:.3f}{ci})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    sens, spec = _rates_at(y_true, prob, threshold)
    ax.plot([1 - spec], [sens], "o", color="crimson", label=f"operating point (t = {threshold:.2f})")
    for (name, t), (marker, color) in zip((points or {}).items(), (("^", "darkorange"), ("s", "purple"),
                                                                    ("D", "green"), ("v", "brown"))):
        se, sp = _rates_at(y_true, prob, t)
        ax.plot([1 - sp], [se], marker, color=color, label=f"{name} (t = {t:.2f}: sens {se:.2f}, spec {sp:.2f})")
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(cm: dict[str, int], labels: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix with counts and row percentages."""
    mat = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(mat, cmap="Blues")
    for i in range(2):
        for j in range(2):
            pct = 100 * mat[i, j] / max(mat[i].sum(), 1)
            color = "white" if mat[i, j] > mat.max() / 2 else "black"
            ax.text(j, i, f"{mat[i, j]}\n({pct:.0f}%)", ha="center", va="center", color=color)
    ax.set_xticks([0, 1], [f"pred: {labels[0]}", f"pred: {labels[1]}"])
    ax.set_yticks([0, 1], [f"true: {labels[0]}", f"true: {labels[1]}"])
    ax.set_title("confusion matrix")
    return _save(fig, path)


def plot_pr(y_true: np.ndarray, prob: np.ndarray, ap: float, threshold: float, path: str | Path) -> Path:
    """Precision–recall curve with the operating point and the prevalence line."""
    from sklearn.metrics import precision_recall_curve

    prec, rec, _ = precision_recall_curve(y_true, prob)
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(prob) >= threshold
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(rec, prec, label=f"PR (average precision = {ap:.3f})")
    ax.axhline(y.mean(), color="gray", linestyle=":", label=f"prevalence {y.mean():.2f}")
    if pred.any():
        ax.plot([(pred & y).sum() / max(y.sum(), 1)], [(pred & y).sum() / pred.sum()], "o", color="crimson",
                label=f"operating point (t = {threshold:.2f})")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision–recall curve")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(curves: dict[str, dict[str, list[float]]], path: str | Path, ece: dict[str, float] | None = None) -> Path:
    """Reliability diagram: observed fraction fractured against mean predicted probability per
    bin, one line per curve (e.g. before / after temperature scaling)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
    for (name, c), style in zip(curves.items(), ("-o", "-s", "-^")):
        label = f"{name} (ECE {ece[name]:.3f})" if ece and name in ece else name
        ax.plot(c["predicted"], c["observed"], style, markersize=4, label=label)
    ax.set_xlabel("mean predicted probability of fracture")
    ax.set_ylabel("observed fraction fractured")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability diagram (10 equal-width bins)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histograms(y_true: np.ndarray, prob: np.ndarray, thresholds: dict[str, float], path: str | Path) -> Path:
    """Histograms of the calibrated probability per true class, thresholds as vertical lines."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, 1, 26)
    ax.hist(p[~y], bins=bins, alpha=0.6, color="tab:blue", label=f"not fractured (n={int((~y).sum())})")
    ax.hist(p[y], bins=bins, alpha=0.6, color="tab:red", label=f"fractured (n={int(y.sum())})")
    for (name, t), color in zip(thresholds.items(), ("crimson", "darkorange", "purple", "green")):
        ax.axvline(t, color=color, linestyle="--", linewidth=1.2, label=f"{name} {t:.2f}")
    ax.set_xlabel("calibrated probability of fracture")
    ax.set_ylabel("images")
    ax.set_title("scores per true class")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sample_grid(groups: dict[str, Sequence[tuple[np.ndarray, float, str]]], path: str | Path) -> Path:
    """A grid of example images: one row per group (e.g. true positives, false negatives,
    false positives), each image titled with its probability. ``groups``: name → [(pixels H×W
    in [0, 1], probability, caption)]."""
    rows = [(k, v) for k, v in groups.items()]
    ncols = max([len(v) for _, v in rows] + [1])
    fig, axes = plt.subplots(max(len(rows), 1), ncols, figsize=(2.2 * ncols, 2.5 * max(len(rows), 1)),
                             squeeze=False)
    for r, (name, items) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(items):
                pixels, prob, caption = items[c]
                ax.imshow(pixels, cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"p = {prob:.3f}\n{caption}", fontsize=7)
        axes[r][0].text(-0.08, 0.5, name, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=10, fontweight="bold")
        if not items:
            axes[r][0].text(0.5, 0.5, "none", transform=axes[r][0].transAxes, ha="center", va="center")
    fig.suptitle("sample predictions (calibrated probability of fracture)")
    return _save(fig, path)


def plot_subgroup_auc(subgroups: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """ROC-AUC with its confidence interval per subgroup (forest plot)."""
    rows = [(f"{g}: {v}", m) for g, vals in subgroups.items() for v, m in vals.items()]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    for i, (name, m) in enumerate(rows):
        ci = m.get("ci", {}).get("roc_auc", {})
        est, lo, hi = m.get("roc_auc", float("nan")), ci.get("low", float("nan")), ci.get("high", float("nan"))
        if est == est:
            ax.errorbar([est], [i], xerr=[[max(est - lo, 0)], [max(hi - est, 0)]] if lo == lo else None, fmt="o",
                        color="tab:blue", capsize=3)
    ax.set_yticks(range(len(rows)), [f"{n} (n={m.get('n')})" for n, m in rows])
    ax.invert_yaxis()
    ax.set_xlabel("ROC-AUC (95% bootstrap CI)")
    ax.set_xlim(0.4, 1.0)
    ax.axvline(0.5, color="gray", linestyle=":")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("ROC-AUC by subgroup")
    return _save(fig, path)
