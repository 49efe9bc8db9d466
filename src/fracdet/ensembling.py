"""Fitting an ensemble on validation data: fusion weights, then temperature and operating
points of the fused logit (``fracdet ensemble --data``)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from fracdet.models.ensemble import EPS, build_ensemble, fit_weights, member_probabilities

log = logging.getLogger(__name__)


def fit_ensemble(members: Sequence[Any], sources: Sequence[str], data: Any = None,
                 weights: Sequence[float] | None = None, fit: str = "auroc", split: str = "auto",
                 layout: str = "auto", rule: Any = None, batch_size: int = 32) -> tuple[Any, dict[str, Any]]:
    """Build an ensemble artifact and, given validation ``data``, fit what is not given: the
    weights (``fit``: auroc or logloss; unless ``weights``), then the ensemble's temperature and
    operating points on the fused logit. Returns the artifact and a summary (member and
    ensemble validation AUROC, weights, how they were chosen)."""
    from fracdet.recalibrate import calibrate_from_logits, validation_samples
    from fracdet.metrics import roc_auc
    from fracdet.transforms import build_transforms

    art = build_ensemble(members, weights, sources)
    summary: dict[str, Any] = {"members": list(sources), "weights_from": "given" if weights is not None else "equal"}
    if data is None:
        summary["weights"] = art.model_config["weights"]
        log.warning("no validation data: ensemble temperature 1, thresholds the weighted mean of the members'; "
                    "run fracdet calibrate")
        return art, summary
    samples, note = validation_samples(data, members[0], split, layout)
    net = art.build_model()
    P, y = member_probabilities(net, samples, build_transforms(art.preprocess), batch_size)
    if weights is None:
        w = fit_weights(P, y, fit)
        summary["weights_from"] = f"fitted on {note} to {'maximise AUROC' if fit == 'auroc' else 'minimise log-loss'}"
        art.model_config["weights"] = [float(v) for v in w]
    w_arr = np.asarray(art.model_config["weights"], dtype=float)
    p = np.clip(P @ w_arr, EPS, 1 - EPS)
    logits = np.log(p) - np.log1p(-p)
    cal = calibrate_from_logits(art, logits, y, rule, data_name=note)
    summary.update({
        "weights": art.model_config["weights"], "fitted_on": note, "n": int(len(y)), "positives": int(y.sum()),
        "val_auroc_members": [roc_auc(y, P[:, i]) for i in range(P.shape[1])],
        "val_auroc_ensemble": roc_auc(y, p), "calibration": cal,
    })
    art.metrics["ensemble"] = {k: v for k, v in summary.items() if k != "calibration"}
    art.threshold_rule = f"{art.threshold_rule}; fusion weights {summary['weights_from']}"
    return art, summary
