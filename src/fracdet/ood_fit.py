"""Fitting a model's out-of-distribution reference (:class:`fracdet.ood.OodReference`).

- the films' pooled backbone features come from the model's own float32 graph (its
  ``features`` output; a graph exported before it had one is re-exported from the weights);
- the reference (mean and Ledoit-Wolf shrunk covariance: a full Mahalanobis distance) is fitted
  on the **training** split — measured on FracAtlas against distances in a PCA space (8–256
  dimensions, with and without the residual) and k-NN cosine distances, it alone caught every
  kind of image tried (see benchmarks/ood_rates.py and the README);
- the threshold is a high percentile (:data:`THRESHOLD_PERCENTILE`) of the **validation**
  films' distances — never the test split;
- the inverted-film detector is a logistic regression on training films and their inversions
  (1 − pixels), its accuracy measured on validation films and their inversions.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fracdet.errors import FracdetError, ImageReadError
from fracdet.inference.onnx import OnnxRunner
from fracdet.io.images import read_image
from fracdet.ood import OodReference
from fracdet.transforms import build_transforms

log = logging.getLogger(__name__)
FEATURES = "features"
THRESHOLD_PERCENTILE = 99.5


def graph_has_features(graph: bytes) -> bool:
    """Whether an ONNX graph gives the ``features`` output."""
    return FEATURES in OnnxRunner(graph, threads=1).output_names


def ensure_feature_graph(artifact: Any) -> bool:
    """Give ``artifact`` a float32 graph with the ``features`` output, re-exported from its
    weights when the stored one predates it (PyTorch needed then); True when re-exported."""
    if artifact.onnx is not None and graph_has_features(artifact.onnx):
        return False
    if artifact.kind == "ensemble":
        raise FracdetError("an ensemble's graph gives no features: only the image checks apply to it")
    export = importlib.import_module("fracdet.models.export")
    log.info("re-exporting the float32 graph of %s with its features output", artifact.architecture)
    artifact.onnx = export.onnx_bytes(export.build_model(artifact), artifact.preprocess.input_size)
    return True


def film_features(graph: bytes, preprocess: Any, paths: Iterable[str | Path], invert: bool = False,
                  batch_size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Pooled features (N×C) of readable films (``invert``: of their negatives, 1 − pixels)
    and the paths read; unreadable files are skipped with one log line each."""
    runner = OnnxRunner(graph)
    transform = build_transforms(preprocess)
    size = preprocess.input_size
    feats: list[np.ndarray] = []
    done: list[str] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            feats.append(runner.run(transform.finish_batch(batch))[FEATURES])
            batch.clear()

    for p in paths:
        try:
            pixels = read_image(p, min_size=size).pixels
        except ImageReadError as exc:
            log.warning("%s", exc)
            continue
        batch.append(transform.prepare(1.0 - pixels if invert else pixels))
        done.append(str(p))
        if len(batch) >= batch_size:
            flush()
    flush()
    n_features = feats[0].shape[1] if feats else 0
    return (np.concatenate(feats) if feats else np.zeros((0, n_features), np.float32)), done


def fit_reference(train: np.ndarray, val: np.ndarray, train_inverted: np.ndarray,
                  percentile: float = THRESHOLD_PERCENTILE) -> tuple[OodReference, dict[str, Any]]:
    """Fit the reference on training features, its threshold on validation features, and the
    inverted-film detector on training features and their inversions' (see the module docstring)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    if len(train) < 10 or len(val) < 10:
        raise FracdetError(f"fitting the OOD reference needs at least 10 training and 10 validation films "
                           f"(got {len(train)} and {len(val)})")
    cov = LedoitWolf().fit(np.asarray(train, dtype=np.float64))
    evals, evecs = np.linalg.eigh(cov.precision_)  # precision = V diag(e) Vᵀ → whiten = diag(√e) Vᵀ
    whiten = (evecs * np.sqrt(np.clip(evals, 0.0, None))).T
    whiten = whiten.astype(np.float16).astype(np.float32)  # as stored (distances move by < 1e-4 relative)
    if not np.all(np.isfinite(whiten)):
        raise FracdetError("the features' covariance is too close to singular to store its inverse in float16")
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(np.r_[train, train_inverted],
                                                        np.r_[np.zeros(len(train)), np.ones(len(train_inverted))])
    ref = OodReference(mean=cov.location_.astype(np.float32), whiten=whiten.astype(np.float32), threshold=1.0,
                       invert_w=clf.coef_[0].astype(np.float32), invert_b=float(clf.intercept_[0]))
    threshold = float(np.percentile(ref.distance(val), percentile))
    ref = OodReference(ref.mean, ref.whiten, threshold, ref.invert_w, ref.invert_b)
    info = {"method": "mahalanobis (Ledoit-Wolf)", "shrinkage": float(cov.shrinkage_), "threshold": threshold,
            "threshold_rule": f"{percentile:g}th percentile of the validation films' distances",
            "n_train": int(len(train)), "n_val": int(len(val)),
            "val_refused": float(np.mean(ref.distance(val) > threshold))}
    return ref, info


def fit_artifact_ood(artifact: Any, train_paths: Sequence[str | Path], val_paths: Sequence[str | Path],
                     percentile: float = THRESHOLD_PERCENTILE) -> dict[str, Any]:
    """Fit and store the OOD reference of ``artifact`` (train films: reference and inversion
    detector; validation films: threshold and the detector's accuracy). Returns its summary."""
    ensure_feature_graph(artifact)
    graph, pre = artifact.onnx, artifact.preprocess
    train, _ = film_features(graph, pre, train_paths)
    val, _ = film_features(graph, pre, val_paths)
    train_inv, _ = film_features(graph, pre, train_paths, invert=True)
    val_inv, _ = film_features(graph, pre, val_paths, invert=True)
    ref, info = fit_reference(train, val, train_inv, percentile=percentile)
    p_up, p_inv = ref.inverted_probability(val), ref.inverted_probability(val_inv)
    info["inverted_val_detected"] = float(np.mean(p_inv >= 0.5))
    info["upright_val_called_inverted"] = float(np.mean(p_up >= 0.5))
    info["inverted_val_far"] = float(np.mean(ref.distance(val_inv) > ref.threshold))
    artifact.set_ood(ref, info)
    log.info("OOD reference fitted: %s", info)
    return info


def score_films(artifact: Any, paths: Sequence[str | Path]) -> np.ndarray:
    """Mahalanobis distances of films under the artifact's reference (for benchmarks)."""
    ref = artifact.ood_reference()
    if ref is None:
        raise FracdetError("the model has no OOD reference")
    feats, _ = film_features(artifact.float32_graph(), artifact.preprocess, paths)
    return ref.distance(feats)
