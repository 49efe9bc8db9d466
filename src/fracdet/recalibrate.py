"""Recalibration of a model on labelled data: temperature and operating points refitted (in
place) from the model's own logits — the step ``fracdet calibrate``, training and ensemble
fitting share."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fracdet.calibration import calibrated_probability, expected_calibration_error, fit_temperature


def recalibrate(art: Any, samples: Sequence[Any], rule: Any = None, batch_size: int = 32,
                data_name: str = "the validation data") -> dict[str, Any]:
    """Refit an artifact's temperature and operating points on labelled ``samples`` (in place).

    Works for any artifact, ensembles included (their fused logit is recalibrated as a whole).
    Returns the calibration summary stored in ``art.metrics["calibration"]``; the previous
    temperature and thresholds are recorded there too.
    """
    from fracdet.models.collect import collect_logits
    from fracdet.transforms import build_transforms

    model = art.build_model()
    logits, y, _ = collect_logits(model, samples, build_transforms(art.preprocess), batch_size)
    return calibrate_from_logits(art, logits, y, rule, data_name)


def calibrate_from_logits(art: Any, logits: np.ndarray, y: np.ndarray, rule: Any = None,
                          data_name: str = "the validation data") -> dict[str, Any]:
    """:func:`recalibrate` from the model's raw logits of labelled data (in place)."""
    from fracdet.errors import DatasetError
    from fracdet.metrics import binary_metrics, with_bootstrap_ci
    from fracdet.operating import ThresholdRule, choose_operating_points

    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        raise DatasetError("no readable images to calibrate on")
    if len(np.unique(y)) < 2:
        raise DatasetError("calibration needs both fractured and non-fractured images")
    previous = {"temperature": art.temperature, "threshold": art.threshold, "threshold_rule": art.threshold_rule,
                "doubt_threshold": art.doubt_threshold, "fracture_threshold": art.fracture_threshold}
    temperature = fit_temperature(logits, y)
    prob = calibrated_probability(logits, temperature)
    ops = choose_operating_points(y, prob, rule or ThresholdRule(), data_name=data_name)
    art.temperature = temperature
    art.threshold, art.threshold_rule = ops.threshold, ops.threshold_rule
    art.doubt_threshold, art.fracture_threshold = ops.doubt_threshold, ops.fracture_threshold
    art.threshold_note = ops.note
    summary = {
        "temperature": temperature,
        "fitted_on": data_name,
        "n": int(len(y)), "positives": int(y.sum()),
        "val_ece_before": expected_calibration_error(calibrated_probability(logits, 1.0), y),
        "val_ece_previous": expected_calibration_error(calibrated_probability(logits, previous["temperature"]), y),
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
