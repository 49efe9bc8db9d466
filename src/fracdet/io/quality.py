"""Cheap checks that an image can be a radiograph at all, before any network runs (numpy only).

Each check gives a one-line reason when it fails (the prediction's verdict is then
``not assessable``, see :mod:`fracdet.inference.predictor`):

- a DICOM film of a body part that is not a limb (``meta["body_part"]``: chest, head, spine...);
- too small to judge (the original image's shorter side);
- blank or near-uniform (the spread between the 1st and 99th percentile of its pixels);
- a colour image (``meta["colour_fraction"]``: the share of clearly coloured pixels, measured
  by the readers before they reduce colour to luminance);
- noise (neighbouring pixels barely correlated: a radiograph, like any photograph of a scene,
  is smooth at the scale of a few pixels).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

MIN_ASSESS_SIDE = 64
"""Shorter sides below this many pixels (in the original file) are too small to judge."""
MIN_SPREAD = 0.04
"""Below this spread of pixel values (99th − 1st percentile) an image is blank."""
MAX_COLOUR_FRACTION = 0.05
"""Above this share of coloured pixels an image is a colour picture, not a radiograph."""
COLOUR_CHROMA = 0.12
"""A pixel is coloured when max(R, G, B) − min(R, G, B) exceeds this (in [0, 1])."""
MIN_NEIGHBOUR_CORRELATION = 0.5
"""Below this correlation of horizontally and vertically neighbouring pixels an image is noise."""
_SAMPLE_SIDE = 128  # the checks look at ~128×128 pixels: ~0.3 ms a film (measured), not a full pass
NON_LIMB_BODY_PARTS = frozenset({
    "CHEST", "THORAX", "LUNG", "HEART", "BREAST", "ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS",
    "HEAD", "SKULL", "BRAIN", "FACE", "JAW", "TMJ", "SINUS", "NECK", "HEADNECK", "CSPINE", "TSPINE", "LSPINE",
    "SSPINE", "SPINE", "WHOLEBODY", "WHOLE BODY", "KIDNEY", "LIVER", "PANCREAS", "BLADDER", "COLON",
    "ESOPHAGUS", "STOMACH",
})
"""DICOM BodyPartExamined values this model (built on limb films: hand, arm, shoulder, hip, leg,
foot) cannot judge; an empty or unknown value is left to the other checks."""


def colour_fraction(rgb: np.ndarray) -> float:
    """The share of pixels whose chroma (max − min of R, G, B in [0, 1]) exceeds
    :data:`COLOUR_CHROMA`; ``rgb`` is H×W×3 (any float or integer scale given by ``rgb.max``
    of its dtype: floats in [0, 1], uint8 in [0, 255])."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3 or a.size == 0:
        return 0.0
    step = max(1, int(max(a.shape[:2]) // _SAMPLE_SIDE))
    a = a[::step, ::step, :3]
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    chroma = (a.max(axis=2).astype(np.float32) - a.min(axis=2).astype(np.float32)) / scale
    return float(np.mean(chroma > COLOUR_CHROMA))


def _sample(pixels: np.ndarray) -> np.ndarray:
    step = max(1, int(max(pixels.shape) // _SAMPLE_SIDE))
    return np.asarray(pixels[::step, ::step], dtype=np.float32)


def neighbour_correlation(pixels: np.ndarray) -> float:
    """The mean correlation of horizontally and vertically adjacent pixels (1: smooth, 0: noise)
    over the whole image, sampled to at most 256 pixels a side (a radiograph stays smooth at that
    scale; noise does not)."""
    p = np.asarray(pixels)
    step = max(1, int(max(p.shape) // (2 * _SAMPLE_SIDE)))
    a = np.asarray(p[::step, ::step], dtype=np.float64)
    out = []
    for x, y in ((a[:, :-1], a[:, 1:]), (a[:-1, :], a[1:, :])):
        x, y = x.ravel() - x.mean(), y.ravel() - y.mean()
        den = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
        out.append(float(np.sum(x * y)) / den if den > 0 else 1.0)
    return float(np.mean(out))


def image_problem(pixels: np.ndarray, meta: Mapping[str, Any] | None = None) -> str | None:
    """Why an image (H×W in [0, 1], with its reader's ``meta``) cannot be a radiograph this
    model can judge, in a few words; None when it passes every check."""
    meta = meta or {}
    part = str(meta.get("body_part") or "").strip().upper()
    if part in NON_LIMB_BODY_PARTS:
        return f"body part {part} is not a limb (DICOM BodyPartExamined)"
    a = np.asarray(pixels)
    if a.ndim != 2 or a.size == 0:
        return "not a single-channel image"
    w, h = meta.get("original_size") or a.shape[::-1]
    if min(int(w), int(h)) < MIN_ASSESS_SIDE:
        return f"image too small to judge ({int(w)}x{int(h)} px; at least {MIN_ASSESS_SIDE} px a side)"
    small = _sample(a)
    lo, hi = np.percentile(small, [1, 99])
    if hi - lo < MIN_SPREAD:
        return f"blank or near-uniform image (pixel spread {hi - lo:.3f})"
    colour = meta.get("colour_fraction")
    if colour is not None and float(colour) > MAX_COLOUR_FRACTION:
        return f"colour image ({100 * float(colour):.0f}% coloured pixels), not a radiograph"
    corr = neighbour_correlation(a)
    if corr < MIN_NEIGHBOUR_CORRELATION:
        return f"noise, not a radiograph (neighbouring pixels correlate {corr:.2f})"
    return None


__all__ = ["COLOUR_CHROMA", "MAX_COLOUR_FRACTION", "MIN_ASSESS_SIDE", "MIN_NEIGHBOUR_CORRELATION", "MIN_SPREAD",
           "NON_LIMB_BODY_PARTS",
           "colour_fraction", "image_problem", "neighbour_correlation"]
