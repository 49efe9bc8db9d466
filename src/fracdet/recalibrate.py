"""Recalibration of a model on labelled data: the calibration map and operating points refitted
(in place) from the model's own logits — the step ``fracdet calibrate``, training and ensemble
fitting share.

The calibration method (temperature, Platt, beta, isotonic: :mod:`fracdet.calibration`) is chosen
honestly inside the validation data: repeated stratified k-fold, each method fitted on k − 1
folds and scored on the held-out fold (log-loss, ECE); the best out-of-fold method is then refitted
on all of the validation data."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from fracdet.calibration import (METHODS, apply_calibration, calibrated_probability, describe_calibration,
                                 expected_calibration_error, fit_beta, fit_platt, fit_temperature,
                                 temperature_calibration)

log = logging.getLogger(__name__)
CHOICES = ("auto", *METHODS)
SELECT_BY = ("logloss", "ece")
ISOTONIC_EPS = 1e-3  # isotonic probabilities are kept in [ε, 1 − ε]: no certainty from a step


def fit_calibration(method: str, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fit one calibration map (``{"method", "params"}``) on raw logits and labels."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if method == "temperature":
        return temperature_calibration(fit_temperature(z, y))
    if method == "platt":
        return fit_platt(z, y)
    if method == "beta":
        return fit_beta(z, y)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=ISOTONIC_EPS, y_max=1 - ISOTONIC_EPS, out_of_bounds="clip").fit(z, y)
        x, p = np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
        keep = np.concatenate([[True], np.diff(x) > 0])  # strictly increasing breakpoints
        x, p = x[keep], p[keep]
        if len(x) < 2:  # a constant map: two points around the one breakpoint
            x, p = np.array([x[0] - 1.0, x[0] + 1.0]), np.array([p[0], p[0]])
        return {"method": "isotonic", "params": {"x": x.tolist(), "y": np.maximum.accumulate(p).tolist()}}
    raise ValueError(f"unknown calibration method {method!r} (choose from {', '.join(METHODS)})")


def log_loss(prob: np.ndarray, y: np.ndarray) -> float:
    """Mean binary log-loss, probabilities clipped to [1e-7, 1 − 1e-7]."""
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def compare_calibrations(logits: np.ndarray, y: np.ndarray, methods: Sequence[str] = METHODS, folds: int = 5,
                         repeats: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Out-of-fold log-loss and ECE of each method (and of no calibration, ``none``) over
    ``repeats`` × stratified ``folds``-fold splits of the labelled logits (means over repeats)."""
    from sklearn.model_selection import StratifiedKFold

    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=int).reshape(-1)
    k = int(min(folds, np.bincount(y, minlength=2).min()))
    scores: dict[str, dict[str, list[float]]] = {m: {"logloss": [], "ece": []} for m in ("none", *methods)}
    for r in range(repeats):
        oof = {m: np.zeros(len(z)) for m in methods}
        if k >= 2:
            for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed + r).split(z, y):
                for m in methods:
                    oof[m][te] = apply_calibration(z[te], fit_calibration(m, z[tr], y[tr]))
        else:  # too few of one class to hold any out: in-sample (said by the caller)
            for m in methods:
                oof[m] = apply_calibration(z, fit_calibration(m, z, y))
        oof["none"] = apply_calibration(z, None)
        for m, p in oof.items():
            scores[m]["logloss"].append(log_loss(p, y))
            scores[m]["ece"].append(expected_calibration_error(p, y))
    return {m: {"logloss": float(np.mean(v["logloss"])), "ece": float(np.mean(v["ece"])), "folds": k,
                "repeats": repeats} for m, v in scores.items()}


def choose_calibration(logits: np.ndarray, y: np.ndarray, method: str = "auto", select_by: str = "logloss",
                       folds: int = 5, repeats: int = 5, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The calibration map to store and how it was chosen: ``auto`` picks the method with the
    lowest out-of-fold ``select_by`` (log-loss by default: a proper score) inside the labelled
    data, then refits it on all of it; a named method is only refitted (its out-of-fold figures
    are still reported)."""
    if method not in CHOICES:
        raise ValueError(f"unknown calibration method {method!r} (choose from {', '.join(CHOICES)})")
    if select_by not in SELECT_BY:
        raise ValueError(f"unknown selection score {select_by!r} (choose from {', '.join(SELECT_BY)})")
    if len(np.unique(np.asarray(y))) < 2:  # nothing to fit on: no calibration
        none = expected_calibration_error(apply_calibration(logits, None), y) if len(y) else float("nan")
        return temperature_calibration(1.0), {"method": "temperature", "chosen_by": "not fitted (one class only)",
                                               "out_of_fold": {}, "oof_ece_before": none, "oof_ece_after": none}
    table = compare_calibrations(logits, y, METHODS, folds, repeats, seed)
    chosen = min(METHODS, key=lambda m: table[m][select_by]) if method == "auto" else method
    spec = fit_calibration(chosen, logits, y)
    how = {"method": chosen, "chosen_by": f"out-of-fold {select_by}" if method == "auto" else "given",
           "out_of_fold": table, "oof_ece_before": table["none"]["ece"], "oof_ece_after": table[chosen]["ece"]}
    log.info("calibration %s (%s); out-of-fold ECE %.4f → %.4f", describe_calibration(spec), how["chosen_by"],
             how["oof_ece_before"], how["oof_ece_after"])
    return spec, how


def recalibrate(art: Any, samples: Sequence[Any], rule: Any = None, batch_size: int = 32,
                data_name: str = "the validation data", method: str = "auto",
                select_by: str = "logloss") -> dict[str, Any]:
    """Refit an artifact's calibration (``method``, see :func:`choose_calibration`) and
    operating points on labelled ``samples`` (in place).

    Works for any artifact, ensembles included (their fused logit is recalibrated as a whole).
    Returns the calibration summary stored in ``art.metrics["calibration"]``; the previous
    temperature and thresholds are recorded there too.
    """
    from fracdet.models.collect import collect_logits
    from fracdet.transforms import build_transforms

    model = art.build_model()
    logits, y, _ = collect_logits(model, samples, build_transforms(art.preprocess), batch_size)
    return calibrate_from_logits(art, logits, y, rule, data_name, method, select_by)


def calibrate_from_logits(art: Any, logits: np.ndarray, y: np.ndarray, rule: Any = None,
                          data_name: str = "the validation data", method: str = "auto",
                          select_by: str = "logloss") -> dict[str, Any]:
    """:func:`recalibrate` from the model's raw logits of labelled data (in place)."""
    from fracdet.errors import DatasetError
    from fracdet.metrics import binary_metrics, with_bootstrap_ci
    from fracdet.operating import ThresholdRule, choose_operating_points

    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        raise DatasetError("no readable images to calibrate on")
    if len(np.unique(y)) < 2:
        raise DatasetError("calibration needs both fractured and non-fractured images")
    previous = {"temperature": art.temperature, "calibration": art.calibration_in_use(), "threshold": art.threshold,
                "threshold_rule": art.threshold_rule, "doubt_threshold": art.doubt_threshold,
                "fracture_threshold": art.fracture_threshold}
    spec, how = choose_calibration(logits, y, method, select_by)
    prob = apply_calibration(logits, spec)
    ops = choose_operating_points(y, prob, rule or ThresholdRule(), data_name=data_name)  # on the new probabilities
    art.set_calibration(spec)
    art.threshold, art.threshold_rule = ops.threshold, ops.threshold_rule
    art.doubt_threshold, art.fracture_threshold = ops.doubt_threshold, ops.fracture_threshold
    art.threshold_note = ops.note
    summary = {
        "method": spec["method"], "params": spec["params"] if spec["method"] != "isotonic" else
        {"breakpoints": len(spec["params"]["x"])}, "temperature": art.temperature,
        "chosen_by": how["chosen_by"], "out_of_fold": how["out_of_fold"],
        "oof_ece_before": how["oof_ece_before"], "oof_ece_after": how["oof_ece_after"],
        "fitted_on": data_name,
        "n": int(len(y)), "positives": int(y.sum()),
        "val_ece_before": expected_calibration_error(calibrated_probability(logits, 1.0), y),
        "val_ece_previous": expected_calibration_error(apply_calibration(logits, previous["calibration"]), y),
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
    from fracdet.data.selection import select_samples

    ds = load_dataset(data, layout=layout)
    if split == "auto":
        same = bool(art.data) and art.data.get("fingerprint") == ds.fingerprint()
        split = "val" if ds.has_splits() or same else "all"
    samples, note = select_samples(ds, split, art.training, art.data, art.recorded_split())
    return samples, note.replace("the model was trained on this data; ", "")
