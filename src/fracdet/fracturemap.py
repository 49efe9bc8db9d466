"""A model's learned fracture map (per-cell logits at the network input) back on the image —
numpy and Pillow only.

The map covers the S×S model input, of which the image fills the letterbox window
(:func:`fracdet.transforms.letterbox_window`, the one geometry).  :func:`map_to_image` gives
the map's probabilities at the original image size; :func:`map_boxes` gives the connected
regions of cells above a threshold as scored boxes ``(x0, y0, x1, y1, score)`` in original
pixels (score: the region's peak probability); :func:`centre_boxes` decodes a box head's output
(centre logit, offset, log size per cell) into such boxes, for a model that has one.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from PIL import Image

from fracdet.calibration import apply_calibration
from fracdet.transforms import letterbox_window

MapBox = tuple[float, float, float, float, float]
"""(x0, y0, x1, y1, score) in original-image pixels."""
DEFAULT_BOX_THRESHOLD = 0.5
REGION_LEVEL = 0.5
"""A box spans the region's cells at ≥ this share of the region's peak (the map is coarse: the
cells around a hot one pass a low threshold too and would make every box too large)."""


def _window_fraction(shape: tuple[int, int], input_size: int, image_hw: tuple[int, int],
                     mode: str) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of the image's letterbox window in map-cell units."""
    top, left, nh, nw = letterbox_window(int(image_hw[0]), int(image_hw[1]), input_size, mode)
    sy, sx = shape[0] / input_size, shape[1] / input_size
    return top * sy, left * sx, (top + nh) * sy, (left + nw) * sx


def original_hw(pixels: np.ndarray, meta: dict[str, Any] | None) -> tuple[int, int]:
    """Full (H, W) of the file: ``meta["original_size"]`` (W, H) when present, else the array's."""
    size = (meta or {}).get("original_size")
    if size:
        return int(size[1]), int(size[0])
    return int(pixels.shape[0]), int(pixels.shape[1])


def map_to_image(logits: np.ndarray, input_size: int, image_hw: tuple[int, int],
                 out_hw: tuple[int, int] | None = None, mode: str = "letterbox") -> np.ndarray:
    """The h×w map of logits as probabilities over the image (float32 H×W in [0, 1]):
    the letterbox window cut out and resized (bilinear) to ``out_hw`` (default ``image_hw``)."""
    prob = apply_calibration(logits, None)  # the map's cells are not calibrated: σ(z)
    top, left, bottom, right = _window_fraction(prob.shape, input_size, image_hw, mode)
    out_h, out_w = out_hw or image_hw
    img = Image.fromarray(np.ascontiguousarray(prob, dtype=np.float32), mode="F")
    big = img.resize((int(out_w), int(out_h)), Image.Resampling.BILINEAR, box=(left, top, right, bottom))
    return np.clip(np.asarray(big, dtype=np.float32), 0.0, 1.0)


def regions(mask: np.ndarray) -> list[np.ndarray]:
    """Connected regions (8-neighbour) of a boolean h×w mask, each as a (k, 2) array of (row, col)."""
    seen = np.zeros(mask.shape, dtype=bool)
    out = []
    h, w = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        cells, todo = [], deque([(int(r0), int(c0))])
        while todo:
            r, c = todo.popleft()
            cells.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        todo.append((rr, cc))
        out.append(np.asarray(cells, dtype=np.int64))
    return out


def map_boxes(logits: np.ndarray, input_size: int, image_hw: tuple[int, int],
              out_hw: tuple[int, int] | None = None, threshold: float = DEFAULT_BOX_THRESHOLD,
              mode: str = "letterbox", level: float = REGION_LEVEL) -> list[MapBox]:
    """One box per connected region of map cells whose probability is at least ``threshold``,
    around the region's cells at ≥ ``level`` × its peak, scored by the peak; in pixels of the
    original image (``out_hw``, default ``image_hw``; the letterbox was computed on
    ``image_hw``), clipped to the image, best score first."""
    prob = apply_calibration(logits, None)  # the map's cells are not calibrated: σ(z)
    top, left, bottom, right = _window_fraction(prob.shape, input_size, image_hw, mode)
    out_h, out_w = out_hw or image_hw
    fy, fx = out_h / max(bottom - top, 1e-9), out_w / max(right - left, 1e-9)
    boxes: list[MapBox] = []
    for cells in regions(prob >= threshold):
        values = prob[cells[:, 0], cells[:, 1]]
        core = cells[values >= level * values.max()]
        r0, c0 = core.min(axis=0)
        r1, c1 = core.max(axis=0) + 1
        x0, x1 = (min(max(c0, left), right) - left) * fx, (min(max(c1, left), right) - left) * fx
        y0, y1 = (min(max(r0, top), bottom) - top) * fy, (min(max(r1, top), bottom) - top) * fy
        if x1 - x0 < 1e-6 or y1 - y0 < 1e-6:
            continue  # a region in the letterbox padding alone
        boxes.append((float(x0), float(y0), float(x1), float(y1), float(values.max())))
    return sorted(boxes, key=lambda b: -b[4])


CENTRE_TOP_K = 5
"""At most this many boxes per film from a box head (its best local maxima)."""

PROPOSAL_FLOOR = 1e-3
"""The lowest centre score of the proposals an evaluation ranks (detection benchmarks rank every
box down to a confidence of 0.001, not only those above the operating threshold)."""


def centre_boxes(box_map: np.ndarray, input_size: int, image_hw: tuple[int, int],
                 out_hw: tuple[int, int] | None = None, threshold: float = DEFAULT_BOX_THRESHOLD,
                 mode: str = "letterbox", top_k: int = CENTRE_TOP_K) -> list[MapBox]:
    """Boxes of a box head's 5×h×w output (centre logit, offset dy/dx in cells, log height/width
    in cells): the cells that are 3×3 local maxima of the centre probability and at least
    ``threshold``, best ``top_k`` first, each box centred at its cell plus offset, in pixels of the
    original image (``out_hw``, default ``image_hw``; the letterbox was computed on ``image_hw``),
    clipped to the image, scored by the centre probability."""
    out = np.asarray(box_map, dtype=np.float64)
    if out.ndim != 3 or out.shape[0] != 5:
        raise ValueError(f"a box map is 5×h×w, not {out.shape}")
    gh, gw = out.shape[1:]
    heat = apply_calibration(out[0], None)  # σ(z): the centre logits are not calibrated
    padded = np.pad(heat, 1, constant_values=-1.0)
    peak = np.max([padded[1 + dr:1 + dr + gh, 1 + dc:1 + dc + gw] for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)
    cells = np.argwhere((heat >= peak) & (heat >= threshold))
    cells = cells[np.argsort(-heat[cells[:, 0], cells[:, 1]], kind="stable")][:top_k]
    top, left, bottom, right = _window_fraction((gh, gw), input_size, image_hw, mode)
    out_h, out_w = out_hw or image_hw
    fy, fx = out_h / max(bottom - top, 1e-9), out_w / max(right - left, 1e-9)
    boxes: list[MapBox] = []
    for r, c in cells:
        dy, dx, log_h, log_w = np.clip(out[1:, r, c], -10.0, 10.0)
        cy, cx = r + 0.5 + dy, c + 0.5 + dx
        h, w = math.exp(log_h), math.exp(log_w)
        x0, x1 = (min(max(cx - w / 2, left), right) - left) * fx, (min(max(cx + w / 2, left), right) - left) * fx
        y0, y1 = (min(max(cy - h / 2, top), bottom) - top) * fy, (min(max(cy + h / 2, top), bottom) - top) * fy
        if x1 - x0 < 1e-6 or y1 - y0 < 1e-6:
            continue  # a box in the letterbox padding alone
        boxes.append((float(x0), float(y0), float(x1), float(y1), float(heat[r, c])))
    return boxes


def check_localisation(d: Any) -> dict[str, Any]:
    """A model file's ``localisation`` settings, validated (``box_threshold`` for the map's boxes
    and ``centre_threshold`` for a box head's, each in (0, 1)); raises ValueError naming the bad field."""
    if not isinstance(d, dict):
        raise ValueError("localisation is not a mapping")
    out = dict(d)
    for key in ("box_threshold", "centre_threshold"):
        t = d.get(key, DEFAULT_BOX_THRESHOLD)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 < t < 1.0:
            raise ValueError(f"localisation {key} {t!r} (expected a number in (0, 1))")
        out[key] = float(t)
    return out


__all__ = ["CENTRE_TOP_K", "DEFAULT_BOX_THRESHOLD", "MapBox", "REGION_LEVEL", "centre_boxes", "check_localisation",
           "map_boxes", "map_to_image", "original_hw", "regions"]
