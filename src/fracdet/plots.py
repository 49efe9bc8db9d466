"""Matplotlib figures (headless): training curves, ROC curve, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from fracdet.fsutil import atomic_path  # noqa: E402


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


def plot_roc(y_true: np.ndarray, prob: np.ndarray, auc: float, threshold: float, path: str | Path) -> Path:
    """ROC curve with the operating point marked."""
    fpr, tpr, thr = roc_curve(y_true, prob)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"ROC (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    pred = np.asarray(prob) >= threshold
    y = np.asarray(y_true).astype(bool)
    sens = (pred & y).sum() / max(y.sum(), 1)
    spec = (~pred & ~y).sum() / max((~y).sum(), 1)
    ax.plot([1 - spec], [sens], "o", color="crimson", label=f"operating point (t = {threshold:.2f})")
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
