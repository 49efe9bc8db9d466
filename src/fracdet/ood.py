"""The out-of-distribution reference of a model: is this film like the films it was built on?

A model artifact may carry an :class:`OodReference` (member ``ood.npz``, fitted by
:mod:`fracdet.ood_fit` on the training split's pooled backbone features):

- a Mahalanobis distance to those features (``mean``; ``whiten``: k×C, ``‖(f − mean) · whitenᵀ‖``
  — the full square root of the Ledoit-Wolf shrunk precision matrix, k = C); a film whose
  distance exceeds ``threshold`` (chosen on validation films) is *not assessable*;
- a logistic score ``invert_w · f + invert_b`` telling an inverted (negative) film from an
  upright one, trained on training films and their inversions.

Numpy only (applied at inference on the ``features`` output of the same graph run as the logit);
every array is validated on load (:func:`reference_from_arrays`), since model files are untrusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

ARRAY_KEYS = ("mean", "whiten", "threshold", "invert_w", "invert_b")
MAX_FEATURES = 1 << 16
MAX_DIMS = 4096


@dataclass(frozen=True)
class OodReference:
    """Feature-space reference: Mahalanobis threshold plus an inverted-film detector."""

    mean: np.ndarray  # C float32
    whiten: np.ndarray  # k×C (a square root of the precision matrix; stored as float16, used as float32)
    threshold: float  # refuse when distance > threshold
    invert_w: np.ndarray  # C float32
    invert_b: float

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of N×C features to the reference; non-finite rows → inf."""
        f = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        # numpy's own loop, not BLAS: OpenBLAS worker threads left spinning after a call slowed the
        # onnxruntime pass beside them by ~25% on 2 cores (measured); this costs ~0.3 ms a film
        z = np.einsum("nc,kc->nk", f - self.mean, self.whiten)
        d = np.sqrt(np.sum(z.astype(np.float64) ** 2, axis=1))
        return np.where(np.isfinite(d), d, np.inf)

    def inverted_probability(self, features: np.ndarray) -> np.ndarray:
        """Probability that each film is inverted (negative), from N×C features."""
        f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        z = np.clip(np.einsum("nc,c->n", f, self.invert_w.astype(np.float64)) + self.invert_b, -60.0, 60.0)
        p = 1.0 / (1.0 + np.exp(-z))
        return np.where(np.isfinite(p), p, 0.0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays stored in the model file (``ood.npz``)."""
        return {"mean": self.mean.astype(np.float32), "whiten": self.whiten.astype(np.float16),  # C×C: half the bytes
                "threshold": np.float32(self.threshold).reshape(1),
                "invert_w": self.invert_w.astype(np.float32), "invert_b": np.float32(self.invert_b).reshape(1)}


def reference_from_arrays(arrays: Mapping[str, Any]) -> OodReference:
    """Validate stored arrays (keys, dtypes, shapes, finiteness) and build the reference.
    Raises ValueError with the reason."""
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing or set(arrays) - set(ARRAY_KEYS):
        raise ValueError(f"OOD reference keys {sorted(arrays)} (expected {', '.join(ARRAY_KEYS)})")
    out: dict[str, np.ndarray] = {}
    for key in ARRAY_KEYS:
        a = np.asarray(arrays[key])
        if a.dtype.kind != "f":
            raise ValueError(f"OOD {key} has dtype {a.dtype} (float expected)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"OOD {key} is not finite")
        out[key] = np.ascontiguousarray(a, dtype=np.float32)  # C order: a Fortran-ordered whiten is 10x slower
    mean, whiten, invert_w = out["mean"], out["whiten"], out["invert_w"]
    if mean.ndim != 1 or not 1 <= mean.shape[0] <= MAX_FEATURES:
        raise ValueError(f"OOD mean has shape {mean.shape}")
    c = mean.shape[0]
    if whiten.ndim != 2 or whiten.shape[1] != c or not 1 <= whiten.shape[0] <= min(c, MAX_DIMS):
        raise ValueError(f"OOD whiten has shape {whiten.shape} (k×{c} expected)")
    if invert_w.shape != (c,):
        raise ValueError(f"OOD invert_w has shape {invert_w.shape} ({c} expected)")
    for key in ("threshold", "invert_b"):
        if out[key].shape != (1,):
            raise ValueError(f"OOD {key} has shape {out[key].shape} (one number expected)")
    threshold = float(out["threshold"][0])
    if not threshold > 0:
        raise ValueError(f"OOD threshold {threshold} (positive expected)")
    return OodReference(mean=mean, whiten=whiten, threshold=threshold, invert_w=invert_w,
                        invert_b=float(out["invert_b"][0]))


__all__ = ["ARRAY_KEYS", "OodReference", "reference_from_arrays"]
