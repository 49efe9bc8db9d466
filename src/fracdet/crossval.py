"""Group-aware, stratified k-fold cross-validation of one training configuration (``fracdet cv``).

The data is audited and grouped as for training (near-duplicate, pixel-identical and exact copies
share a group; label-conflict groups are left out), then split with scikit-learn's
``StratifiedGroupKFold``: each fold is held out once as that fold's evaluation set; inside the
remaining folds a group-aware stratified share (the config's val fraction of train + val) is the
validation set for early stopping, calibration and operating points; the rest trains.  Each fold
is an ordinary training run (``fold-K/run``, with its report on the held-out fold), from a CSV
manifest of the fold's split (``fold-K/split.csv``).

The summary (``metrics.json``, ``metrics.csv``, ``metrics.txt``) gives every held-out metric per
fold and its mean ± sd (sample standard deviation) over folds.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fracdet.config import TrainConfig
from fracdet.data.layouts import Dataset
from fracdet.errors import DatasetError, FracdetError
from fracdet.fsutil import write_json, write_text

log = logging.getLogger(__name__)

# held-out metrics reported per fold (dotted paths into a run's test metrics)
METRICS = ("roc_auc", "pr_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
           "calibration.ece_before", "calibration.ece_after",
           "operating_points.main.sensitivity", "operating_points.main.specificity",
           "operating_points.doubt.sensitivity", "operating_points.doubt.specificity",
           "operating_points.fracture.sensitivity", "operating_points.fracture.specificity")


@dataclass
class CVResult:
    out_dir: Path
    folds: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    table: str


def fold_splits(ds: Dataset, folds: int, val_fraction: float, seed: int) -> list[list[str]]:
    """For each fold, every sample's split ('train', 'val' or 'test'), group-aware and stratified:
    the fold's own part is 'test'; a ``val_fraction`` share of the rest (whole groups) is 'val'."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([s.label for s in ds.samples])
    groups = np.array([s.group or str(s.path) for s in ds.samples])
    n_groups = len(set(groups))
    if folds < 2:
        raise FracdetError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if min(np.bincount(y, minlength=2)) < folds or n_groups < folds:
        raise DatasetError(f"{ds.root}: too few images of one class (or groups) for {folds} folds")
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    for k, (rest, test) in enumerate(outer.split(np.zeros(len(y)), y, groups)):
        n_inner = int(min(max(2, round(1.0 / max(val_fraction, 1e-6))), np.bincount(y[rest], minlength=2).min(),
                          len(set(groups[rest]))))
        if n_inner < 2:
            raise DatasetError(f"{ds.root}: fold {k + 1} leaves too few images of one class for a validation set")
        inner = StratifiedGroupKFold(n_splits=n_inner, shuffle=True, random_state=seed + 1 + k)
        _, val = next(inner.split(np.zeros(len(rest)), y[rest], groups[rest]))
        split = np.array(["train"] * len(y), dtype=object)
        split[test] = "test"
        split[rest[val]] = "val"
        out.append(list(split))
    return out


def _flatten(m: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key in METRICS:
        v: Any = m
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample sd (ddof 1; 0 with one fold), min, max and n of each metric over the folds
    (NaN values, e.g. an undefined AUROC, are left out)."""
    keys = [k for k in METRICS if any(k in r for r in rows)]
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r and math.isfinite(r[k])], dtype=float)
        if not len(vals):
            continue
        out[k] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                  "min": float(vals.min()), "max": float(vals.max()), "n": int(len(vals))}
    return out


def format_cv_table(folds: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per fold, then mean ± sd."""
    head = f"{'metric':<38}" + "".join(f"{'fold ' + str(f['fold']):>9}" for f in folds) + f"{'mean ± sd':>18}"
    lines = [head]
    for k, s in summary.items():
        cells = "".join(f"{f['metrics'][k]:>9.3f}" if k in f["metrics"] else f"{'—':>9}" for f in folds)
        lines.append(f"{k:<38}{cells}{s['mean']:>10.3f} ± {s['sd']:.3f}")
    lines.append("(each fold's metrics are on its held-out images, at operating points chosen on its validation set)")
    return "\n".join(lines)


def _write_csv(path: Path, folds: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = list(summary)
    w.writerow(["fold", "n", "positives", "train_seconds", *keys])
    for f in folds:
        w.writerow([f["fold"], f["n"], f["positives"], f"{f['train_seconds']:.1f}",
                    *[f"{f['metrics'][k]:.6f}" if k in f["metrics"] else "" for k in keys]])
    for stat in ("mean", "sd"):
        w.writerow([stat, "", "", "", *[f"{summary[k][stat]:.6f}" for k in keys]])
    write_text(path, buf.getvalue())


def cross_validate(cfg: TrainConfig, folds: int = 5, out_dir: str | Path | None = None) -> CVResult:
    """Train ``cfg`` once per fold and report held-out metrics per fold and mean ± sd (see the
    module docstring). ``cfg.out`` is ignored; the folds go under ``out_dir``."""
    from fracdet.train import prepare_data, train

    cfg.validate()
    out = Path(out_dir) if out_dir else Path("runs") / f"cv-{cfg.model}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    grouped = prepare_data(replace(cfg, resplit=True))  # audited groups; conflicts left out
    f = cfg.fractions
    val_fraction = f[1] / max(f[0] + f[1], 1e-9)
    splits = fold_splits(grouped, folds, val_fraction, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for k, split in enumerate(splits, 1):
        fold_dir = out / f"fold-{k}"
        fold_ds = Dataset([replace(s, split=sp, meta=dict(s.meta)) for s, sp in zip(grouped.samples, split)],
                          grouped.root, grouped.layout)
        fold_ds.to_csv(fold_dir / "split.csv")
        fold_cfg = replace(cfg, data=str(fold_dir / "split.csv"), layout="csv", out=str(fold_dir / "run"),
                           resplit=False, int8=False, augment=replace(cfg.augment))
        n_test = sum(sp == "test" for sp in split)
        log.info("cv fold %d/%d: train %d, val %d, held out %d", k, folds, sum(sp == "train" for sp in split),
                 sum(sp == "val" for sp in split), n_test)
        t0 = time.perf_counter()
        res = train(fold_cfg)
        seconds = time.perf_counter() - t0
        test = res.metrics.get("test", {})
        results.append({"fold": k, "n": int(test.get("n", n_test)), "positives": int(test.get("positives", 0)),
                        "train_seconds": seconds, "run_dir": str(res.run_dir), "metrics": _flatten(test),
                        "val_roc_auc": res.metrics.get("val", {}).get("roc_auc"),
                        "calibration": res.metrics.get("calibration", {}).get("method")})
    summary = summarise([r["metrics"] for r in results])
    table = format_cv_table(results, summary)
    write_json(out / "metrics.json", {"folds": results, "summary": summary, "config": cfg.to_dict(),
                                      "settings": {"folds": folds, "seed": cfg.seed, "val_fraction": val_fraction,
                                                   "splitter": "StratifiedGroupKFold (audit groups)",
                                                   "images": len(grouped.samples)}})
    _write_csv(out / "metrics.csv", results, summary)
    write_text(out / "metrics.txt", table + "\n")
    return CVResult(out, results, summary, table)
