"""The clinical part of an evaluation: bootstrap CIs, subgroups, calibration, operating points
and verdicts, and the figures (PNG files beside ``metrics.json``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fracdet.operating import rates_at

log = logging.getLogger(__name__)

FIGURES = {
    "roc_curve.png": "ROC curve with the operating points",
    "pr_curve.png": "Precision–recall curve",
    "confusion_matrix.png": "Confusion matrix at the main threshold",
    "reliability.png": "Reliability diagram (calibration)",
    "score_histograms.png": "Calibrated scores per true class",
    "samples.png": "Sample predictions",
    "subgroups.png": "ROC-AUC by subgroup",
    "curves.png": "Training curves",
}
"""Figure files an evaluation may write, in report order, with their captions."""

VIEWS = ("frontal", "lateral", "oblique")


def subgroups_of(samples: Sequence[Any]) -> dict[str, list[str | None]]:
    """Subgroup values per sample: body ``region`` (FracAtlas' dataset.csv or a manifest's region
    column), ``hardware`` (FracAtlas flag) and ``view`` (FracAtlas' frontal/lateral/oblique flags or
    a DICOM view). Unknown values are None; groupings nobody has are left out."""
    region, hardware, view = [], [], []
    for s in samples:
        meta = getattr(s, "meta", None) or {}
        region.append(getattr(s, "region", None) or None)
        hardware.append(None if "hardware" not in meta else ("hardware" if meta["hardware"] else "no hardware"))
        flags = [v for v in VIEWS if meta.get(v)]
        if flags:
            view.append(flags[0] if len(flags) == 1 else "multiple")
        else:
            view.append(str(meta["view"]) if meta.get("view") else None)
    out = {"region": region, "hardware": hardware, "view": view}
    return {k: v for k, v in out.items() if any(x is not None for x in v)}


def verdict_counts(y: np.ndarray, p: np.ndarray, doubt: float, fracture: float) -> dict[str, dict[str, int]]:
    """How many images of each true class get each verdict."""
    from fracdet.operating import VERDICTS, verdict

    v = np.asarray([verdict(float(x), doubt, fracture) for x in p], dtype=object)
    return {name: {k: int(np.sum((v == k) & (y == cls))) for k in VERDICTS}
            for name, cls in (("fractured", 1), ("not fractured", 0))}


def _sample_grid(samples: Sequence[Any], y: np.ndarray, p: np.ndarray, threshold: float, out: Path,
                 per_group: int = 6) -> bool:
    from fracdet.io.images import read_image
    from fracdet.plots import plot_sample_grid
    from fracdet.transforms import resize_to_input

    pred = p >= threshold
    groups = {
        "true positives": sorted(np.flatnonzero(pred & (y == 1)), key=lambda i: -p[i]),
        "false negatives": sorted(np.flatnonzero(~pred & (y == 1)), key=lambda i: p[i]),
        "false positives": sorted(np.flatnonzero(pred & (y == 0)), key=lambda i: -p[i]),
    }
    shown: dict[str, list[tuple[np.ndarray, float, str]]] = {}
    for name, idx in groups.items():
        items = []
        for i in idx[:per_group]:
            try:
                x = read_image(samples[i].path, min_size=160)
            except Exception:  # unreadable now: leave it out of the grid
                continue
            pixels = resize_to_input(x.pixels, 160, "letterbox")[0]
            region = getattr(samples[i], "region", None)
            items.append((pixels, float(p[i]), Path(samples[i].path).name + (f"\n{region}" if region else "")))
        shown[name] = items
    if not any(shown.values()):
        return False
    plot_sample_grid(shown, out / "samples.png")
    return True


def clinical_evaluation(out_dir: str | Path, y: np.ndarray, prob: np.ndarray, threshold: float, *,
                        doubt_threshold: float | None = None, fracture_threshold: float | None = None,
                        logits: np.ndarray | None = None, temperature: float = 1.0,
                        calibration: dict[str, Any] | None = None,
                        samples: Sequence[Any] | None = None, n_resamples: int = 1000, seed: int = 0,
                        run_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything beyond the point metrics, as a dict to merge into ``metrics.json``; writes the
    figures of :data:`FIGURES` that apply (plus the confusion matrix, written by the caller).

    ``logits`` (raw, before calibration) give the calibration section (ECE before/after);
    ``calibration``: the map that made ``prob`` (default: temperature scaling by ``temperature``);
    ``samples`` (in the order of ``y``) give subgroups and the sample grid; ``run_dir`` (a
    training run folder with ``metrics.csv``) gives the training curves.
    """
    from fracdet.calibration import (calibrated_probability, describe_calibration, expected_calibration_error,
                                     reliability_curve, temperature_calibration)
    from fracdet.metrics import bootstrap_ci, subgroup_metrics
    from fracdet import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y, dtype=int)
    p = np.asarray(prob, dtype=float)
    both = bool(y.any() and (1 - y).any())
    doubt = float(threshold if doubt_threshold is None else doubt_threshold)
    fracture = float(threshold if fracture_threshold is None else fracture_threshold)
    res: dict[str, Any] = {"ci": bootstrap_ci(y, p, threshold, n_resamples, seed)}
    res["bootstrap"] = {"n_resamples": int(n_resamples), "seed": int(seed), "level": 0.95,
                        "method": "percentile, stratified by class"}
    res["operating_points"] = {"main": rates_at(y, p, threshold), "doubt": rates_at(y, p, doubt),
                               "fracture": rates_at(y, p, fracture)}
    res["verdicts"] = verdict_counts(y, p, doubt, fracture)
    curves: dict[str, dict[str, list[float]]] = {}
    ece: dict[str, float] = {}
    if logits is not None:
        raw = calibrated_probability(np.asarray(logits), 1.0)
        spec = calibration or temperature_calibration(temperature)
        after = (f"after (T = {temperature:.2f})" if spec["method"] == "temperature"
                 else f"after ({describe_calibration(spec)})")
        ece = {"before calibration": expected_calibration_error(raw, y), after: expected_calibration_error(p, y)}
        curves = {"before calibration": reliability_curve(raw, y), after: reliability_curve(p, y)}
        res["calibration"] = {"temperature": float(temperature), "method": spec["method"],
                              "ece_before": list(ece.values())[0], "ece_after": list(ece.values())[1], "bins": 10}
    else:
        ece = {"calibrated": expected_calibration_error(p, y)}
        curves = {"calibrated": reliability_curve(p, y)}
        res["calibration"] = {"ece_after": ece["calibrated"], "bins": 10}
    if samples is not None:
        groups = subgroups_of(samples)
        res["subgroups"] = subgroup_metrics(y, p, threshold, groups, n_resamples=n_resamples, seed=seed)
    figures = []
    points = {"doubt": doubt, "fracture": fracture} if (doubt, fracture) != (threshold, threshold) else {}
    if both:
        ci = res["ci"]["roc_auc"]
        plots.plot_roc(y, p, ci["estimate"], threshold, out / "roc_curve.png", points=points,
                       auc_ci=(ci["low"], ci["high"]))
        plots.plot_pr(y, p, res["ci"]["pr_auc"]["estimate"], threshold, out / "pr_curve.png")
        figures += ["roc_curve.png", "pr_curve.png"]
    plots.plot_reliability(curves, out / "reliability.png", ece)
    plots.plot_score_histograms(y, p, {"threshold": threshold, **points}, out / "score_histograms.png")
    figures += ["reliability.png", "score_histograms.png"]
    if samples is not None and len(samples) == len(y):
        if _sample_grid(samples, y, p, threshold, out):
            figures.append("samples.png")
    if res.get("subgroups"):
        plots.plot_subgroup_auc(res["subgroups"], out / "subgroups.png")
        figures.append("subgroups.png")
    if run_dir is not None:
        if _training_curves(Path(run_dir), out):
            figures.append("curves.png")
    res["figures"] = figures
    return res


def _training_curves(run_dir: Path, out: Path) -> bool:
    from fracdet.plots import plot_training_curves

    csv_path = run_dir / "metrics.csv"
    if not csv_path.is_file():
        log.warning("%s: no metrics.csv, no training curves in the report", run_dir)
        return False
    import csv

    with open(csv_path, newline="") as f:
        rows = [{k: (v if k == "phase" else (float(v) if v not in ("", None) else None)) for k, v in r.items()}
                for r in csv.DictReader(f)]
    if not rows:
        return False
    plot_training_curves(rows, out / "curves.png")
    return True


__all__ = ["FIGURES", "clinical_evaluation", "subgroups_of", "verdict_counts"]
